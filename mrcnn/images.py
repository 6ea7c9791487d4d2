"""Image arrays in and out of the model: channel conversion and molding."""

import numpy as np

__all__ = [
    "LUMA_WEIGHTS", "to_channels", "to_rgb_uint8", "mold_image", "unmold_image",
]


# ITU-R BT.601 luma weights: gray = 0.299 R + 0.587 G + 0.114 B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_channels(image, channels, what="image"):
    """Bring an image array to [H, W, channels], the input of a model with IMAGE_CHANNEL_COUNT = channels.

    3 channels: `to_rgb_uint8`. 1 channel: HxW and HxWx1 arrays are kept as
    they are (integer or float; set MEAN_PIXEL for its range; bool becomes 0/255), and RGB or
    RGBA arrays (what `Dataset.load_image` returns) become uint8 gray by
    BT.601 luma, so a gray file read as RGB comes back with its own values.
    Any other count: the array must have that many channels already
    (override `load_image` to return them). Anything else is a ValueError.
    """
    if channels == 3:
        return to_rgb_uint8(image, what)
    image = np.asarray(image)
    if channels == 1 and image.ndim == 3 and image.shape[-1] in (3, 4):
        gray = to_rgb_uint8(image, what).astype(np.float64) @ LUMA_WEIGHTS
        image = np.clip(np.around(gray), 0, 255).astype(np.uint8)
    if channels == 1 and image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or image.shape[-1] != channels or min(image.shape[:2]) < 1:
        accepted = ("HxW, HxWx1, or RGB/RGBA (converted to gray)" if channels == 1
                    else f"HxWx{channels}; Dataset.load_image reads files as RGB, so override it "
                         f"to return {channels} channels")
        raise ValueError(f"{what}: shape {image.shape} does not fit IMAGE_CHANNEL_COUNT = {channels}. "
                         f"Accepted: {accepted}; or change IMAGE_CHANNEL_COUNT.")
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{what}: dtype {image.dtype} is not an image type; use integers or floats.")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise ValueError(f"{what}: contains NaN or infinite values. Replace them (e.g. "
                         "np.nan_to_num) where the image is read.")
    return image


def to_rgb_uint8(image, what="image"):
    """Convert an image array to [H, W, 3] uint8 (see `Dataset.load_image` for the rules)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (2, 4):
        image = image[..., :-1]  # drop alpha
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{what}: shape {image.shape} is not an image. Accepted: HxW, HxWx1 "
                         "(grayscale), HxWx3 (RGB), HxWx4 (RGBA); override load_image() for "
                         "other channel counts.")
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        scaled = image.astype(np.float64) * (255.0 / np.iinfo(image.dtype).max)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError(f"{what}: contains NaN or infinite values. Replace them (e.g. "
                         "np.nan_to_num) where the image is read.")
        scaled = image * 255.0 if image.size and image.max() <= 1.0 else image.astype(np.float64)
    else:
        raise ValueError(f"{what}: dtype {image.dtype} is not an image type; use uint8, uint16 or float.")
    return np.clip(np.around(scaled), 0, 255).astype(np.uint8)


def mold_image(images, config):
    """Subtract config.MEAN_PIXEL from RGB image(s); the network's input format."""
    return np.asarray(images).astype(np.float32) - config.MEAN_PIXEL


def unmold_image(normalized_images, config):
    """Inverse of `mold_image`: uint8 image(s).

    Rounds and clips; matterport truncated, which turned many values of a
    float32 molded image into value - 1 and wrapped values outside 0..255.
    """
    return np.clip(np.rint(normalized_images + config.MEAN_PIXEL), 0, 255).astype(np.uint8)

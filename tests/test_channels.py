"""Grayscale and N-channel images end to end: conversion, data pipeline, RGB weights adapted, train, detect."""

import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.ground_truth import load_image_gt
from mrcnn.images import mold_image
from mrcnn.images import to_channels
from mrcnn.weights import adapt_input_kernel, load_weights_by_name, save_weights_by_name
from samples.shapes import shapes
from tests.conftest import TinyConfig, TinyShapes


class FourChannelShapes(TinyShapes):
    """TinyShapes with a fourth "depth" channel: 200 on the shapes, 20 elsewhere."""

    def load_image(self, image_id):
        rgb = super().load_image(image_id)
        masks, _ = self.load_mask(image_id)
        depth = np.where(masks.any(axis=-1), 200, 20).astype(np.uint8)
        return np.concatenate([rgb, depth[..., None]], axis=-1)


def channel_config(base, channels, **attrs):
    mean = {1: [114.8], 3: [114.8] * 3, 4: [123.7, 116.8, 103.9, 60.0]}[channels]
    return type(f"{base.__name__}{channels}", (base,),
                {"IMAGE_CHANNEL_COUNT": channels, "MEAN_PIXEL": np.array(mean), **attrs})()


def conv(x, kernel):
    import tensorflow as tf

    return tf.nn.conv2d(x.astype(np.float32), kernel.astype(np.float32), 1, "VALID").numpy()


def test_adapted_kernels_respond_as_the_rgb_kernel():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(7, 7, 3, 8))
    gray = rng.normal(size=(1, 20, 20, 1))           # a molded (mean-subtracted) gray image
    np.testing.assert_allclose(conv(gray, adapt_input_kernel(kernel, 1)),
                               conv(np.repeat(gray, 3, axis=-1), kernel), rtol=1e-4, atol=1e-4)
    rgb, extra = rng.normal(size=(1, 20, 20, 3)), rng.normal(size=(1, 20, 20, 2))
    five = adapt_input_kernel(kernel, 5)
    assert five.shape == (7, 7, 5, 8) and not five[:, :, 3:].any()
    np.testing.assert_allclose(conv(np.concatenate([rgb, extra], -1), five), conv(rgb, kernel),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no rule for 2 channels"):
        adapt_input_kernel(kernel, 2)
    with pytest.raises(ValueError, match=r"RGB kernel \[kh, kw, 3, n\]"):
        adapt_input_kernel(kernel[:, :, :1], 1)


def test_to_channels():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (10, 200, 30)
    gray = to_channels(rgb, 1)
    assert gray.shape == (4, 5, 1) and gray.dtype == np.uint8
    assert gray[0, 0, 0] == 76 and gray[0, 1, 0] == round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)
    replicated = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=-1)
    np.testing.assert_array_equal(to_channels(replicated, 1)[..., 0], replicated[..., 0])
    sixteen_bit = np.full((3, 3), 4000, np.uint16)
    assert to_channels(sixteen_bit, 1).dtype == np.uint16 and to_channels(sixteen_bit, 1).shape == (3, 3, 1)
    assert to_channels(np.ones((3, 3, 4), np.float32), 4).shape == (3, 3, 4)
    assert to_channels(np.ones((3, 3), bool), 1).max() == 255
    assert to_channels(rgb, 3) is rgb
    with pytest.raises(ValueError, match="override it to return 4 channels"):
        to_channels(rgb, 4)
    with pytest.raises(ValueError, match="does not fit IMAGE_CHANNEL_COUNT = 1"):
        to_channels(np.zeros((3, 3, 2)), 1)
    with pytest.raises(ValueError, match="NaN"):
        to_channels(np.full((3, 3, 4), np.nan), 4)
    with pytest.raises(ValueError, match="dtype"):
        to_channels(np.zeros((3, 3, 4), complex), 4)


def test_the_data_pipeline_yields_the_configs_channels(shapes_val):
    gray_config = channel_config(TinyConfig, 1)
    image, meta, class_ids, _, _ = load_image_gt(shapes_val, gray_config, 0)
    rgb, _, rgb_class_ids, _, _ = load_image_gt(shapes_val, TinyConfig(), 0)
    assert image.shape == (128, 128, 1) and rgb.shape == (128, 128, 3)
    np.testing.assert_array_equal(image, to_channels(rgb, 1))
    np.testing.assert_array_equal(class_ids, rgb_class_ids)
    assert meta[3] == 1 and meta[6] == 1                    # original and molded channel counts
    np.testing.assert_allclose(mold_image(image, gray_config), image - 114.8, rtol=1e-6)

    four = FourChannelShapes()
    four.load_shapes(2, seed=2)
    four.prepare()
    image4, *_ = load_image_gt(four, channel_config(TinyConfig, 4), 0)
    assert image4.shape == (128, 128, 4) and set(np.unique(image4[..., 3])) <= {20, 200}
    with pytest.raises(ValueError, match="IMAGE_CHANNEL_COUNT = 4"):
        load_image_gt(shapes_val, channel_config(TinyConfig, 4), 0)   # RGB images, 4-channel config


class Lite(shapes.FastShapesConfig):
    """The shapes sample's small backbone (first convolution lite_c1a_conv) at 64 px."""
    NAME = "lite"
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
    IMAGES_PER_GPU = 1
    STEPS_PER_EPOCH = 1
    VALIDATION_STEPS = 0
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 32
    TRAIN_ROIS_PER_IMAGE = 16
    DETECTION_MIN_CONFIDENCE = 0.0


def test_rgb_weights_load_into_gray_and_four_channel_models(tmp_path):
    """The first convolution of a 3-channel file is adapted; the adapted model on a gray image
    computes what the RGB model computes on that image repeated as RGB (and on RGB + extra
    channels, what it computes on the RGB part)."""
    def p2(model, image):
        return model.run_graph([image], [("p2", model.keras_model.get_layer("fpn_p2").output)])["p2"]

    rgb_model = modellib.MaskRCNN("inference", channel_config(Lite, 3), str(tmp_path))
    path = str(tmp_path / "rgb.h5")
    save_weights_by_name(rgb_model.keras_model, path)
    kernel = rgb_model.keras_model.get_layer("lite_c1a_conv").get_weights()[0]
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (64, 64, 1)).astype(np.uint8)
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)

    gray_model = modellib.MaskRCNN("inference", channel_config(Lite, 1), str(tmp_path))
    report = gray_model.load_weights(path, by_name=True)
    assert report.adapted == ["lite_c1a_conv"] and report.missing_from_file == []
    np.testing.assert_allclose(gray_model.keras_model.get_layer("lite_c1a_conv").get_weights()[0],
                               kernel.sum(axis=2, keepdims=True), rtol=1e-6)
    want = p2(rgb_model, np.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(p2(gray_model, gray), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())

    four_model = modellib.MaskRCNN("inference", channel_config(
        Lite, 4, MEAN_PIXEL=np.array([114.8] * 3 + [60.0])), str(tmp_path))
    assert four_model.load_weights(path, by_name=True).adapted == ["lite_c1a_conv"]
    extra = rng.integers(0, 256, (64, 64, 1)).astype(np.uint8)
    want = p2(rgb_model, rgb)
    np.testing.assert_allclose(p2(four_model, np.concatenate([rgb, extra], -1)), want,
                               rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_only_rgb_input_kernels_are_adapted(tmp_path):
    """2 image channels have no rule, and kernels of other layers are never reshaped: both stay
    the usual mismatch error that names the exclude=[...] fix."""
    import keras

    def net(channels, width=8):
        image = keras.Input((None, None, channels), name="input_image")
        x = keras.layers.Conv2D(width, 3, name="conv1")(image)
        return keras.Model(image, keras.layers.Conv2D(4, 1, name="head")(x))

    path = str(tmp_path / "rgb.h5")
    save_weights_by_name(net(3), path)
    with pytest.raises(ValueError, match=r"(?s)conv1: .*\(3, 3, 3, 8\) vs model \(3, 3, 2, 8\).*exclude=\['conv1'\]"):
        load_weights_by_name(net(2), path)
    with pytest.raises(ValueError, match=r"head: .*\(1, 1, 8, 4\) vs model \(1, 1, 16, 4\)"):
        load_weights_by_name(net(1, width=16), path)
    assert load_weights_by_name(net(1), path, verbose=1).adapted == ["conv1"]


@pytest.mark.large
@pytest.mark.parametrize("channels", [1, 4])
def test_train_and_detect_with_other_channel_counts(tmp_path, channels):
    dataset = (FourChannelShapes if channels == 4 else TinyShapes)()
    dataset.load_shapes(4, seed=3, size=64)
    dataset.prepare()
    model = modellib.MaskRCNN("training", channel_config(Lite, channels, IMAGES_PER_GPU=2),
                              str(tmp_path))
    history = model.train(dataset, None, 0.001, epochs=1, layers="all", workers=1)
    assert np.isfinite(history.history["loss"][0])
    assert model.keras_model.get_layer("lite_c1a_conv").get_weights()[0].shape == (3, 3, channels, 32)

    detector = modellib.MaskRCNN("inference", channel_config(Lite, channels), str(tmp_path))
    assert detector.load_weights(detector.find_last(), by_name=True).missing_from_file == []
    image = dataset.load_image(0)
    if channels == 1:
        image = to_channels(image, 1)[..., 0]             # a plain HxW gray image
    r = detector.detect([image])[0]
    n = len(r["class_ids"])
    assert r["rois"].shape == (n, 4) and r["masks"].shape == (64, 64, n) and r["scores"].shape == (n,)
    assert ((r["rois"] >= 0) & (r["rois"] <= 64)).all() and set(r["class_ids"]) <= {1, 2, 3}
    if channels == 4:
        with pytest.raises(ValueError, match="IMAGE_CHANNEL_COUNT = 4"):
            detector.detect([image[..., :3]])

"""What a user migrating from matterport sees: imgaug on numpy 2 (the `imaug` fork)."""

import numpy as np
import pytest

from mrcnn import data


@pytest.fixture(scope="module")
def iaa():
    """imgaug's augmenters, as matterport's samples import them (`pip install ".[imgaug]"`)."""
    try:
        from imgaug import augmenters
    except ImportError:
        pytest.skip("imgaug is not installed: pip install imaug")
    except AttributeError as error:  # imgaug 0.4.0 reads np.sctypes, removed in numpy 2
        if "sctypes" not in str(error):
            raise
        pytest.skip("the installed imgaug (0.4.0) does not import on numpy 2: "
                    "pip uninstall -y imgaug && pip install imaug")
    return augmenters


def nucleus_augmentation(iaa):
    """matterport's samples/nucleus/nucleus.py augmentation, verbatim in meaning."""
    return iaa.SomeOf((0, 2), [
        iaa.Fliplr(0.5),
        iaa.Flipud(0.5),
        iaa.OneOf([iaa.Affine(rotate=90), iaa.Affine(rotate=180), iaa.Affine(rotate=270)]),
        iaa.Multiply((0.8, 1.5)),
        iaa.GaussianBlur(sigma=(0.0, 5.0)),
    ])


def load(dataset, config, augmentation=None):
    image, _, class_ids, boxes, masks = data.load_image_gt(
        dataset, config, 0, augmentation=augmentation, use_mini_mask=False)
    return image, class_ids, boxes, masks


def test_real_imgaug_fliplr_and_multiply(iaa, shapes_train, tiny_config):
    plain, plain_ids, _, plain_masks = load(shapes_train, tiny_config)
    image, class_ids, boxes, masks = load(shapes_train, tiny_config,
                                          iaa.Sequential([iaa.Fliplr(1.0), iaa.Multiply(0.5)]))
    assert np.abs(image.astype(int) - plain[:, ::-1] // 2).max() <= 1
    assert np.array_equal(masks, plain_masks[:, ::-1])
    assert np.array_equal(class_ids, plain_ids)
    for box, mask in zip(boxes, np.moveaxis(masks, -1, 0)):
        rows, cols = np.where(mask)
        assert box.tolist() == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]


def test_nucleus_augmenters_move_masks_with_geometry_only(iaa, shapes_train, tiny_config):
    plain, plain_ids, _, plain_masks = load(shapes_train, tiny_config)
    # Geometric augmenters move image and masks alike (imgaug rotates clockwise).
    geometric = [(iaa.Fliplr(1.0), lambda a: a[:, ::-1]), (iaa.Flipud(1.0), lambda a: a[::-1]),
                 *[(iaa.Affine(rotate=90 * k), lambda a, k=k: np.rot90(a, -k)) for k in (1, 2, 3)]]
    for augmenter, move in geometric:
        image, class_ids, _, masks = load(shapes_train, tiny_config, augmenter)
        assert np.array_equal(image, move(plain)), augmenter
        assert np.array_equal(masks, move(plain_masks)), augmenter
        assert np.array_equal(class_ids, plain_ids)
    # Colour and blur change the image only: a blurred mask would grow a fringe.
    for augmenter in (iaa.Multiply(1.5), iaa.GaussianBlur(sigma=5.0)):
        image, _, _, masks = load(shapes_train, tiny_config, augmenter)
        assert np.abs(image.astype(int) - plain).max() > 20, augmenter
        assert np.array_equal(masks, plain_masks), augmenter


def test_nucleus_augmentation_keeps_masks_on_their_objects(iaa, shapes_train, tiny_config):
    import imgaug
    imgaug.random.seed(0)
    aug = nucleus_augmentation(iaa)
    plain, _, _, plain_masks = load(shapes_train, tiny_config)
    dihedral = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for k in range(4) for f in (0, 1)]
    seen = set()
    for _ in range(24):
        image, _, _, masks = load(shapes_train, tiny_config, aug)
        # Only flips and quarter turns touch the masks: they are one of the 8 symmetries ...
        moves = [i for i, move in enumerate(dihedral) if np.array_equal(masks, move(plain_masks))]
        assert moves, "masks changed by a non-geometric augmenter"
        seen.add(moves[0])
        # ... and the image moved the same way: the bright shapes lie under their masks.
        inside = masks.any(-1)
        assert image[inside].mean() > image[~inside].mean() + 40
    assert len(seen) >= 3  # SomeOf((0, 2), ...) picked different geometric moves

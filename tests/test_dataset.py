"""Dataset: class/source maps as matterport builds them, and load_image's conversions and errors."""

import numpy as np
import pytest
import skimage.io

from mrcnn import utils
from mrcnn.images import to_rgb_uint8


def make_dataset():
    ds = utils.Dataset()
    ds.add_class("shapes", 1, "square")
    ds.add_class("shapes", 2, "circle")
    ds.add_class("shapes", 1, "square again")  # repeated (source, id): ignored
    ds.add_class("coco", 12, "person,people")
    for i in range(3):
        ds.add_image("shapes", image_id=100 + i, path=None, color=(i, i, i))
    ds.add_image("coco", image_id=7, path="/data/7.jpg")
    ds.prepare()
    return ds


def test_prepare_builds_matterports_maps():
    ds = make_dataset()
    assert ds.num_classes == 4 and list(ds.class_ids) == [0, 1, 2, 3]
    assert ds.class_names == ["BG", "square", "circle", "person"]
    assert ds.num_images == 4 and list(ds.image_ids) == [0, 1, 2, 3]
    assert ds.class_from_source_map == {".0": 0, "shapes.1": 1, "shapes.2": 2, "coco.12": 3}
    assert ds.image_from_source_map == {"shapes.100": 0, "shapes.101": 1, "shapes.102": 2, "coco.7": 3}
    assert set(ds.sources) == {"", "shapes", "coco"}
    assert ds.source_class_ids == {"": [0], "shapes": [0, 1, 2], "coco": [0, 3]}
    assert ds.map_source_class_id("coco.12") == 3
    assert ds.get_source_class_id(3, "coco") == 12
    assert ds.image_info[1]["color"] == (1, 1, 1)
    assert ds.source_image_link(3) == "/data/7.jpg"
    assert ds.image_reference(0) == ""


def test_bad_class_registrations_are_explained():
    ds = make_dataset()
    with pytest.raises(ValueError, match="dot"):
        ds.add_class("my.source", 1, "x")
    with pytest.raises(ValueError, match="source 'coco', not 'shapes'"):
        ds.get_source_class_id(3, "shapes")


def test_base_load_mask_is_empty():
    mask, class_ids = make_dataset().load_mask(0)
    assert mask.shape == (0, 0, 0) and class_ids.shape == (0,) and class_ids.dtype == np.int32


def _dataset_with(path):
    ds = utils.Dataset()
    ds.add_image("files", image_id="img", path=str(path))
    ds.prepare()
    return ds


@pytest.mark.parametrize("name, array, expected", [
    ("rgb.png", np.full((5, 6, 3), 40, np.uint8), 40),
    ("gray.png", np.full((5, 6), 70, np.uint8), 70),
    ("rgba.png", np.dstack([np.full((5, 6, 3), 90, np.uint8), np.full((5, 6), 10, np.uint8)]), 90),
    ("gray16.png", np.full((5, 6), 65535 // 2, np.uint16), 127),
    ("gray16.tif", np.full((5, 6), 65535, np.uint16), 255),
])
def test_load_image_gives_hxwx3_uint8(tmp_path, name, array, expected):
    path = tmp_path / name
    skimage.io.imsave(str(path), array, check_contrast=False)
    image = _dataset_with(path).load_image(0)
    assert image.shape == (5, 6, 3) and image.dtype == np.uint8
    assert np.all(image == expected)


def test_to_rgb_uint8_conversions():
    one_channel = to_rgb_uint8(np.full((4, 4, 1), 9, np.uint8))
    assert one_channel.shape == (4, 4, 3) and np.all(one_channel == 9)
    assert to_rgb_uint8(np.full((2, 2), 0.5, np.float32)).max() == 128
    assert to_rgb_uint8(np.full((2, 2), 300.0)).max() == 255
    assert to_rgb_uint8(np.ones((2, 2), bool)).max() == 255
    assert to_rgb_uint8(np.zeros((2, 2, 2), np.uint16)).shape == (2, 2, 3)  # gray + alpha
    for bad, msg in [(np.zeros((2, 2, 5), np.uint8), "not an image"),
                     (np.zeros((0, 3, 3), np.uint8), "not an image"),
                     (np.zeros(7, np.uint8), "not an image"),
                     (np.full((2, 2), np.nan), "NaN"),
                     (np.zeros((2, 2), complex), "dtype")]:
        with pytest.raises(ValueError, match=msg):
            to_rgb_uint8(bad)


def test_load_image_missing_or_unreadable_file_names_id_and_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="Image 0.*nope.png"):
        _dataset_with(missing).load_image(0)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="Image 0.*garbage.png"):
        _dataset_with(garbage).load_image(0)

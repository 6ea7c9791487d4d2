"""Config: matterport's attributes and defaults, computed values, and clear errors."""

import numpy as np
import pytest

from mrcnn.config import Config

MATTERPORT_DEFAULTS = {
    "NAME": None, "GPU_COUNT": 1, "IMAGES_PER_GPU": 2, "STEPS_PER_EPOCH": 1000,
    "VALIDATION_STEPS": 50, "BACKBONE": "resnet101", "COMPUTE_BACKBONE_SHAPE": None,
    "BACKBONE_STRIDES": [4, 8, 16, 32, 64], "FPN_CLASSIF_FC_LAYERS_SIZE": 1024,
    "TOP_DOWN_PYRAMID_SIZE": 256, "NUM_CLASSES": 1, "RPN_ANCHOR_SCALES": (32, 64, 128, 256, 512),
    "RPN_ANCHOR_RATIOS": [0.5, 1, 2], "RPN_ANCHOR_STRIDE": 1, "RPN_NMS_THRESHOLD": 0.7,
    "RPN_TRAIN_ANCHORS_PER_IMAGE": 256, "PRE_NMS_LIMIT": 6000, "POST_NMS_ROIS_TRAINING": 2000,
    "POST_NMS_ROIS_INFERENCE": 1000, "USE_MINI_MASK": True, "MINI_MASK_SHAPE": (56, 56),
    "IMAGE_RESIZE_MODE": "square", "IMAGE_MIN_DIM": 800, "IMAGE_MAX_DIM": 1024,
    "IMAGE_MIN_SCALE": 0, "IMAGE_CHANNEL_COUNT": 3, "TRAIN_ROIS_PER_IMAGE": 200,
    "ROI_POSITIVE_RATIO": 0.33, "POOL_SIZE": 7, "MASK_POOL_SIZE": 14, "MASK_SHAPE": [28, 28],
    "MAX_GT_INSTANCES": 100, "DETECTION_MAX_INSTANCES": 100, "DETECTION_MIN_CONFIDENCE": 0.7,
    "DETECTION_NMS_THRESHOLD": 0.3, "LEARNING_RATE": 0.001, "LEARNING_MOMENTUM": 0.9,
    "WEIGHT_DECAY": 0.0001, "USE_RPN_ROIS": True, "TRAIN_BN": False, "GRADIENT_CLIP_NORM": 5.0,
    "LOSS_WEIGHTS": {"rpn_class_loss": 1., "rpn_bbox_loss": 1., "mrcnn_class_loss": 1.,
                     "mrcnn_bbox_loss": 1., "mrcnn_mask_loss": 1.},
}


def test_defaults_are_matterports():
    c = Config()
    for name, value in MATTERPORT_DEFAULTS.items():
        assert getattr(c, name) == value, name
    np.testing.assert_allclose(c.MEAN_PIXEL, [123.7, 116.8, 103.9])
    np.testing.assert_allclose(c.RPN_BBOX_STD_DEV, [0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(c.BBOX_STD_DEV, [0.1, 0.1, 0.2, 0.2])


def test_computed_values_follow_subclass_attributes():
    class Shapes(Config):
        NAME = "shapes"
        NUM_CLASSES = 1 + 3
        GPU_COUNT = 2
        IMAGES_PER_GPU = 8
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128

    c = Shapes()
    assert c.BATCH_SIZE == 16
    assert list(c.IMAGE_SHAPE) == [128, 128, 3]
    assert c.IMAGE_META_SIZE == 12 + 4

    class Crop(Config):
        IMAGE_RESIZE_MODE = "crop"
        IMAGE_MIN_DIM = 512

    assert list(Crop().IMAGE_SHAPE) == [512, 512, 3]


def test_to_dict_and_display(capsys):
    class Mine(Config):
        NAME = "mine"

    c = Mine()
    d = c.to_dict()
    assert d["NAME"] == "mine" and d["BATCH_SIZE"] == 2 and "display" not in d
    assert set(MATTERPORT_DEFAULTS) - {"COMPUTE_BACKBONE_SHAPE"} <= set(d)
    c.display()
    out = capsys.readouterr().out
    assert "Configurations:" in out
    assert any(line.split()[:2] == ["NAME", "mine"] for line in out.splitlines())


def make(**attrs):
    return type("Bad", (Config,), attrs)


@pytest.mark.parametrize("attrs, attr_named", [
    ({"IMAGE_MIN_DIM": 100, "IMAGE_MAX_DIM": 100}, "IMAGE_MAX_DIM"),
    ({"IMAGE_RESIZE_MODE": "pad64", "IMAGE_MIN_DIM": 100}, "IMAGE_MIN_DIM"),
    ({"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 300}, "IMAGE_MIN_DIM"),
    ({"IMAGE_RESIZE_MODE": "stretch"}, "IMAGE_RESIZE_MODE"),
    ({"BACKBONE": "resnet34"}, "BACKBONE"),
    ({"BACKBONE": lambda x: x}, "COMPUTE_BACKBONE_SHAPE"),
    ({"NUM_CLASSES": 0}, "NUM_CLASSES"),
    ({"NUM_CLASSES": 2.5}, "NUM_CLASSES"),
    ({"RPN_ANCHOR_SCALES": (32, 64, 128)}, "RPN_ANCHOR_SCALES"),
    ({"MINI_MASK_SHAPE": (256, 256), "IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 128}, "MINI_MASK_SHAPE"),
    ({"MASK_SHAPE": [56, 56]}, "MASK_SHAPE"),
    ({"IMAGES_PER_GPU": 0}, "IMAGES_PER_GPU"),
    ({"GPU_COUNT": -1}, "GPU_COUNT"),
    ({"STEPS_PER_EPOCH": -5}, "STEPS_PER_EPOCH"),
    ({"VALIDATION_STEPS": -1}, "VALIDATION_STEPS"),
    ({"TRAIN_ROIS_PER_IMAGE": -1}, "TRAIN_ROIS_PER_IMAGE"),
    ({"MAX_GT_INSTANCES": 0}, "MAX_GT_INSTANCES"),
    ({"DETECTION_MAX_INSTANCES": 0}, "DETECTION_MAX_INSTANCES"),
    ({"ROI_POSITIVE_RATIO": 1.5}, "ROI_POSITIVE_RATIO"),
    ({"DETECTION_MIN_CONFIDENCE": -0.1}, "DETECTION_MIN_CONFIDENCE"),
    ({"LEARNING_RATE": 0}, "LEARNING_RATE"),
    ({"MEAN_PIXEL": np.array([1.0, 2.0])}, "MEAN_PIXEL"),
    ({"BBOX_STD_DEV": np.array([0.1, 0.1, 0.2])}, "BBOX_STD_DEV"),
    ({"LOSS_WEIGHTS": {"rpn_class_loss": 1.}}, "LOSS_WEIGHTS"),
    ({"RPN_ANCHOR_RATIOS": [0, 1]}, "RPN_ANCHOR_RATIOS"),
    ({"OPTIMIZER": "rmsprop"}, "OPTIMIZER"),
])
def test_bad_config_names_attribute_and_fix(attrs, attr_named):
    with pytest.raises(ValueError) as info:
        make(**attrs)()
    message = str(info.value)
    assert attr_named in message
    assert any(word in message for word in ("Use", "Set", "Give", "Make", "Raise"))


def test_suggested_image_size_is_a_multiple_of_64():
    with pytest.raises(ValueError, match="Use 128"):
        make(IMAGE_MIN_DIM=120, IMAGE_MAX_DIM=120)()


def test_callable_backbone_with_shape_function_is_accepted():
    c = make(BACKBONE=lambda x: x, COMPUTE_BACKBONE_SHAPE=lambda shape: [[32, 32]])()
    assert callable(c.BACKBONE)


def test_instance_changes_are_checked_by_validate():
    c = Config()
    c.NUM_CLASSES = 0
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        c.validate()


def test_computed_settings_left_stale_by_instance_changes_are_named():
    c = Config()
    c.IMAGES_PER_GPU = 1
    with pytest.raises(ValueError, match=r"Config.BATCH_SIZE is 2 but GPU_COUNT \* IMAGES_PER_GPU "
                                         r"give 1.*Set BATCH_SIZE = 1 too"):
        c.validate()
    c.BATCH_SIZE = 1
    c.validate()
    c.NUM_CLASSES = 5
    with pytest.raises(ValueError, match=r"IMAGE_META_SIZE is 13 but NUM_CLASSES and the layout "
                                         r"of mrcnn.image_meta give 17"):
        c.validate()
    c.IMAGE_META_SIZE = 17
    c.IMAGE_MIN_DIM = c.IMAGE_MAX_DIM = 512
    with pytest.raises(ValueError, match="IMAGE_SHAPE is array"):
        c.validate()
    c.__dict__.update(c.computed_settings())
    c.validate()
    assert c.IMAGE_SHAPE.tolist() == [512, 512, 3] and c.BATCH_SIZE == 1

"""matterport settings that must mean what they meant there, RoIAlign at the image
border and its aligned option, and seeded runs."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import model as modellib
from mrcnn.config import Config
from mrcnn.image_meta import compose_image_meta
from mrcnn.roi_align import roi_align
from mrcnn.roi_heads import DetectionTargetLayer, PyramidROIAlign
from samples.shapes.shapes import lite_backbone, lite_backbone_shapes
from tests.conftest import TinyConfig, TinyShapes


class LiteConfig(TinyConfig):
    """TinyConfig on the shapes sample's small backbone: a training step in a second."""
    NAME = "lite"
    BACKBONE = staticmethod(lite_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(lite_backbone_shapes)
    STEPS_PER_EPOCH = 1
    VALIDATION_STEPS = 0


def make_config(**settings):
    return type("Config", (LiteConfig,), settings)()


def shapes(count, size=128, seed=1):
    ds = TinyShapes()
    ds.load_shapes(count, seed=seed, size=size)
    ds.prepare()
    return ds


def train_once(config, dataset, tmp_path, epochs=1, **kwargs):
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    history = model.train(dataset, None, learning_rate=1e-3, epochs=epochs, layers="all",
                          workers=1, **kwargs)
    return model, history


############################################################
#  Settings that silently differed
############################################################

def test_gradient_clip_norm_clips_the_global_norm():
    """Four gradients of norm 3 each (below the limit of 5), global norm 6: all
    are scaled by 5/6, as matterport's Keras 2 clipnorm did."""
    config = make_config(OPTIMIZER="sgd", GRADIENT_CLIP_NORM=5.0)
    optimizer = modellib.make_optimizer(config, learning_rate=1.0, momentum=0.0)
    variables = [tf.Variable(np.zeros(9, np.float32)) for _ in range(4)]
    gradients = [tf.constant(np.full(9, 1.0, np.float32)) for _ in range(4)]  # norm 3 each
    optimizer.apply_gradients(zip(gradients, variables))
    for v in variables:
        np.testing.assert_allclose(v.numpy(), -np.full(9, 5.0 / 6.0), rtol=1e-6)

    adam = modellib.make_optimizer(make_config(OPTIMIZER="adam"), 1e-3, 0.9)
    assert adam.global_clipnorm == 5.0 and adam.clipnorm is None
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(adam))  # registered
    assert type(restored) is modellib.Adam and restored.global_clipnorm == 5.0


def _bn_statistics(model):
    return {w.path: w.numpy().copy() for w in model.keras_model.weights
            if "moving_mean" in w.path or "moving_variance" in w.path}


@pytest.mark.large
@pytest.mark.parametrize("train_bn, changes", [(None, True), (False, False)])
def test_train_bn_none_trains_batchnorm_and_false_freezes_it(train_bn, changes, tmp_path):
    model = modellib.MaskRCNN("training", make_config(TRAIN_BN=train_bn), str(tmp_path))
    before = _bn_statistics(model)
    model.train(shapes(4), None, learning_rate=1e-3, epochs=1, layers="all", workers=1)
    after = _bn_statistics(model)
    assert before.keys() == after.keys() and len(before) > 10
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    if changes:
        assert len(moved) == len(before)
    else:
        assert moved == []


@pytest.mark.parametrize("train_bn", [True, None])
def test_train_bn_true_inference_does_not_depend_on_the_batch(train_bn, tmp_path):
    """matterport's TRAIN_BN = True forced batch statistics at inference, so an
    image's detections changed with the images beside it; here BN follows the phase."""
    model = modellib.MaskRCNN("inference", make_config(TRAIN_BN=train_bn, IMAGES_PER_GPU=1),
                              str(tmp_path))
    ds = shapes(2)
    images = [ds.load_image(0), ds.load_image(1)]
    molded, metas, _ = model.mold_inputs(images)
    alone = model._predict([tf.constant(x) for x in model._inference_inputs(molded[:1], metas[:1])])
    paired = model._predict([tf.constant(x) for x in model._inference_inputs(molded, metas)])
    for a, b in zip(alone, paired):
        np.testing.assert_allclose(a.numpy()[0], b.numpy()[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", ["False", 0, 1, "none"])
def test_train_bn_must_be_none_or_a_bool(value):
    with pytest.raises(ValueError, match="TRAIN_BN"):
        make_config(TRAIN_BN=value)


@pytest.mark.large
@pytest.mark.parametrize("mode", ["pad64", "none"])
def test_training_image_of_another_size_is_a_clear_error(mode, tmp_path):
    config = make_config(IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    with pytest.raises(ValueError) as error:
        model.train(shapes(4, size=192), None, learning_rate=1e-3, epochs=1, layers="all")
    message = str(error.value)
    assert "192x192" in message and "IMAGE_SHAPE 128x128" in message
    assert re.search(r"Training image \d \(source 'shapes'", message)
    assert "'crop'" in message and repr(mode) in message
    assert model.epoch == 0 and not list(tmp_path.rglob("*.h5"))  # no step, no checkpoint


@pytest.mark.large
def test_use_rpn_rois_false_trains_the_heads_on_random_rois(tmp_path):
    config = make_config(USE_RPN_ROIS=False)
    model, history = train_once(config, shapes(4), tmp_path)
    assert "input_roi" in [t.name for t in model.keras_model.inputs]
    for name in ("mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"):
        assert np.isfinite(history.history[name][0]) and history.history[name][0] > 0


@pytest.mark.large
def test_name_none_falls_back_to_mrcnn_everywhere(tmp_path):
    config = make_config(NAME=None)
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    assert model.checkpoint_path.endswith("mask_rcnn_mrcnn_{epoch:04d}.h5")
    with pytest.raises(FileNotFoundError, match="mrcnn"):
        model.find_last()
    model.train(shapes(2), None, learning_rate=1e-3, epochs=1, layers="heads", workers=1)
    assert model.find_last() == model.checkpoint_path.format(epoch=1)
    assert modellib.last_checkpoint(str(tmp_path), None) == model.find_last()


############################################################
#  RoIAlign at the border
############################################################

def _random_boxes(rng, count):
    corners = rng.random((count, 2, 2)).astype(np.float32)
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def _has_zero_line(pooled):
    """Per box: a whole pooled row or column is 0."""
    return (np.all(pooled == 0, axis=(2, 3)).any(1)) | (np.all(pooled == 0, axis=(1, 3)).any(1))


def test_boxes_on_the_border_read_the_border_not_zeros():
    rng = np.random.default_rng(0)
    feature_map = rng.random((2, 32, 40, 8)).astype(np.float32) + 0.5   # never 0
    boxes = _random_boxes(rng, 400)
    boxes[:200, 2] = 1.0
    boxes[200:, 3] = 1.0
    ind = np.arange(400) % 2
    plain = tf.image.crop_and_resize(feature_map, boxes, ind, (7, 7)).numpy()
    assert _has_zero_line(plain).sum() > 5   # the cliff this guards against
    pooled = roi_align(feature_map, boxes, ind, (7, 7)).numpy()
    assert not _has_zero_line(pooled).any()

    nudged = boxes.copy()
    nudged[:200, 2] -= 1e-7
    nudged[200:, 3] -= 1e-7
    np.testing.assert_allclose(pooled, roi_align(feature_map, nudged, ind, (7, 7)).numpy(),
                               atol=1e-4)
    # Boxes that hit the cliff equal crop_and_resize everywhere but on the zero line.
    fine = ~_has_zero_line(plain)
    assert np.array_equal(pooled[fine], plain[fine])


def test_boxes_inside_or_overhanging_keep_crop_and_resize_bit_for_bit():
    rng = np.random.default_rng(1)
    feature_map = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    inside = _random_boxes(rng, 300) * 0.98
    overhang = inside + np.float32(0.3)       # partly off the map: zeros there, as before
    for boxes in (inside, overhang):
        ind = np.arange(len(boxes)) % 2
        np.testing.assert_array_equal(
            roi_align(feature_map, boxes, ind, (7, 7)).numpy(),
            tf.image.crop_and_resize(feature_map, boxes, ind, (7, 7)).numpy())


def test_pyramid_roi_align_border_boxes_have_no_zero_lines():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 64)
    boxes[:, 2] = 1.0
    maps = [rng.random((1, s, s, 4)).astype(np.float32) + 0.1 for s in (32, 16, 8, 4)]
    meta = compose_image_meta(0, (128, 128, 3), (128, 128, 3), (0, 0, 128, 128), 1.0,
                              np.zeros(4))[None].astype(np.float32)
    pooled = PyramidROIAlign([7, 7])([boxes[None], meta] + maps).numpy()[0]
    assert not _has_zero_line(pooled).any()


def test_mask_targets_of_a_roi_on_its_gt_box_keep_the_last_row():
    """matterport's defaults (56x56 mini-masks, 28x28 targets): crop_and_resize
    dropped the last row and column of every RoI whose edges sit on its GT box."""
    config = Config()
    layer = DetectionTargetLayer(config)
    gt_box = np.array([0.1, 0.2, 0.6, 0.7], np.float32)
    proposals = np.zeros((1, 10, 4), np.float32)
    proposals[0, 0] = gt_box
    gt_boxes = np.zeros((1, 4, 4), np.float32)
    gt_boxes[0, 0] = gt_box
    gt_class_ids = np.array([[1, 0, 0, 0]], np.int32)
    gt_masks = np.zeros((1, 56, 56, 4), bool)
    gt_masks[0, :, :, 0] = True
    _, class_ids, _, masks = (t.numpy() for t in layer([proposals, gt_class_ids, gt_boxes, gt_masks]))
    assert class_ids[0, 0] == 1
    assert masks.shape[2:] == (28, 28) and masks[0, 0].min() == 1.0


############################################################
#  Aligned RoIAlign against a reference written from the definition
############################################################

def _bilinear(fm, y, x):
    """detectron2's bilinear_interpolate: 0 beyond one pixel outside, else clamped."""
    height, width = fm.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fm.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fm[y0, x0] + (1 - ly) * lx * fm[y0, x1]
            + ly * (1 - lx) * fm[y1, x0] + ly * lx * fm[y1, x1])


def _reference_aligned(fm, box, size, ratio):
    """ROIAlignV2: the box spans box * (H, W) pixels, -0.5, size bins, ratio^2 samples each."""
    height, width = fm.shape[:2]
    y1, x1, y2, x2 = np.asarray(box, np.float64) * [height, width, height, width] - 0.5
    bin_h, bin_w = (y2 - y1) / size[0], (x2 - x1) / size[1]
    out = np.zeros(tuple(size) + fm.shape[2:])
    for ph in range(size[0]):
        for pw in range(size[1]):
            for iy in range(ratio):
                for ix in range(ratio):
                    out[ph, pw] += _bilinear(fm, y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio,
                                             x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio)
    return out / ratio ** 2


def _reference_corners(fm, box, size, ratio):
    """matterport's grid (crop_and_resize's points from y1*(H-1) to y2*(H-1)), ratio^2 per bin."""
    height, width = fm.shape[:2]
    n = (size[0] * ratio, size[1] * ratio)
    ys = box[0] * (height - 1) + np.arange(n[0]) * (box[2] - box[0]) * (height - 1) / (n[0] - 1)
    xs = box[1] * (width - 1) + np.arange(n[1]) * (box[3] - box[1]) * (width - 1) / (n[1] - 1)
    samples = np.zeros(n + fm.shape[2:])
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            if 0 <= y <= height - 1 and 0 <= x <= width - 1:
                samples[i, j] = _bilinear(fm, y, x)
    return samples.reshape(size[0], ratio, size[1], ratio, -1).mean(axis=(1, 3))


@pytest.mark.parametrize("ratio", [1, 2])
def test_aligned_roi_align_matches_the_definition(ratio):
    rng = np.random.default_rng(3 + ratio)
    fm = rng.standard_normal((1, 13, 17, 3)).astype(np.float32)
    boxes = np.concatenate([_random_boxes(rng, 30),                       # inside
                            _random_boxes(rng, 10) * 1.4 - 0.2,           # across the border
                            np.array([[0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 1.0, 1.0]], np.float32)])
    got = roi_align(fm, boxes, np.zeros(len(boxes), np.int32), (7, 5), aligned=True,
                    sampling_ratio=ratio).numpy()
    expected = np.stack([_reference_aligned(fm[0], b, (7, 5), ratio) for b in boxes])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_corner_grid_with_two_samples_per_bin_matches_the_definition():
    rng = np.random.default_rng(7)
    fm = rng.standard_normal((1, 11, 9, 2)).astype(np.float32)
    boxes = _random_boxes(rng, 20) * 0.99
    got = roi_align(fm, boxes, np.zeros(20, np.int32), (4, 3), sampling_ratio=2).numpy()
    expected = np.stack([_reference_corners(fm[0], b, (4, 3), 2) for b in boxes])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_roi_align_settings_reach_both_heads_and_the_mask_targets():
    config = make_config(ROI_ALIGN_ALIGNED=True, ROI_ALIGN_SAMPLING_RATIO=2)
    for mode in ("training", "inference"):
        keras_model = modellib.MaskRCNN(mode, config, "unused").keras_model
        for name in ("roi_align_classifier", "roi_align_mask"):
            layer_config = keras_model.get_layer(name).get_config()
            assert (layer_config["aligned"], layer_config["sampling_ratio"]) == (True, 2)
    targets = DetectionTargetLayer(config).get_config()
    assert (targets["roi_align_aligned"], targets["roi_align_sampling_ratio"]) == (True, 2)
    assert DetectionTargetLayer.from_config(targets).roi_align_sampling_ratio == 2
    assert PyramidROIAlign.from_config(PyramidROIAlign([7, 7], True, 2).get_config()).aligned
    with pytest.raises(ValueError, match="ROI_ALIGN_SAMPLING_RATIO"):
        make_config(ROI_ALIGN_SAMPLING_RATIO=0)
    with pytest.raises(ValueError, match="ROI_ALIGN_ALIGNED"):
        make_config(ROI_ALIGN_ALIGNED="yes")


############################################################
#  Seeded runs
############################################################

def _flip_sometimes(image, masks):
    """A callable augmentation drawing from np.random, as users write them."""
    if np.random.rand() < 0.5:
        return image[:, ::-1], masks[:, ::-1]
    return image, masks


def _seeded_run(seed, tmp_path):
    config = make_config(SEED=seed, STEPS_PER_EPOCH=3, IMAGE_RESIZE_MODE="crop",
                         IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=256)
    model = modellib.MaskRCNN("training", config, str(tmp_path / str(seed)))
    result = model.train(shapes(12, size=160), None, learning_rate=1e-3, epochs=1,
                         layers="all", workers=2, augmentation=_flip_sometimes)
    return result.history, [w.numpy() for w in model.keras_model.weights]


@pytest.mark.large
def test_same_seed_gives_identical_losses_and_weights(tmp_path):
    """Python random (crops), numpy (augmentation, anchor sampling), TF (RoI
    sampling, initial weights) and two data workers: three steps repeat exactly.
    The runs train in "crop" mode (matterport's nucleus recipe: random
    IMAGE_MIN_DIM crops of larger images)."""
    from tensorflow.python.framework import config as tf_config
    losses_a, weights_a = _seeded_run(5, tmp_path / "a")
    assert tf_config.is_op_determinism_enabled()     # across processes too (measured: needed)
    assert np.all(np.isfinite(losses_a["loss"])) and losses_a["rpn_bbox_loss"][0] > 0
    losses_b, weights_b = _seeded_run(5, tmp_path / "b")
    losses_c, weights_c = _seeded_run(6, tmp_path / "c")
    assert losses_a == losses_b
    assert all(np.array_equal(a, b) for a, b in zip(weights_a, weights_b))
    assert losses_a["loss"] != losses_c["loss"]
    assert not all(np.array_equal(a, c) for a, c in zip(weights_a, weights_c))


def test_seeded_pipeline_batches_do_not_depend_on_workers_or_earlier_epochs():
    """Per-image generators seeded by (SEED, epoch, position): the same batches with 1 or 4
    loading threads, and epoch 2 the same whether the pipeline starts there or at epoch 0."""
    from mrcnn.pipeline import training_dataset
    config = make_config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=256)
    dataset = shapes(10, size=160)

    def batches(workers, epoch, count):
        pipeline = training_dataset(dataset, config, steps=2, seed=3, epoch=epoch,
                                    workers=workers, augmentation=_flip_sometimes)
        return [{k: v.numpy() for k, v in b.items()} for b in pipeline.take(count)]

    one, four = batches(1, 0, 6), batches(4, 0, 6)
    from_epoch_2 = batches(2, 2, 2)
    for a, b in zip(one, four):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    for a, b in zip(one[4:], from_epoch_2):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(one[0]["input_image"], one[2]["input_image"])   # a new epoch, new batches
    other_seed = training_dataset(dataset, config, steps=2, seed=4, augmentation=_flip_sometimes)
    assert not np.array_equal(next(iter(other_seed))["input_image"].numpy(), one[0]["input_image"])

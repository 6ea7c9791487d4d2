"""The mask head runs only on the rows whose masks are used: the positive RoIs in training,
the detections in inference. Losses, gradients and used outputs equal those of running it on
every row."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import graph
from mrcnn.roi_heads import (DetectionBoxes, DetectionTargetLayer, LeadingRows,
                             build_fpn_mask_graph, mrcnn_mask_loss_graph)
from tests.conftest import TinyConfig
from tests.test_graph import image_meta

CLASSES, CHANNELS, POOL = 4, 8, 7
FEATURE_SIZES = (32, 16, 8, 4)


def mask_head(pad_to=None):
    """The mask head as a model of (rois, meta, P2..P5), frozen BatchNorm with random statistics."""
    rois = keras.Input([None, 4])
    meta = keras.Input([12 + CLASSES])
    maps = [keras.Input([s, s, CHANNELS]) for s in FEATURE_SIZES]
    masks = build_fpn_mask_graph(rois, maps, meta, POOL, CLASSES, train_bn=False, pad_to=pad_to)
    model = keras.Model([rois, meta] + maps, masks)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if "bn" in layer.name:
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, var.shape)])
    return model


def feature_maps(batch, seed=1):
    rng = np.random.default_rng(seed)
    return [tf.Variable(rng.normal(size=(batch, s, s, CHANNELS)).astype(np.float32))
            for s in FEATURE_SIZES]


def many_positive_targets(rois_per_image, ratio):
    """DetectionTargetLayer outputs for 2 images whose proposals hug their GT boxes."""
    rng = np.random.default_rng(3)
    gt = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.2, 0.6, 0.5, 0.9]], np.float32)
    gt_boxes = np.stack([gt, gt * [1, 1, 1, 0.9]]).astype(np.float32)
    near = np.repeat(gt, 5, axis=0) + rng.uniform(-0.02, 0.02, (15, 4))
    far = rng.uniform(0, 0.5, (15, 2))
    far = np.concatenate([far, far + rng.uniform(0.02, 0.1, (15, 2))], 1)
    proposals = np.stack([np.concatenate([near, far]), np.concatenate([far, near])]).astype(np.float32)
    class_ids = np.array([[1, 2, 3], [3, 0, 2]], np.int32)   # image 1: a class-0 GT (ignored)
    masks = rng.uniform(size=(2, 14, 14, 3)) > 0.4
    layer = DetectionTargetLayer(train_rois_per_image=rois_per_image, roi_positive_ratio=ratio,
                                 bbox_std_dev=[0.1, 0.1, 0.2, 0.2], use_mini_mask=True,
                                 mask_shape=[2 * POOL, 2 * POOL])
    rois, target_class_ids, _, target_mask = layer([proposals, class_ids, gt_boxes, masks])
    return rois, target_class_ids, target_mask


def test_mask_loss_and_gradients_on_positive_rows_equal_those_on_all_rows():
    rois_per_image, ratio = 12, 0.5
    positive_rows = int(rois_per_image * ratio)
    rois, class_ids, target_mask = many_positive_targets(rois_per_image, ratio)
    # Some image fills all its positive rows, so slicing one row fewer would change the loss.
    assert (class_ids.numpy()[:, positive_rows - 1] > 0).any()
    assert not (class_ids.numpy()[:, positive_rows:] > 0).any()
    head, maps = mask_head(), feature_maps(2)
    meta = tf.constant(image_meta(2, num_classes=CLASSES))
    with tf.GradientTape(persistent=True) as tape:
        values = [tf.convert_to_tensor(m) for m in maps]
        every_row = mrcnn_mask_loss_graph(target_mask, class_ids, head([rois, meta] + values))
        used = LeadingRows(positive_rows)([rois, class_ids, target_mask])
        positives = mrcnn_mask_loss_graph(used[2], used[1], head([used[0], meta] + values))
    assert float(every_row) > 0.1
    np.testing.assert_allclose(float(positives), float(every_row), rtol=1e-6)
    sources = head.trainable_weights + maps   # maps: what flows back into the FPN and backbone
    for a, b in zip(tape.gradient(positives, sources), tape.gradient(every_row, sources)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


def test_training_graph_runs_the_mask_head_on_the_positive_rows():
    config = TinyConfig()
    model = graph.build_training_model(config)
    positive_rows = int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)
    assert model.get_layer("mrcnn_mask").output.shape[1] == positive_rows
    assert model.get_layer("roi_align_mask").output.shape[1] == positive_rows
    assert model.get_layer("roi_align_classifier").output.shape[1] == config.TRAIN_ROIS_PER_IMAGE


@pytest.mark.parametrize("counts", [(3, 1), (0, 2), (0, 0), (6, 6)])
def test_inference_masks_of_the_detections_equal_those_of_every_row(counts):
    k = 6
    rng = np.random.default_rng(sum(counts))
    detections = np.zeros((2, k, 6), np.float32)
    for image, count in enumerate(counts):
        y, x = rng.uniform(0, 0.6, (2, count))
        detections[image, :count] = np.stack(
            [y, x, y + 0.3, x + 0.2, rng.integers(1, CLASSES, count),
             np.sort(rng.uniform(0.5, 1, count))[::-1]], 1)
    boxes = DetectionBoxes()(detections)
    assert boxes.shape == (2, max(max(counts), 1), 4)
    every_row, padded = mask_head(), mask_head(pad_to=k)
    padded.set_weights(every_row.get_weights())
    meta = tf.constant(image_meta(2, num_classes=CLASSES))
    maps = [tf.convert_to_tensor(m) for m in feature_maps(2)]
    expected = every_row([tf.constant(detections[..., :4]), meta] + maps).numpy()
    masks = padded([boxes, meta] + maps).numpy()
    assert masks.shape == expected.shape == (2, k, 2 * POOL, 2 * POOL, CLASSES)
    for image, count in enumerate(counts):
        np.testing.assert_allclose(masks[image, :count], expected[image, :count], rtol=1e-5,
                                   atol=1e-6)
    assert not masks[:, boxes.shape[1]:].any()

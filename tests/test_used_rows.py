"""The mask head runs only on the rows whose masks are used: the positive RoIs in training,
the detections in inference. Losses, gradients and used outputs equal those of running it on
every row; the other rows are 0."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import mask_rcnn
from mrcnn.image_meta import meta_size
from mrcnn.roi_heads import (DetectionClassIds, DetectionTargetLayer, LeadingRows,
                             build_fpn_mask_graph, mrcnn_mask_loss_graph)
from tests.conftest import TinyConfig
from tests.test_graph import image_meta

CLASSES, CHANNELS, POOL = 4, 8, 7
FEATURE_SIZES = (32, 16, 8, 4)


def mask_head(used_rows=False):
    """The mask head as a model of (rois, meta, P2..P5[, row ids]), frozen BatchNorm with random
    statistics; with used_rows its convolutions run on the rows whose id is > 0."""
    rois = keras.Input([None, 4])
    meta = keras.Input([meta_size(CLASSES)])
    maps = [keras.Input([s, s, CHANNELS]) for s in FEATURE_SIZES]
    row_ids = [keras.Input([None], dtype="int32")] if used_rows else []
    masks = build_fpn_mask_graph(rois, maps, meta, POOL, CLASSES, train_bn=False,
                                 row_ids=row_ids[0] if used_rows else None)
    model = keras.Model([rois, meta] + maps + row_ids, masks)
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
    every_row, used_rows = mask_head(), mask_head(used_rows=True)
    used_rows.set_weights(every_row.get_weights())
    maps = feature_maps(2)
    meta = tf.constant(image_meta(2, num_classes=CLASSES))
    with tf.GradientTape(persistent=True) as tape:
        values = [tf.convert_to_tensor(m) for m in maps]
        all_masks = every_row([rois, meta] + values)
        full = mrcnn_mask_loss_graph(target_mask, class_ids, all_masks)
        rois_p, ids_p, targets_p = LeadingRows(positive_rows)([rois, class_ids, target_mask])
        masks_p = used_rows([rois_p, meta] + values + [ids_p])
        positives = mrcnn_mask_loss_graph(targets_p, ids_p, masks_p)
    assert float(full) > 0.1
    np.testing.assert_allclose(float(positives), float(full), rtol=1e-6)
    sources = every_row.trainable_weights + maps   # maps: what flows back into the FPN and backbone
    grads = zip(tape.gradient(positives, used_rows.trainable_weights + maps),
                tape.gradient(full, sources))
    for a, b in grads:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)
    # Positive rows hold the head's masks, the others 0.
    is_positive = ids_p.numpy() > 0
    np.testing.assert_allclose(masks_p.numpy()[is_positive],
                               all_masks.numpy()[:, :positive_rows][is_positive], rtol=1e-5, atol=1e-6)
    assert not masks_p.numpy()[~is_positive].any()


def test_training_graph_runs_the_mask_head_on_the_positive_rows():
    config = TinyConfig()
    model = mask_rcnn.build_training_model(config)
    positive_rows = int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)
    assert model.get_layer("mrcnn_mask").output.shape[1] == positive_rows
    assert model.get_layer("roi_align_mask").output.shape[1] == positive_rows
    assert model.get_layer("mask_used_rows").output.shape[:2] == (1, None)
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
    class_ids = DetectionClassIds()(detections)
    assert class_ids.shape == (2, k)
    every_row, used_rows = mask_head(), mask_head(used_rows=True)
    used_rows.set_weights(every_row.get_weights())
    meta = tf.constant(image_meta(2, num_classes=CLASSES))
    maps = [tf.convert_to_tensor(m) for m in feature_maps(2)]
    boxes = tf.constant(detections[..., :4])
    expected = every_row([boxes, meta] + maps).numpy()
    masks = used_rows([boxes, meta] + maps + [tf.cast(class_ids, tf.int32)]).numpy()
    assert masks.shape == expected.shape == (2, k, 2 * POOL, 2 * POOL, CLASSES)
    used = np.arange(k)[None] < np.array(counts)[:, None]
    if not used.any():      # no detection at all: the first row is computed, so no layer is empty
        used[0, 0] = True
    np.testing.assert_allclose(masks[used], expected[used], rtol=1e-5, atol=1e-6)
    assert not masks[~used].any()

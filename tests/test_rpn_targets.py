"""targets.build_rpn_targets against the full-IoU-matrix version it replaced (kept below as the
reference): the same rpn_match and rpn_bbox bit for bit, for the same random state."""

import numpy as np
import pytest

from mrcnn import geometry, targets, utils
from mrcnn.config import Config
from tests.conftest import TinyConfig


def reference_build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config):
    """build_rpn_targets before it skipped the pairs that cannot matter: the full
    [anchors, boxes] IoU matrix of utils.compute_overlaps, as matterport."""
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4))

    crowd = gt_class_ids < 0
    if np.any(crowd):
        crowd_iou_max = np.amax(utils.compute_overlaps(anchors, gt_boxes[crowd]), axis=1)
        no_crowd = crowd_iou_max < 0.001
        gt_boxes = gt_boxes[gt_class_ids > 0]
    else:
        no_crowd = np.ones([anchors.shape[0]], dtype=bool)

    overlaps = utils.compute_overlaps(anchors, gt_boxes)
    if gt_boxes.shape[0]:
        anchor_iou_argmax = np.argmax(overlaps, axis=1)
        anchor_iou_max = overlaps[np.arange(overlaps.shape[0]), anchor_iou_argmax]
    else:
        anchor_iou_argmax = np.zeros([anchors.shape[0]], dtype=np.int64)
        anchor_iou_max = np.zeros([anchors.shape[0]])
    rpn_match[(anchor_iou_max < 0.3) & no_crowd] = -1
    best = np.max(overlaps, axis=0, initial=0)
    ties = (overlaps == best) & (best > 0)
    rpn_match[np.nonzero(np.any(ties, axis=1))[0]] = 1
    rpn_match[anchor_iou_max >= 0.7] = 1

    ids = np.where(rpn_match == 1)[0]
    extra = len(ids) - config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    if extra > 0:
        rpn_match[np.random.choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (config.RPN_TRAIN_ANCHORS_PER_IMAGE - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[np.random.choice(ids, extra, replace=False)] = 0

    ids = np.where(rpn_match == 1)[0]
    a = anchors[ids]
    gt = gt_boxes[anchor_iou_argmax[ids]]
    gt_h = gt[:, 2] - gt[:, 0]
    gt_w = gt[:, 3] - gt[:, 1]
    a_h = a[:, 2] - a[:, 0]
    a_w = a[:, 3] - a[:, 1]
    deltas = np.stack([
        ((gt[:, 0] + 0.5 * gt_h) - (a[:, 0] + 0.5 * a_h)) / a_h,
        ((gt[:, 1] + 0.5 * gt_w) - (a[:, 1] + 0.5 * a_w)) / a_w,
        np.log(gt_h / a_h),
        np.log(gt_w / a_w),
    ], axis=1)
    rpn_bbox[:len(ids)] = deltas / np.asarray(config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


class Defaults1024(Config):
    """Matterport's defaults: 1024 x 1024, scales 32-512, 261,888 anchors, 256 per image."""
    NAME = "rpn-targets-1024"
    IMAGES_PER_GPU = 1
    NUM_CLASSES = 1 + 80


class Shapes128(TinyConfig):
    """samples/shapes' anchors (128 px, scales 8-128, 4092 anchors), 256 per image."""
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256


def random_boxes(rng, count, size):
    """`count` GT boxes [y1, x1, y2, x2] of sizes from 1 px to the image, log-uniform."""
    side = np.exp(rng.uniform(0, np.log(size), count))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))
    h = np.clip(np.round(side / np.sqrt(aspect)), 1, size)
    w = np.clip(np.round(side * np.sqrt(aspect)), 1, size)
    y1 = np.floor(rng.uniform(0, size - h + 1, count))
    x1 = np.floor(rng.uniform(0, size - w + 1, count))
    return np.stack([y1, x1, y1 + h, x1 + w], axis=1)


def random_case(rng, anchors, size):
    """A mixed bag of GT boxes and class ids: random sizes, plus some of: copies of anchors
    (rounded or not, so IoUs of exactly 1 and ties), duplicates, image-filling, border,
    zero-area, partly outside the image, crowds, class 0 boxes."""
    count = int(rng.choice([0, 1, 2, 3, 5, 8, 13]))
    parts = [random_boxes(rng, count, size)]
    if rng.rand() < 0.5:  # anchors themselves: exact IoUs 1, and many equal IoUs
        picked = anchors[rng.randint(0, len(anchors), rng.randint(1, 4))]
        parts.append(np.round(picked) if rng.rand() < 0.5 else picked)
    if rng.rand() < 0.3 and count:
        parts.append(parts[0][rng.randint(0, count, 2)])  # duplicates
    if rng.rand() < 0.2:
        parts.append([[0, 0, size, size]])
    if rng.rand() < 0.3:  # along a border
        t = rng.randint(1, size // 4)
        parts.append([[0, 10, t, 10 + t], [size - t, size - 2 * t, size, size]])
    if rng.rand() < 0.2:  # zero height or width
        parts.append([[5, 5, 5, 40], [20, 30, 60, 30]])
    if rng.rand() < 0.2:  # partly outside the image
        parts.append([[-10, -20, size // 3, size // 5],
                      [size // 2, size // 2, size + 30, size + 8]])
    boxes = np.concatenate([np.reshape(p, (-1, 4)) for p in parts]).astype(
        rng.choice([np.int32, np.float64]))
    class_ids = rng.randint(1, 5, len(boxes))
    class_ids[rng.rand(len(boxes)) < 0.15] = -1  # crowds
    if rng.rand() < 0.1:
        class_ids[:] = -1  # only crowds
    if rng.rand() < 0.1:
        class_ids[rng.rand(len(boxes)) < 0.2] = 0  # class 0: kept unless there is a crowd
    return class_ids.astype(np.int32), boxes


def assert_same(image_shape, anchors, class_ids, boxes, config, seed):
    np.random.seed(seed)
    expected = reference_build_rpn_targets(image_shape, anchors, class_ids, boxes, config)
    np.random.seed(seed)
    match, bbox = targets.build_rpn_targets(image_shape, anchors, class_ids, boxes, config)
    assert match.dtype == expected[0].dtype and bbox.dtype == expected[1].dtype
    assert np.array_equal(match, expected[0]), (class_ids, boxes)
    assert np.array_equal(bbox, expected[1], equal_nan=True), (class_ids, boxes)


@pytest.mark.parametrize("config_class,cases", [(Shapes128, 400), (Defaults1024, 30)])
def test_same_as_the_full_matrix_on_random_cases(config_class, cases):
    config = config_class()
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    size = config.IMAGE_SHAPE[0]
    rng = np.random.RandomState(size)
    for seed in range(cases):
        class_ids, boxes = random_case(rng, anchors, size)
        assert_same(config.IMAGE_SHAPE, anchors, class_ids, boxes, config, seed)


def test_same_as_the_full_matrix_with_many_boxes_at_1024():
    config = Defaults1024()
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    rng = np.random.RandomState(7)
    boxes = random_boxes(rng, 60, 1024).astype(np.int32)
    assert_same(config.IMAGE_SHAPE, anchors, np.ones(60, np.int32), boxes, config, 0)


def test_same_as_the_full_matrix_on_an_equal_copy_of_the_anchors():
    # Not the cached array itself: its grid is recognised by value.
    config = Shapes128()
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE).copy()
    rng = np.random.RandomState(1)
    for seed in range(10):
        class_ids, boxes = random_case(rng, anchors, 128)
        assert_same(config.IMAGE_SHAPE, anchors, class_ids, boxes, config, seed)


def test_same_as_the_full_matrix_with_anchors_of_another_layout():
    # Hand-made anchors: no grid, the overlapping pairs are found by comparing coordinates.
    config = Shapes128()
    rng = np.random.RandomState(2)
    for seed in range(40):
        anchors = random_boxes(rng, 500, 128) + rng.uniform(-0.5, 0.5, (500, 4)) * (seed % 2)
        anchors = anchors[(anchors[:, 2] > anchors[:, 0]) & (anchors[:, 3] > anchors[:, 1])]
        class_ids, boxes = random_case(rng, anchors, 128)
        assert_same(config.IMAGE_SHAPE, anchors, class_ids, boxes, config, seed)


def test_same_as_the_full_matrix_with_inverted_or_nan_boxes():
    # Outside the argument for skipping pairs: these take the full matrix.
    config = Shapes128()
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    cases = [
        ([1, 2], [[10, 10, 40, 40], [50, 50, 30, 30]]),
        ([1, -1], [[10, 10, 40, 40], [50, 60, 30, 30]]),
        ([1, 1], [[10, 10, 40, 40], [np.nan, 0, 20, 20]]),
    ]
    for seed, (class_ids, boxes) in enumerate(cases):
        assert_same(config.IMAGE_SHAPE, anchors, np.array(class_ids), np.array(boxes), config, seed)


def test_rng_argument_is_the_global_random_state_given_explicitly():
    config = Shapes128()
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    # 300 anchors as GT boxes: more than 128 positives and 128 negatives, both drawn at random.
    boxes = anchors[np.random.RandomState(0).choice(len(anchors), 300, replace=False)]
    class_ids = np.ones(300, np.int32)
    for seed in (0, 1, 2):
        np.random.seed(seed)
        expected = targets.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes, config)
        assert np.sum(expected[0] == 1) == 128 and np.sum(expected[0] == -1) == 128
        np.random.seed(seed + 100)  # the global state is neither used nor moved
        state = np.random.get_state()
        got = targets.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes, config,
                                     rng=np.random.RandomState(seed))
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))
    match, _ = targets.build_rpn_targets(config.IMAGE_SHAPE, anchors, class_ids, boxes, config,
                                      rng=np.random.default_rng(0))
    assert np.sum(match == 1) == 128 and np.sum(match == -1) == 128

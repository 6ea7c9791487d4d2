"""Training targets computed in numpy: RPN anchor targets, random RoIs and head targets.

For the same inputs and the same `np.random` state these return
matterport's values. Random draws take an optional `rng` (a
np.random.RandomState); None draws from the global np.random as matterport.
"""

import numpy as np

from mrcnn import utils
from mrcnn.backbone import compute_backbone_shapes
from mrcnn.geometry import box_deltas, compute_anchors

__all__ = [
    "random_source", "build_rpn_targets", "generate_random_rois", "build_detection_targets",
]


def random_source(rng):
    """The source of random draws: `rng`, or the global np.random (matterport's) when None."""
    return np.random if rng is None else rng


def build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config, rng=None):
    """RPN training targets: anchor matches and the deltas of positive anchors.

    anchors: [A, (y1, x1, y2, x2)] pixels; gt_boxes: [N, (y1, x1, y2, x2)].
    An anchor is positive (1) when its IoU with a GT box is >= 0.7 or it is
    (one of) the best anchors of a GT box, negative (-1) when its best IoU is
    < 0.3, neutral (0) otherwise. Crowd boxes (negative class ids) are not
    matched, and anchors touching a crowd (IoU >= 0.001) are never negative.
    Positives are cut at random to RPN_TRAIN_ANCHORS_PER_IMAGE // 2 and
    negatives to fill RPN_TRAIN_ANCHORS_PER_IMAGE, drawn with `rng.choice`
    (`rng`: a `np.random.RandomState` or anything with its `choice`; None is
    the global `np.random`, as matterport).

    Returns rpn_match [A] int32 and rpn_bbox [RPN_TRAIN_ANCHORS_PER_IMAGE,
    (dy, dx, log(dh), log(dw))] / RPN_BBOX_STD_DEV (float64), one row per
    positive anchor in anchor order, zero padded.

    Only the (anchor, box) pairs that can matter get an IoU (float64, with
    the operations of matterport's full `utils.compute_overlaps` matrix): with
    the anchors of `compute_anchors(config, image_shape)` they are read off
    each level's anchor grid around the box, leaving out the anchor shapes
    whose IoU with the box is bounded below 0.3 and below the box's best;
    other anchors are compared with each box. rpn_match and rpn_bbox are those
    of the full matrix bit for bit (`_rpn_match` says why).

    Unlike matterport, a GT box that overlaps no anchor at all (IoU 0, e.g. a
    zero-area box) does not turn every anchor positive with infinite deltas,
    and an image whose boxes are all crowds gives only negatives instead of
    crashing.
    """
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
    rpn_bbox = np.zeros((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4))

    crowd = gt_class_ids < 0
    crowd_boxes = gt_boxes[crowd]
    if np.any(crowd):
        gt_boxes = gt_boxes[gt_class_ids > 0]
    rpn_match, anchor_iou_argmax = _rpn_match(image_shape, anchors, gt_boxes, crowd_boxes,
                                              config)

    # Balance: at most half positives, negatives fill up the rest.
    ids = np.where(rpn_match == 1)[0]
    extra = len(ids) - config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    if extra > 0:
        rpn_match[random_source(rng).choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (config.RPN_TRAIN_ANCHORS_PER_IMAGE - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[random_source(rng).choice(ids, extra, replace=False)] = 0

    # Deltas from each positive anchor to its closest GT box, in float64 (the
    # anchors' dtype) like matterport, not with the float32 utils.box_refinement.
    ids = np.where(rpn_match == 1)[0]
    deltas = box_deltas(anchors[ids], gt_boxes[anchor_iou_argmax[ids]])
    rpn_bbox[:len(ids)] = deltas / np.asarray(config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


def _rpn_match(image_shape, anchors, gt_boxes, crowd_boxes, config):
    """rpn_match [A] before balancing, and each anchor's best GT box [A]
    (first of equals; meaningful where the anchor is positive), equal to
    those of the full IoU matrices (`_rpn_match_dense`) without computing them.

    Every anchor starts negative, and IoUs are computed only for the pairs of
    `_candidate_ious`; a pair left out either does not overlap (IoU exactly 0,
    as 0 / (area + area) with a positive anchor area and a non-negative box
    area) or is one whose IoU is bounded below 0.3 (0.001 for crowds) and below
    the box's best IoU. So no left-out pair changes an anchor's class, a box's
    best IoU or its ties. It can only be the argmax of a positive anchor whose
    computed IoUs are all < 0.3 (a box's best below 0.3): those few anchors
    get their full row. Boxes or anchors outside those assumptions (inverted,
    NaN, infinite) take the full matrices, whose NaNs are kept as they are.
    """
    if not (_plain_boxes(gt_boxes) and _plain_boxes(crowd_boxes)):
        return _rpn_match_dense(anchors, gt_boxes, crowd_boxes)
    grid = _anchor_grid(anchors, config, image_shape)
    if grid is None and not _plain_boxes(anchors, positive=True):
        return _rpn_match_dense(anchors, gt_boxes, crowd_boxes)

    count = anchors.shape[0]
    rpn_match = np.full([count], -1, dtype=np.int32)
    if crowd_boxes.shape[0]:
        a_ids, _, iou = _candidate_ious(anchors, grid, crowd_boxes, 0.001)
        rpn_match[a_ids[iou >= 0.001]] = 0

    a_ids, b_ids, iou = _candidate_ious(anchors, grid, gt_boxes, 0.3, best=True)
    anchor_iou_max = np.zeros([count])
    np.maximum.at(anchor_iou_max, a_ids, iou)
    rpn_match[anchor_iou_max >= 0.3] = 0
    # Every GT box gets its best anchor(s), whatever their IoU (ties all match).
    best = np.zeros([gt_boxes.shape[0]])
    np.maximum.at(best, b_ids, iou)
    rpn_match[a_ids[(iou == best[b_ids]) & (iou > 0)]] = 1
    rpn_match[anchor_iou_max >= 0.7] = 1

    # np.argmax of the full row: the first box reaching the anchor's max.
    top = (iou == anchor_iou_max[a_ids]) & (iou > 0)
    anchor_iou_argmax = np.full([count], gt_boxes.shape[0], dtype=np.int64)
    np.minimum.at(anchor_iou_argmax, a_ids[top], b_ids[top])
    low = np.nonzero((rpn_match == 1) & (anchor_iou_max < 0.3))[0]
    if low.size:
        anchor_iou_argmax[low] = np.argmax(utils.compute_overlaps(anchors[low], gt_boxes), axis=1)
    return rpn_match, anchor_iou_argmax


def _rpn_match_dense(anchors, gt_boxes, crowd_boxes):
    """`_rpn_match` from the full IoU matrices (matterport's way)."""
    count = anchors.shape[0]
    rpn_match = np.zeros([count], dtype=np.int32)
    if crowd_boxes.shape[0]:
        no_crowd = np.amax(utils.compute_overlaps(anchors, crowd_boxes), axis=1) < 0.001
    else:
        no_crowd = np.ones([count], dtype=bool)
    overlaps = utils.compute_overlaps(anchors, gt_boxes)
    if gt_boxes.shape[0]:
        anchor_iou_argmax = np.argmax(overlaps, axis=1)
        anchor_iou_max = overlaps[np.arange(count), anchor_iou_argmax]
    else:
        anchor_iou_argmax = np.zeros([count], dtype=np.int64)
        anchor_iou_max = np.zeros([count])
    rpn_match[(anchor_iou_max < 0.3) & no_crowd] = -1
    best = np.max(overlaps, axis=0, initial=0)
    ties = (overlaps == best) & (best > 0)
    rpn_match[np.nonzero(np.any(ties, axis=1))[0]] = 1
    rpn_match[anchor_iou_max >= 0.7] = 1
    return rpn_match, anchor_iou_argmax


def _plain_boxes(boxes, positive=False):
    """Finite boxes with y2 >= y1 and x2 >= x1 (> with `positive`)."""
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    if positive:
        return bool(np.all(h > 0) and np.all(w > 0) and np.all(np.isfinite(boxes)))
    return bool(np.all(h >= 0) and np.all(w >= 0) and np.all(np.isfinite(boxes)))


def _anchor_grid(anchors, config, image_shape):
    """The anchors' grids when they are `compute_anchors(config, image_shape)`:
    one entry per pyramid level and anchor shape, (anchor ids [rows, columns],
    step in pixels, y1, x1, y2, x2 of the anchor of cell (0, 0), which is
    centred on 0); else None. Cell (r, c) is centred on (r, c) * step."""
    shapes = compute_backbone_shapes(config, image_shape)
    stride = config.RPN_ANCHOR_STRIDE
    levels, start = [], 0
    for scales, (h, w), feature_stride in zip(config.RPN_ANCHOR_SCALES, shapes,
                                              config.BACKBONE_STRIDES):
        rows, cols = len(range(0, int(h), stride)), len(range(0, int(w), stride))
        per_cell = np.size(scales) * len(config.RPN_ANCHOR_RATIOS)
        levels.append((start, rows, cols, per_cell, stride * feature_stride))
        start += rows * cols * per_cell
    if anchors.shape[0] != start:
        return None
    pyramid = compute_anchors(config, image_shape)
    if anchors is not pyramid and not np.array_equal(anchors, pyramid):
        return None
    if id(pyramid) not in _ANCHOR_GRIDS:  # the pyramid stays in compute_anchors' cache
        index = np.arange(start)
        grid = []
        for start, rows, cols, per_cell, step in levels:
            ids = index[start:start + rows * cols * per_cell].reshape(rows, cols, per_cell)
            for k in range(per_cell if rows * cols else 0):
                grid.append((ids[:, :, k], step, *pyramid[start + k].tolist()))
        # The argument of _rpn_match needs anchors of positive area.
        if not all(y2 > y1 and x2 > x1 for _, _, y1, x1, y2, x2 in grid):
            grid = None
        _ANCHOR_GRIDS[id(pyramid)] = (pyramid, grid)
    return _ANCHOR_GRIDS[id(pyramid)][1]


_ANCHOR_GRIDS = {}  # id(compute_anchors array) -> (that array, its _anchor_grid)


def _candidate_ious(anchors, grid, boxes, threshold, best=False):
    """(anchor ids, box ids, IoUs) of the pairs `_rpn_match` needs: each
    anchor at most once per box.

    Without a grid: every pair that overlaps with a positive area. With one,
    per box and anchor shape: the block of grid cells whose anchors may
    overlap the box (one more row and column each side against rounding),
    when the IoU bound of that shape, min(h) * min(w) / (union with that
    intersection), reaches `threshold` or, with `best`, the best IoU found
    over the blocks of the box that reach it (and its block of largest bound).
    """
    if grid is None:
        a_ids = [np.nonzero((anchors[:, 0] < y2) & (anchors[:, 2] > y1)
                            & (anchors[:, 1] < x2) & (anchors[:, 3] > x1))[0]
                 for y1, x1, y2, x2 in boxes.tolist()]
        b_ids = np.repeat(np.arange(len(a_ids)), [len(ids) for ids in a_ids]).astype(np.int64)
        a_ids = np.concatenate(a_ids) if a_ids else np.zeros([0], dtype=np.int64)
        return a_ids, b_ids, _pair_ious(anchors, boxes, a_ids, b_ids)

    y1, x1, y2, x2 = (c[:, None] for c in boxes.astype(np.float64).T)
    ids = [g[0] for g in grid]
    step, a_y1, a_x1, a_y2, a_x2 = np.array([g[1:] for g in grid], dtype=np.float64).T
    rows = np.array([i.shape[0] for i in ids])
    cols = np.array([i.shape[1] for i in ids])
    # Cell r's anchor overlaps the box in y when r * step + a_y1 < y2 and r * step + a_y2 > y1.
    r1 = np.maximum(np.floor((y1 - a_y2) / step), 0).astype(np.int64)
    r2 = np.minimum(np.ceil((y2 - a_y1) / step), rows - 1).astype(np.int64)
    c1 = np.maximum(np.floor((x1 - a_x2) / step), 0).astype(np.int64)
    c2 = np.minimum(np.ceil((x2 - a_x1) / step), cols - 1).astype(np.int64)
    some = (r1 <= r2) & (c1 <= c2)
    a_h, a_w, b_h, b_w = a_y2 - a_y1, a_x2 - a_x1, y2 - y1, x2 - x1
    inter = np.minimum(a_h, b_h) * np.minimum(a_w, b_w)
    bound = inter / (a_h * a_w + b_h * b_w - inter) * (1 + 1e-6)  # > any IoU of the block

    def pairs(take):
        b, j = np.nonzero(take & some)
        parts = [ids[j_][r1[b_, j_]:r2[b_, j_] + 1, c1[b_, j_]:c2[b_, j_] + 1].ravel()
                 for b_, j_ in zip(b.tolist(), j.tolist())]
        a_ids = np.concatenate(parts) if parts else np.zeros([0], dtype=np.int64)
        b_ids = np.repeat(b, [len(p) for p in parts]).astype(np.int64)
        return a_ids, b_ids, _pair_ious(anchors, boxes, a_ids, b_ids)

    take = bound >= threshold
    if not best or not take.size:
        return pairs(take)
    take[np.arange(take.shape[0]), np.argmax(np.where(some, bound, -1), axis=1)] = True
    a_ids, b_ids, iou = pairs(take)
    found = np.zeros([boxes.shape[0]])
    np.maximum.at(found, b_ids, iou)
    more = ~take & (bound >= found[:, None])
    if np.any(more & some):
        extra = pairs(more)
        a_ids, b_ids, iou = (np.concatenate([u, v]) for u, v in zip((a_ids, b_ids, iou), extra))
    return a_ids, b_ids, iou


def _pair_ious(anchors, boxes, a_ids, b_ids):
    """IoU of each (anchor, box) pair, with the very operations of
    utils.compute_overlaps on the same dtypes, so the same bits."""
    a = anchors[a_ids]
    b_area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[b_ids]
    a_area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    iou = utils.compute_iou(boxes[b_ids].T, a, b_area, a_area)
    # compute_overlaps stores into float64: compare as float64 (0.7 is not a float32).
    return iou.astype(np.float64, copy=False)


def generate_random_rois(image_shape, count, gt_class_ids, gt_boxes, rng=None):
    """`count` random RoIs [count, (y1, x1, y2, x2)] int32, standing in for RPN proposals.

    90% are spread over the GT boxes, each drawn inside its box grown by its
    own size on every side; the rest lie anywhere in the image. All have
    non-zero height and width. rng: a np.random.RandomState, or None for the
    global np.random.
    """
    gt_boxes = np.asarray(gt_boxes)
    if gt_boxes.shape[0] == 0:
        raise ValueError("generate_random_rois needs at least one GT box.")
    if np.any(gt_boxes[:, 2] <= gt_boxes[:, 0]) or np.any(gt_boxes[:, 3] <= gt_boxes[:, 1]):
        raise ValueError("generate_random_rois: GT boxes must have non-zero height and width.")
    rois = np.zeros((count, 4), dtype=np.int32)
    per_box = int(0.9 * count / gt_boxes.shape[0])
    for i, (y1, x1, y2, x2) in enumerate(gt_boxes):
        h, w = y2 - y1, x2 - x1
        rois[per_box * i:per_box * (i + 1)] = _random_boxes(
            max(y1 - h, 0), min(y2 + h, image_shape[0]),
            max(x1 - w, 0), min(x2 + w, image_shape[1]), per_box, rng)
    remaining = count - per_box * gt_boxes.shape[0]
    rois[-remaining:] = _random_boxes(0, image_shape[0], 0, image_shape[1], remaining, rng)
    return rois


def _random_boxes(y_lo, y_hi, x_lo, x_hi, n, rng=None):
    """n boxes with corners drawn in [lo, hi), zero-size draws rejected (matterport's sampling)."""
    while True:
        ys = random_source(rng).randint(y_lo, y_hi, (n * 2, 2))
        xs = random_source(rng).randint(x_lo, x_hi, (n * 2, 2))
        ys = ys[ys[:, 0] != ys[:, 1]][:n]
        xs = xs[xs[:, 0] != xs[:, 1]][:n]
        if ys.shape[0] == n and xs.shape[0] == n:
            break
    ys, xs = np.sort(ys, axis=1), np.sort(xs, axis=1)
    return np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1)


def build_detection_targets(rpn_rois, gt_class_ids, gt_boxes, gt_masks, config):
    """Targets of the classifier and mask heads for given RoIs (numpy version).

    Used by `data_generator(detection_targets=True)` to inspect or to train the
    heads without the graph's DetectionTargetLayer. RoIs with IoU > 0.5 with a
    GT box are positive (at most TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO),
    those < 0.5 negative; missing rows repeat sampled negatives. Crowds
    (negative class ids) are ignored.

    rpn_rois: [R, (y1, x1, y2, x2)] pixels; gt_masks: [H, W, N] full or mini
    masks (per config.USE_MINI_MASK).
    Returns rois [T, 4], class_ids [T] int32, deltas [T, NUM_CLASSES, 4]
    / BBOX_STD_DEV (float32, only at the RoI's class) and masks
    [T, *MASK_SHAPE, NUM_CLASSES] float32, T = TRAIN_ROIS_PER_IMAGE.
    Where matterport failed because no RoI was negative, positives are repeated.
    """
    rpn_rois = np.asarray(rpn_rois)
    gt_class_ids = np.asarray(gt_class_ids, dtype=np.int32)
    gt_boxes = np.asarray(gt_boxes, dtype=np.int32)
    gt_masks = np.asarray(gt_masks).astype(bool)
    if rpn_rois.shape[0] == 0:
        raise ValueError("build_detection_targets needs at least one RoI.")
    instance_ids = np.where(gt_class_ids > 0)[0]
    if instance_ids.shape[0] == 0:
        raise ValueError("build_detection_targets: the image has no (non-crowd) instance.")
    gt_class_ids = gt_class_ids[instance_ids]
    gt_boxes = gt_boxes[instance_ids]
    gt_masks = gt_masks[:, :, instance_ids]

    overlaps = utils.compute_overlaps(rpn_rois, gt_boxes)
    roi_iou_argmax = np.argmax(overlaps, axis=1)
    roi_iou_max = overlaps[np.arange(overlaps.shape[0]), roi_iou_argmax]
    roi_gt_boxes = gt_boxes[roi_iou_argmax]
    roi_gt_class_ids = gt_class_ids[roi_iou_argmax]

    fg_ids = np.where(roi_iou_max > 0.5)[0]
    bg_ids = np.where(roi_iou_max < 0.5)[0]
    fg_count = int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)
    keep_fg_ids = (np.random.choice(fg_ids, fg_count, replace=False)
                   if fg_ids.shape[0] > fg_count else fg_ids)
    remaining = config.TRAIN_ROIS_PER_IMAGE - keep_fg_ids.shape[0]
    keep_bg_ids = (np.random.choice(bg_ids, remaining, replace=False)
                   if bg_ids.shape[0] > remaining else bg_ids)
    keep = np.concatenate([keep_fg_ids, keep_bg_ids])
    remaining = config.TRAIN_ROIS_PER_IMAGE - keep.shape[0]
    if remaining > 0:
        pool = keep_bg_ids if keep_bg_ids.shape[0] else keep
        if pool.shape[0] == 0:
            raise ValueError("build_detection_targets: every RoI has IoU exactly 0.5 with a GT "
                             "box, so none is positive or negative.")
        keep = np.concatenate([keep, np.random.choice(pool, remaining, replace=True)])

    roi_gt_boxes[keep_bg_ids] = 0
    roi_gt_class_ids[keep_bg_ids] = 0
    rois = rpn_rois[keep]
    roi_gt_boxes = roi_gt_boxes[keep]
    roi_gt_class_ids = roi_gt_class_ids[keep]
    roi_gt_assignment = roi_iou_argmax[keep]

    bboxes = np.zeros((config.TRAIN_ROIS_PER_IMAGE, config.NUM_CLASSES, 4), dtype=np.float32)
    pos_ids = np.where(roi_gt_class_ids > 0)[0]
    bboxes[pos_ids, roi_gt_class_ids[pos_ids]] = utils.box_refinement(
        rois[pos_ids], roi_gt_boxes[pos_ids, :4])
    bboxes /= config.BBOX_STD_DEV

    masks = np.zeros((config.TRAIN_ROIS_PER_IMAGE, config.MASK_SHAPE[0], config.MASK_SHAPE[1],
                      config.NUM_CLASSES), dtype=np.float32)
    for i in pos_ids:
        gt_id = roi_gt_assignment[i]
        class_mask = gt_masks[:, :, gt_id]
        if config.USE_MINI_MASK:
            full = np.zeros(config.IMAGE_SHAPE[:2], dtype=bool)
            y1, x1, y2, x2 = gt_boxes[gt_id]
            full[y1:y2, x1:x2] = np.round(utils.resize(class_mask, (y2 - y1, x2 - x1))).astype(bool)
            class_mask = full
        y1, x1, y2, x2 = rois[i].astype(np.int32)
        masks[i, :, :, roi_gt_class_ids[i]] = utils.resize(class_mask[y1:y2, x1:x2],
                                                           config.MASK_SHAPE)
    return rois, roi_gt_class_ids, bboxes, masks

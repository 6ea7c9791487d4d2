"""Training data: ground truth per image, RPN and head targets, and batching.

The numpy side of Mask R-CNN training, re-exported by `mrcnn.model` under
matterport's names. For the same inputs and the same `np.random` state the
functions return matterport's values (`np.random` is the only source of
randomness, so `np.random.seed` makes a run repeatable). Where matterport
crashed, looped forever or returned wrong values the docstring says what is
done instead.

`data_generator(...)` is matterport's endless Python generator of batches;
`train()` feeds the model from the tf.data pipeline of `mrcnn.pipeline`,
built on the same per-image code. Random draws take an optional `rng` (a
np.random.RandomState) so the pipeline's threads can each draw repeatably.
"""

import logging
import random
import threading
import warnings

import numpy as np

from mrcnn import utils
from mrcnn.backbone import compute_backbone_shapes
from mrcnn.dataset import to_channels

logger = logging.getLogger(__name__)

# imgaug augmenters that move pixels the same way in images and masks; the
# others (colour, blur, noise...) are applied to images only.
MASK_AUGMENTERS = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                   "CropAndPad", "Affine", "PiecewiseAffine")

# Held while a seeded augmentation callable runs on the process-wide np.random and random.
_GLOBAL_RNG = threading.Lock()


def _rng(rng):
    """The source of random draws: `rng`, or the global np.random (matterport's) when None."""
    return np.random if rng is None else rng


class TrainingShapeError(ValueError):
    """A training image's molded size differs from the IMAGE_SHAPE the training
    graph (anchors, RPN targets) is built for: a configuration error, raised at
    once rather than skipped like an image that fails to load."""


# Images that may fail to load in a row, each logged and skipped, before the error is raised.
MAX_CONSECUTIVE_ERRORS = 5


############################################################
#  Image meta data and molding
############################################################

def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Pack an image's attributes into one 1-D array (length 12 + NUM_CLASSES).

    Layout: image_id, original [H, W, C], resized [H, W, C], window
    (y1, x1, y2, x2) of the real image inside the padded one, scale, then one
    0/1 flag per class telling whether the image's source has that class.
    """
    return np.array([image_id, *original_image_shape, *image_shape, *window, scale,
                     *active_class_ids])


def parse_image_meta(meta):
    """Split image metas [batch, meta] (or one meta [meta]) into a dict of arrays."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[..., 0].astype(np.int32),
        "original_image_shape": meta[..., 1:4].astype(np.int32),
        "image_shape": meta[..., 4:7].astype(np.int32),
        "window": meta[..., 7:11].astype(np.int32),
        "scale": meta[..., 11].astype(np.float32),
        "active_class_ids": meta[..., 12:].astype(np.int32),
    }


def mold_image(images, config):
    """Subtract config.MEAN_PIXEL from RGB image(s); the network's input format."""
    return np.asarray(images).astype(np.float32) - config.MEAN_PIXEL


def unmold_image(normalized_images, config):
    """Inverse of `mold_image`: uint8 image(s).

    Rounds and clips; matterport truncated, which turned many values of a
    float32 molded image into value - 1 and wrapped values outside 0..255.
    """
    return np.clip(np.rint(normalized_images + config.MEAN_PIXEL), 0, 255).astype(np.uint8)


############################################################
#  Anchors
############################################################

_ANCHOR_CACHE = {}


def compute_anchors(config, image_shape):
    """Anchors [N, (y1, x1, y2, x2)] in pixels for images of `image_shape`.

    Cached per anchor configuration and shape; the array is read-only because
    it is shared.
    """
    shapes = compute_backbone_shapes(config, image_shape)
    key = (tuple(config.RPN_ANCHOR_SCALES), tuple(config.RPN_ANCHOR_RATIOS),
           tuple(tuple(int(v) for v in s) for s in shapes), tuple(config.BACKBONE_STRIDES),
           config.RPN_ANCHOR_STRIDE)
    if key not in _ANCHOR_CACHE:
        anchors = utils.generate_pyramid_anchors(
            config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes,
            config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)
        anchors.flags.writeable = False
        _ANCHOR_CACHE[key] = anchors
    return _ANCHOR_CACHE[key]


############################################################
#  Ground truth of one image
############################################################

def load_image_gt(dataset, config, image_id, augmentation=None, use_mini_mask=None, *,
                  augment=False, rng=None):
    """Load an image and its instances, resized and augmented for training.

    augmentation: an imgaug augmenter (anything with `to_deterministic`) or a
        callable `(image, masks) -> (image, masks)` taking and returning an
        image [H, W, C] and bool masks [H, W, N]; it must keep the image shape
        and the number of masks (float masks are thresholded at 0.5).
    use_mini_mask: None means config.USE_MINI_MASK (matterport's default was
        False).
    augment: deprecated, a random horizontal flip; use `augmentation`.
    rng: a np.random.RandomState for the random draws (crop, flip, the
        augmentation's seed; see `_augment`); None means the global np.random
        and random, as matterport.

    The image is brought to config.IMAGE_CHANNEL_COUNT channels by
    `dataset.to_channels`: RGB uint8 for 3, RGB from load_image turned gray for
    1; for other counts load_image must return [H, W, C] arrays.

    Returns image [H, W, C], image_meta (see
    `compose_image_meta`), class_ids [N] int32, bbox [N, (y1, x1, y2, x2)]
    int32 and bool masks [H, W, N] (or [*MINI_MASK_SHAPE, N]). Instances whose
    mask is empty after resizing or augmentation are dropped together with
    their class id. Negative class ids (COCO crowds) are kept.

    Raises ValueError naming the image when load_image/load_mask return data
    that cannot be used (mask size differing from the image, class ids out of
    range, mask and class id counts differing).
    """
    if use_mini_mask is None:
        use_mini_mask = config.USE_MINI_MASK
    _check_dataset(dataset, config)
    image = _checked_image(dataset.load_image(image_id), image_id, config)
    mask, class_ids = _checked_mask(*dataset.load_mask(image_id), image, image_id, config)
    original_shape = image.shape
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE, rng=rng)
    mask = utils.resize_mask(mask, scale, padding, crop)

    if augment:
        warnings.warn("load_image_gt: 'augment' is deprecated; use 'augmentation', e.g. "
                      "lambda image, masks: (image[:, ::-1], masks[:, ::-1]).", FutureWarning,
                      stacklevel=2)
        if _rng(rng).randint(2):
            image, mask = np.fliplr(image), np.fliplr(mask)
    if augmentation is not None:
        image, mask = _augment(image, mask, augmentation, image_id, rng)

    keep = np.any(mask, axis=(0, 1))
    mask, class_ids = mask[:, :, keep], class_ids[keep]
    bbox = utils.extract_bboxes(mask)

    # Classes of the image's source: the classifier loss ignores the others.
    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    active_class_ids[dataset.source_class_ids[dataset.image_info[image_id]["source"]]] = 1

    if use_mini_mask:
        mask = utils.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)

    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active_class_ids)
    return image, image_meta, class_ids, bbox, mask


def _check_dataset(dataset, config):
    """Raise ValueError when the dataset is not prepared or its classes do not fit the config."""
    if getattr(dataset, "num_classes", None) is None:
        raise ValueError("The dataset is not prepared; call dataset.prepare() first.")
    if dataset.num_classes != config.NUM_CLASSES:
        raise ValueError(f"The dataset has {dataset.num_classes} classes (background included) but "
                         f"{type(config).__name__}.NUM_CLASSES is {config.NUM_CLASSES}. Set "
                         f"NUM_CLASSES = {dataset.num_classes} or register the missing classes.")
    if len(dataset.image_ids) == 0:
        raise ValueError("The dataset has no images; add_image() some before training.")


def _checked_image(image, image_id, config):
    """The loaded image as [H, W, IMAGE_CHANNEL_COUNT] (see `dataset.to_channels`)."""
    return to_channels(image, config.IMAGE_CHANNEL_COUNT, f"Image {image_id} (from load_image)")


def _checked_mask(mask, class_ids, image, image_id, config):
    """Validate load_mask's output; returns bool masks [H, W, N] and int32 class ids [N]."""
    where = f"Image {image_id}: load_mask returned"
    class_ids = np.asarray(class_ids).reshape(-1)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"{where} masks of shape {mask.shape}. Return [H, W, N] masks, one "
                         "channel per instance (mask[..., np.newaxis] for a single instance).")
    if mask.shape[-1] != class_ids.shape[0]:
        raise ValueError(f"{where} {mask.shape[-1]} masks but {class_ids.shape[0]} class ids. "
                         "Return one class id per mask channel.")
    if class_ids.shape[0] == 0:  # no instances: any (e.g. the base class's 0x0x0) mask will do
        return np.zeros(image.shape[:2] + (0,), bool), class_ids.astype(np.int32)
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"{where} masks of size {mask.shape[:2]} for an image of size "
                         f"{image.shape[:2]}. Return masks the size of the image returned "
                         "by load_image.")
    if class_ids.dtype.kind not in "iu" and (
            class_ids.dtype.kind != "f" or not np.array_equal(class_ids, np.round(class_ids))):
        raise ValueError(f"{where} non-integer class ids {class_ids}. Return int32 class ids.")
    class_ids = class_ids.astype(np.int32)
    bad = (np.abs(class_ids) < 1) | (np.abs(class_ids) >= config.NUM_CLASSES)
    if np.any(bad):
        raise ValueError(f"{where} class ids {sorted(set(class_ids[bad].tolist()))} outside "
                         f"1..{config.NUM_CLASSES - 1} (NUM_CLASSES is {config.NUM_CLASSES}; "
                         "0 is the background, negative ids mark COCO crowds). Return ids of "
                         "classes registered with add_class, or raise NUM_CLASSES.")
    return mask.astype(bool), class_ids


def _augment(image, mask, augmentation, image_id, rng=None):
    """Apply an imgaug augmenter or an `(image, masks)` callable to an image and its masks.

    With `rng` (a np.random.RandomState) the draws are repeatable and may run
    in parallel threads: an imgaug augmenter runs as a deterministic copy
    seeded from rng; a callable runs under a lock with np.random and random
    seeded from rng (it may use either).
    """
    shape, count = image.shape, mask.shape[-1]
    seed = None if rng is None else int(rng.randint(2 ** 31))
    if hasattr(augmentation, "to_deterministic"):
        import imgaug  # optional dependency, already imported by whoever built the augmenter

        def mask_safe(images, augmenter, parents, default):
            """Only geometric augmenters touch the masks."""
            return augmenter.__class__.__name__ in MASK_AUGMENTERS

        det = augmentation.to_deterministic()
        if seed is not None:
            det.seed_(seed, deterministic_too=True)
        image = det.augment_image(image)
        if count:
            mask = det.augment_image(mask.astype(np.uint8),
                                     hooks=imgaug.HooksImages(activator=mask_safe))
    elif callable(augmentation):
        if seed is None:
            image, mask = augmentation(image, mask)
        else:
            with _GLOBAL_RNG:
                np.random.seed(seed)
                random.seed(seed)
                image, mask = augmentation(image, mask)
        image, mask = np.asarray(image), np.asarray(mask)
    else:
        raise ValueError(f"augmentation must be an imgaug augmenter or a callable "
                         f"(image, masks) -> (image, masks), got {type(augmentation).__name__}.")
    if image.shape != shape:
        raise ValueError(f"Image {image_id}: augmentation changed the image shape from {shape} "
                         f"to {image.shape}. Use augmenters that keep the size (e.g. "
                         "CropAndPad(keep_size=True)); resizing is done by the config.")
    if mask.ndim != 3 or mask.shape != shape[:2] + (count,):
        raise ValueError(f"Image {image_id}: augmentation returned masks of shape {mask.shape}, "
                         f"expected {shape[:2] + (count,)}. Return all masks, even emptied ones "
                         "(empty masks are dropped with their class ids).")
    return image, (mask >= 0.5 if mask.dtype.kind == "f" else mask.astype(bool))


############################################################
#  Targets
############################################################

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
        rpn_match[_rng(rng).choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (config.RPN_TRAIN_ANCHORS_PER_IMAGE - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[_rng(rng).choice(ids, extra, replace=False)] = 0

    # Deltas from each positive anchor to its closest GT box (computed in
    # float64 like matterport, not with the float32 utils.box_refinement).
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
        ys = _rng(rng).randint(y_lo, y_hi, (n * 2, 2))
        xs = _rng(rng).randint(x_lo, x_hi, (n * 2, 2))
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


############################################################
#  Batching
############################################################

def _load_sample(dataset, config, image_id, anchors, augmentation, random_rois,
                 detection_targets, augment=False, rng=None):
    """One image's training arrays, or None when it has no (non-crowd) instance.

    An image whose image_info has a true "train_empty" (what the loaders of
    `mrcnn.formats` set for images without annotations when asked) is kept
    as pure background: all its RPN anchors are negatives, and the RoI heads
    get no sample from it (the RoI sampler takes negatives in proportion to
    positives, as matterport's does). Not with `random_rois`, which are
    drawn around GT boxes. rng: see `load_image_gt`.
    """
    image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
        dataset, config, image_id, augmentation=augmentation,
        use_mini_mask=config.USE_MINI_MASK, augment=augment, rng=rng)
    if image.shape[:2] != tuple(config.IMAGE_SHAPE[:2]):
        h, w = config.IMAGE_SHAPE[:2]
        raise TrainingShapeError(
            f"Training image {_describe(dataset, image_id)} is {image.shape[0]}x{image.shape[1]} "
            f"after resizing (IMAGE_RESIZE_MODE {config.IMAGE_RESIZE_MODE!r}), but the training "
            f"graph's anchors and RPN targets are built for IMAGE_SHAPE {h}x{w}. Train with "
            "IMAGE_RESIZE_MODE 'square' (IMAGE_MAX_DIM) or 'crop' (random IMAGE_MIN_DIM crops, as "
            "matterport's nucleus sample), or give every image that size; 'pad64' and 'none' "
            "suit inference configs.")
    if not np.any(gt_class_ids > 0) and (
            random_rois or not dataset.image_info[image_id].get("train_empty")):
        return None
    rpn_match, rpn_bbox = build_rpn_targets(image.shape, anchors, gt_class_ids, gt_boxes, config,
                                            rng=rng)
    extra = []
    if random_rois:
        rpn_rois = generate_random_rois(image.shape, random_rois, gt_class_ids, gt_boxes, rng)
        extra.append(rpn_rois)
        if detection_targets:
            extra.extend(build_detection_targets(rpn_rois, gt_class_ids, gt_boxes, gt_masks,
                                                 config))
    if gt_boxes.shape[0] > config.MAX_GT_INSTANCES:
        ids = _rng(rng).choice(np.arange(gt_boxes.shape[0]), config.MAX_GT_INSTANCES,
                               replace=False)
        gt_class_ids, gt_boxes, gt_masks = gt_class_ids[ids], gt_boxes[ids], gt_masks[:, :, ids]
    return [image, image_meta, rpn_match, rpn_bbox, gt_class_ids, gt_boxes, gt_masks] + extra


def _pad_instances(class_ids, boxes, masks, max_gt):
    """One image's instances zero padded to `max_gt`: class ids [G] int32, boxes [G, 4] int32,
    masks [h, w, G] bool."""
    count = class_ids.shape[0]
    padded_ids = np.zeros((max_gt,), dtype=np.int32)
    padded_boxes = np.zeros((max_gt, 4), dtype=np.int32)
    padded_masks = np.zeros(masks.shape[:2] + (max_gt,), dtype=bool)
    padded_ids[:count], padded_boxes[:count], padded_masks[:, :, :count] = class_ids, boxes, masks
    return padded_ids, padded_boxes, padded_masks


def _collate(samples, config):
    """Stack samples into matterport's (inputs, outputs) batch lists."""
    shapes = {s[0].shape for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"Images of one batch have different shapes {sorted(shapes)}. Use "
                         "IMAGE_RESIZE_MODE 'square' or 'crop', or a batch size of 1.")
    gt_class_ids, gt_boxes, gt_masks = (np.stack(v) for v in zip(*(
        _pad_instances(s[4], s[5], s[6], config.MAX_GT_INSTANCES) for s in samples)))
    inputs = [
        np.stack([mold_image(s[0], config) for s in samples]).astype(np.float32),
        np.stack([s[1] for s in samples]).astype(np.float64),
        np.stack([s[2] for s in samples])[:, :, np.newaxis],
        np.stack([s[3] for s in samples]),
        gt_class_ids, gt_boxes, gt_masks,
    ]
    outputs = []
    if len(samples[0]) > 7:
        inputs.append(np.stack([s[7] for s in samples]))
    if len(samples[0]) > 8:
        inputs.append(np.stack([s[8] for s in samples]))
        outputs = [np.stack([s[9] for s in samples])[:, :, np.newaxis],
                   np.stack([s[10] for s in samples]),
                   np.stack([s[11] for s in samples])]
    return inputs, outputs


def _describe(dataset, image_id):
    """Image id with its source, source id and path, for log messages."""
    info = dataset.image_info[image_id]
    return f"{image_id} (source {info.get('source')!r}, id {info.get('id')!r}, path {info.get('path')!r})"


def data_generator(dataset, config, shuffle=True, augment=False, augmentation=None,
                   random_rois=0, batch_size=1, detection_targets=False,
                   no_augmentation_sources=None):
    """Endless generator of training batches `(inputs, outputs)`, as matterport's.

    inputs: images [B, H, W, C] float32 (molded), image_meta [B, 12 + NUM_CLASSES]
    float64, rpn_match [B, A, 1] int32, rpn_bbox [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4],
    gt_class_ids [B, MAX_GT_INSTANCES] int32, gt_boxes [B, MAX_GT_INSTANCES, 4]
    int32, gt_masks [B, h, w, MAX_GT_INSTANCES] bool; with random_rois > 0
    also rpn_rois [B, random_rois, 4], and with detection_targets the
    `build_detection_targets` rois as an input and class ids [B, T, 1], deltas
    and masks as outputs (otherwise outputs is []).

    The order is reshuffled after each pass when `shuffle`. Images without
    instances are skipped (the count is logged) unless their image_info has
    "train_empty" (see `_load_sample`). An image that fails to load
    is logged with its traceback and skipped; after more than
    MAX_CONSECUTIVE_ERRORS failures in a row the error is raised (matterport
    counted all failures of the run and raised after six). Sources listed in
    `no_augmentation_sources` get neither `augmentation` nor `augment`.
    """
    _check_dataset(dataset, config)
    image_ids = np.copy(dataset.image_ids)
    no_augmentation_sources = no_augmentation_sources or []
    anchors = compute_anchors(config, config.IMAGE_SHAPE)
    index, errors, skipped, empty_run = -1, 0, 0, 0
    samples = []
    while True:
        index = (index + 1) % len(image_ids)
        if shuffle and index == 0:
            np.random.shuffle(image_ids)
        image_id = image_ids[index]
        plain = dataset.image_info[image_id]["source"] in no_augmentation_sources
        try:
            sample = _load_sample(dataset, config, image_id, anchors,
                                  None if plain else augmentation, random_rois,
                                  detection_targets, augment=augment and not plain)
        except TrainingShapeError:
            raise
        except Exception as e:
            errors += 1
            logger.error("Error processing image %s; skipped.", _describe(dataset, image_id),
                         exc_info=True)
            if errors > MAX_CONSECUTIVE_ERRORS:
                e.add_note(f"data_generator: {errors} images in a row failed to load; "
                           "the last error is raised.")
                raise
            continue
        errors = 0
        if sample is None:
            skipped += 1
            empty_run += 1
            logger.warning("Image %s has no instances; skipped (%d skipped so far).",
                           _describe(dataset, image_id), skipped)
            if empty_run >= 2 * len(image_ids):  # a whole shuffled pass had none
                raise ValueError("data_generator: no image of the dataset has instances "
                                 "(check load_mask and the class ids).")
            continue
        empty_run = 0
        samples.append(sample)
        if len(samples) == batch_size:
            yield _collate(samples, config)
            samples = []

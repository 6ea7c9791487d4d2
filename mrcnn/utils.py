"""The numpy toolbox of Mask R-CNN under matterport's names: boxes, masks, resizing, anchors, AP.

These functions are the numeric ground truth of the library: for the same
inputs they return the same values, dtypes and shapes as matterport's
`mrcnn/utils.py`. Where matterport's behaviour is a known bug the compatible
behaviour is kept and the docstring says so.

Boxes are (y1, x1, y2, x2) in pixels; y2 and x2 are exclusive.
"""

import random
import warnings

import numpy as np
import scipy.ndimage
import skimage.transform

# matterport's utils held these too; they live where they belong and stay importable from here.
from mrcnn.dataset import Dataset
from mrcnn.files import COCO_MODEL_URL, download_trained_weights
from mrcnn.geometry import (
    apply_box_deltas, box_refinement, compute_iou, compute_overlaps, denorm_boxes,
    generate_anchors, generate_pyramid_anchors, norm_boxes)
from mrcnn.tf_ops import batch_slice

__all__ = [
    "Dataset", "COCO_MODEL_URL", "download_trained_weights", "apply_box_deltas",
    "box_refinement", "compute_iou", "compute_overlaps", "denorm_boxes", "generate_anchors",
    "generate_pyramid_anchors", "norm_boxes", "batch_slice", "extract_bboxes",
    "compute_overlaps_masks", "non_max_suppression", "resize", "resize_image", "resize_mask",
    "minimize_mask", "expand_mask", "unmold_mask", "trim_zeros", "compute_matches",
    "compute_ap", "compute_ap_range", "compute_recall",
]

############################################################
#  Bounding boxes
############################################################

def extract_bboxes(mask):
    """Bounding boxes [N, (y1, x1, y2, x2)] int32 of masks [H, W, N].

    An empty mask gets the box (0, 0, 0, 0).
    """
    boxes = np.zeros([mask.shape[-1], 4], dtype=np.int32)
    for i in range(mask.shape[-1]):
        m = mask[:, :, i]
        cols = np.where(np.any(m, axis=0))[0]
        rows = np.where(np.any(m, axis=1))[0]
        if cols.shape[0]:
            boxes[i] = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    return boxes


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix [N1, N2] of two mask sets [H, W, N1] and [H, W, N2].

    Pixels count as set where > 0.5. Either set empty gives zeros((N1, N2)).
    """
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]))
    masks1 = np.reshape(masks1 > .5, (-1, masks1.shape[-1])).astype(np.float32)
    masks2 = np.reshape(masks2 > .5, (-1, masks2.shape[-1])).astype(np.float32)
    area1 = np.sum(masks1, axis=0)
    area2 = np.sum(masks2, axis=0)
    intersections = np.dot(masks1.T, masks2)
    union = area1[:, None] + area2[None, :] - intersections
    return intersections / union


def non_max_suppression(boxes, scores, threshold):
    """Greedy NMS; returns int32 indices of the kept boxes, highest score first.

    A box is dropped when its IoU with a kept box is > threshold.
    """
    if boxes.shape[0] == 0:
        raise ValueError("non_max_suppression() needs at least one box; got an empty array.")
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ixs = scores.argsort()[::-1]
    pick = []
    while len(ixs) > 0:
        i = ixs[0]
        pick.append(i)
        iou = compute_iou(boxes[i], boxes[ixs[1:]], area[i], area[ixs[1:]])
        remove_ixs = np.where(iou > threshold)[0] + 1
        ixs = np.delete(ixs, remove_ixs)
        ixs = np.delete(ixs, 0)
    return np.array(pick, dtype=np.int32)


############################################################
#  Resizing images and masks
############################################################

def resize(image, output_shape, order=1, mode="constant", cval=0, clip=True,
           preserve_range=False, anti_aliasing=False, anti_aliasing_sigma=None):
    """`skimage.transform.resize` with matterport's defaults (no anti-aliasing).

    Boolean images are resized as float 0/1, which is what older scikit-image
    did implicitly (new releases refuse bool input with order > 0).
    """
    if image.dtype == bool and order != 0:
        image = image.astype(np.float64)
    return skimage.transform.resize(
        image, output_shape, order=order, mode=mode, cval=cval, clip=clip,
        preserve_range=preserve_range, anti_aliasing=anti_aliasing,
        anti_aliasing_sigma=anti_aliasing_sigma)


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", *, rng=None):
    """Resize an image keeping its aspect ratio; returns image, window, scale, padding, crop.

    mode:
      "none":   unchanged.
      "square": scale so the short side is >= min_dim and the long side <= max_dim,
                then zero-pad to [max_dim, max_dim].
      "pad64":  scale up to min_dim / min_scale, then zero-pad each side to a
                multiple of 64 (max_dim is ignored).
      "crop":   scale up to min_dim / min_scale, then take a random
                min_dim x min_dim crop (training only), its corner drawn by
                Python's `random` (as matterport) or by `rng`, a
                np.random.RandomState, when given.
    The image is scaled up, never down, to reach min_dim. window is the
    (y1, x1, y2, x2) of the image inside the padded result; padding is
    [(top, bottom), (left, right), (0, 0)]; crop is (y, x, h, w) or None.
    The result has the input's dtype (values are truncated, as in matterport).
    """
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1
    padding = [(0, 0), (0, 0), (0, 0)]
    crop = None

    if mode == "none":
        return image, window, scale, padding, crop
    if mode not in ("square", "pad64", "crop"):
        raise ValueError(f"resize_image: mode {mode!r} is not supported; "
                         "use 'none', 'square', 'pad64' or 'crop'.")

    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max

    if scale != 1:
        image = resize(image, (round(h * scale), round(w * scale)), preserve_range=True)

    if mode == "square":
        h, w = image.shape[:2]
        top_pad = (max_dim - h) // 2
        bottom_pad = max_dim - h - top_pad
        left_pad = (max_dim - w) // 2
        right_pad = max_dim - w - left_pad
        padding = [(top_pad, bottom_pad), (left_pad, right_pad), (0, 0)]
        image = np.pad(image, padding, mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    elif mode == "pad64":
        h, w = image.shape[:2]
        if min_dim is None or min_dim % 64 != 0:
            raise ValueError(f"resize_image: mode 'pad64' needs min_dim a multiple of 64, got {min_dim}.")
        top_pad, bottom_pad = _pad_to_64(h)
        left_pad, right_pad = _pad_to_64(w)
        padding = [(top_pad, bottom_pad), (left_pad, right_pad), (0, 0)]
        image = np.pad(image, padding, mode="constant", constant_values=0)
        window = (top_pad, left_pad, h + top_pad, w + left_pad)
    else:  # crop
        h, w = image.shape[:2]
        if rng is None:
            y = random.randint(0, (h - min_dim))
            x = random.randint(0, (w - min_dim))
        else:
            y, x = (int(v) for v in rng.randint(0, (h - min_dim + 1, w - min_dim + 1)))
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image.astype(image_dtype), window, scale, padding, crop


def _pad_to_64(size):
    """(before, after) zero padding that makes `size` a multiple of 64, split evenly."""
    if size % 64 == 0:
        return 0, 0
    total = 64 - size % 64
    return total // 2, total - total // 2


def resize_mask(mask, scale, padding, crop=None):
    """Resize masks [H, W, N] with the scale and padding (or crop) of `resize_image`.

    Nearest-neighbour zoom, so the mask keeps its dtype and values.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's note on rounding of the output shape
        mask = scipy.ndimage.zoom(mask, zoom=[scale, scale, 1], order=0)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding, mode="constant", constant_values=0)


def minimize_mask(bbox, mask, mini_shape):
    """Crop each mask [H, W, N] to its box and resize it to `mini_shape` (bool).

    Raises ValueError for a box of zero area. See `expand_mask` for the inverse.
    """
    mini_mask = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        m = mask[:, :, i].astype(bool)
        y1, x1, y2, x2 = bbox[i][:4]
        m = m[y1:y2, x1:x2]
        if m.size == 0:
            raise ValueError(f"minimize_mask: instance {i} has a box of zero area {tuple(bbox[i][:4])}; "
                             "drop empty masks before minimizing them.")
        mini_mask[:, :, i] = np.around(resize(m, mini_shape)).astype(bool)
    return mini_mask


def expand_mask(bbox, mini_mask, image_shape):
    """Resize mini masks back into full-image masks [H, W, N] (inverse of `minimize_mask`)."""
    mask = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        m = resize(mini_mask[:, :, i], (y2 - y1, x2 - x1))
        mask[y1:y2, x1:x2, i] = np.around(m).astype(bool)
    return mask


def unmold_mask(mask, bbox, image_shape):
    """Turn a small float mask (e.g. 28x28) into a full-image bool mask inside `bbox`.

    Thresholded at 0.5 after bilinear resizing to the box.
    """
    y1, x1, y2, x2 = bbox
    mask = resize(mask, (y2 - y1, x2 - x1))
    full_mask = np.zeros(image_shape[:2], dtype=bool)
    full_mask[y1:y2, x1:x2] = mask >= 0.5
    return full_mask


############################################################
#  Anchors
############################################################

############################################################
#  Evaluation
############################################################

def trim_zeros(x):
    """Drop the rows of a 2-D array that are all zeros (padding)."""
    if x.ndim != 2:
        raise ValueError(f"trim_zeros expects a 2-D array, got shape {x.shape}.")
    return x[~np.all(x == 0, axis=1)]


def compute_matches(gt_boxes, gt_class_ids, gt_masks,
                    pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold=0.5, score_threshold=0.0):
    """Match predictions to ground truth by mask IoU, highest score first.

    Returns gt_match (index of the matched prediction per GT, -1 if none),
    pred_match (index of the matched GT per prediction, -1 if none), and the
    mask IoU matrix [predictions sorted by score, gt]. A prediction matches the
    unmatched GT of the same class with the highest IoU >= iou_threshold.
    Zero-padded rows of the box arrays are dropped first.
    """
    gt_boxes = trim_zeros(gt_boxes)
    gt_masks = gt_masks[..., :gt_boxes.shape[0]]
    pred_boxes = trim_zeros(pred_boxes)
    pred_scores = pred_scores[:pred_boxes.shape[0]]
    indices = np.argsort(pred_scores)[::-1]
    pred_boxes = pred_boxes[indices]
    pred_class_ids = pred_class_ids[indices]
    pred_scores = pred_scores[indices]
    pred_masks = pred_masks[..., indices]

    overlaps = compute_overlaps_masks(pred_masks, gt_masks)

    pred_match = -1 * np.ones([pred_boxes.shape[0]])
    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    for i in range(len(pred_boxes)):
        sorted_ixs = np.argsort(overlaps[i])[::-1]
        low_score_idx = np.where(overlaps[i, sorted_ixs] < score_threshold)[0]
        if low_score_idx.size > 0:
            sorted_ixs = sorted_ixs[:low_score_idx[0]]
        for j in sorted_ixs:
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks,
               pred_boxes, pred_class_ids, pred_scores, pred_masks,
               iou_threshold=0.5):
    """VOC-style average precision of one image's detections at one mask-IoU threshold.

    Precision is made monotone (each point takes the maximum precision at any
    higher recall) and integrated over every recall step, with end points
    (0, 0) and (1, 0) added — the PASCAL VOC 2010+ "all points" rule. This
    differs from COCOeval, which samples the interpolated precision at 101
    fixed recall points and averages over classes across a whole dataset.
    Returns mAP, precisions, recalls, overlaps. With no ground truth the
    result is nan (recall divides by zero), as in matterport.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks,
        pred_boxes, pred_class_ids, pred_scores, pred_masks, iou_threshold)

    with np.errstate(divide="ignore", invalid="ignore"):
        precisions = np.cumsum(pred_match > -1) / (np.arange(len(pred_match)) + 1)
        recalls = np.cumsum(pred_match > -1).astype(np.float32) / len(gt_match)

    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])

    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    mAP = np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices])
    return mAP, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask,
                     pred_box, pred_class_id, pred_score, pred_mask,
                     iou_thresholds=None, verbose=1):
    """Mean of `compute_ap` over IoU thresholds (default 0.5:0.05:0.95)."""
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    AP = []
    for iou_threshold in iou_thresholds:
        ap, _, _, _ = compute_ap(gt_box, gt_class_id, gt_mask,
                                 pred_box, pred_class_id, pred_score, pred_mask,
                                 iou_threshold=iou_threshold)
        if verbose:
            print("AP @{:.2f}:\t {:.3f}".format(iou_threshold, ap))
        AP.append(ap)
    AP = np.array(AP).mean()
    if verbose:
        print("AP @{:.2f}-{:.2f}:\t {:.3f}".format(iou_thresholds[0], iou_thresholds[-1], AP))
    return AP


def compute_recall(pred_boxes, gt_boxes, iou):
    """Share of GT boxes matched by some prediction with IoU >= iou; also the matching prediction ids."""
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    iou_max = np.max(overlaps, axis=1)
    iou_argmax = np.argmax(overlaps, axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    matched_gt_boxes = iou_argmax[positive_ids]
    recall = len(set(matched_gt_boxes)) / gt_boxes.shape[0]
    return recall, positive_ids


############################################################
#  Coordinates and batching
############################################################

############################################################
#  Downloads
############################################################


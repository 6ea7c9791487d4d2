"""Box and anchor geometry: each numpy function next to its TensorFlow twin.

Boxes are (y1, x1, y2, x2). In pixels y2 and x2 are exclusive; normalised
boxes (the graph's) are inclusive, with (0, 0, 1, 1) the whole image. Box
deltas are (dy, dx, log(dh), log(dw)) relative to the box's size. The numpy
functions are matterport's (`mrcnn.utils` re-exports them under those
names); a twin (`*_graph`) computes the same on tensors with any leading
batch dimensions, and `tests/test_geometry.py` checks each pair equal.
"""

import numpy as np
import tensorflow as tf

from mrcnn.backbone import compute_backbone_shapes

__all__ = [
    "compute_iou", "compute_overlaps", "apply_box_deltas", "box_deltas", "box_refinement",
    "generate_anchors", "generate_pyramid_anchors", "norm_boxes", "denorm_boxes",
    "unmold_boxes", "apply_box_deltas_graph", "clip_boxes_graph", "box_refinement_graph",
    "norm_boxes_graph", "denorm_boxes_graph", "unmold_boxes_graph", "overlaps_graph",
    "anchor_params", "compute_anchors", "normalized_anchors",
]


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with each of `boxes`, given their precomputed areas."""
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = box_area + boxes_area[:] - intersection[:]
    return intersection / union


def compute_overlaps(boxes1, boxes2):
    """IoU matrix [len(boxes1), len(boxes2)] (float64) of two box sets."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    overlaps = np.zeros((boxes1.shape[0], boxes2.shape[0]))
    for i in range(overlaps.shape[1]):
        overlaps[:, i] = compute_iou(boxes2[i], boxes1, area2[i], area1)
    return overlaps


def apply_box_deltas(boxes, deltas):
    """Apply [N, (dy, dx, log(dh), log(dw))] to boxes [N, 4]; float32 result."""
    boxes = boxes.astype(np.float32)
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    center_y += deltas[:, 0] * height
    center_x += deltas[:, 1] * width
    height *= np.exp(deltas[:, 2])
    width *= np.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return np.stack([y1, x1, y1 + height, x1 + width], axis=1)


def box_deltas(box, gt_box):
    """Deltas [N, (dy, dx, log(dh), log(dw))] that turn `box` [N, 4] into `gt_box` [N, 4].

    Computed in the dtype numpy's promotion gives the inputs: float64 for
    matterport's RPN targets (float64 anchors), float32 in `box_refinement`.
    """
    height = box[:, 2] - box[:, 0]
    width = box[:, 3] - box[:, 1]
    center_y = box[:, 0] + 0.5 * height
    center_x = box[:, 1] + 0.5 * width
    gt_height = gt_box[:, 2] - gt_box[:, 0]
    gt_width = gt_box[:, 3] - gt_box[:, 1]
    gt_center_y = gt_box[:, 0] + 0.5 * gt_height
    gt_center_x = gt_box[:, 1] + 0.5 * gt_width
    dy = (gt_center_y - center_y) / height
    dx = (gt_center_x - center_x) / width
    dh = np.log(gt_height / height)
    dw = np.log(gt_width / width)
    return np.stack([dy, dx, dh, dw], axis=1)


def box_refinement(box, gt_box):
    """Deltas [N, (dy, dx, log(dh), log(dw))] that turn `box` into `gt_box` (float32)."""
    return box_deltas(box.astype(np.float32), gt_box.astype(np.float32))


def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Anchors [N, (y1, x1, y2, x2)] (float64, pixels) for one feature map.

    scales: anchor side lengths; ratios: width/height ratios; shape: [h, w] of
    the feature map; feature_stride: its stride in pixels; anchor_stride: step
    between anchors in feature-map cells. Anchors are centred on
    cell * feature_stride; ordered by row, then column, then ratio-major
    (scale, ratio) combination.
    """
    scales, ratios = np.meshgrid(np.array(scales), np.array(ratios))
    scales = scales.flatten()
    ratios = ratios.flatten()
    heights = scales / np.sqrt(ratios)
    widths = scales * np.sqrt(ratios)

    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    shifts_x, shifts_y = np.meshgrid(shifts_x, shifts_y)

    box_widths, box_centers_x = np.meshgrid(widths, shifts_x)
    box_heights, box_centers_y = np.meshgrid(heights, shifts_y)
    box_centers = np.stack([box_centers_y, box_centers_x], axis=2).reshape([-1, 2])
    box_sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
    return np.concatenate([box_centers - 0.5 * box_sizes,
                           box_centers + 0.5 * box_sizes], axis=1)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """Anchors of every pyramid level, concatenated level by level (scale i at level i)."""
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i], anchor_stride)
        for i in range(len(scales))], axis=0)


def norm_boxes(boxes, shape):
    """Pixel boxes -> normalised float32 boxes, (y2, x2) made inclusive: (b - [0,0,1,1]) / (shape - 1)."""
    h, w = shape
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide((boxes - shift), scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Normalised boxes -> int32 pixel boxes (inverse of `norm_boxes`, rounded)."""
    h, w = shape
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


def unmold_boxes(boxes, window, image_shape, original_image_shape):
    """Normalised boxes [N, 4] of a molded image -> int32 pixel boxes of the original image.

    `window` (y1, x1, y2, x2, pixels) is where the original image lies in the
    molded one of `image_shape`; the boxes are shifted and scaled from that
    window to the whole original image of `original_image_shape` (matterport's
    `unmold_detections` arithmetic: float32 window and boxes, then `denorm_boxes`).
    """
    wy1, wx1, wy2, wx2 = norm_boxes(window, image_shape[:2])
    shift = np.array([wy1, wx1, wy1, wx1])
    wh, ww = wy2 - wy1, wx2 - wx1
    return denorm_boxes(np.divide(boxes - shift, np.array([wh, ww, wh, ww])),
                        original_image_shape[:2])


def apply_box_deltas_graph(boxes, deltas):
    """Apply (dy, dx, log(dh), log(dw)) refinements to boxes [..., 4]."""
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    center_y = boxes[..., 0] + 0.5 * height + deltas[..., 0] * height
    center_x = boxes[..., 1] + 0.5 * width + deltas[..., 1] * width
    height *= tf.exp(deltas[..., 2])
    width *= tf.exp(deltas[..., 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return tf.stack([y1, x1, y1 + height, x1 + width], axis=-1)


def clip_boxes_graph(boxes, window):
    """Clip boxes [..., 4] to window (y1, x1, y2, x2), which broadcasts
    against the boxes ([4] for all boxes, [B, 1, 4] for one per image)."""
    window = tf.cast(window, boxes.dtype)
    wy1, wx1, wy2, wx2 = (window[..., i:i + 1] for i in range(4))
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=-1)
    y1 = tf.maximum(tf.minimum(y1, wy2), wy1)
    x1 = tf.maximum(tf.minimum(x1, wx2), wx1)
    y2 = tf.maximum(tf.minimum(y2, wy2), wy1)
    x2 = tf.maximum(tf.minimum(x2, wx2), wx1)
    return tf.concat([y1, x1, y2, x2], axis=-1)


def box_refinement_graph(box, gt_box):
    """Deltas (dy, dx, log(dh), log(dw)) that turn `box` into `gt_box` ([..., 4])."""
    box = tf.cast(box, tf.float32)
    gt_box = tf.cast(gt_box, tf.float32)
    height = box[..., 2] - box[..., 0]
    width = box[..., 3] - box[..., 1]
    center_y = box[..., 0] + 0.5 * height
    center_x = box[..., 1] + 0.5 * width
    gt_height = gt_box[..., 2] - gt_box[..., 0]
    gt_width = gt_box[..., 3] - gt_box[..., 1]
    gt_center_y = gt_box[..., 0] + 0.5 * gt_height
    gt_center_x = gt_box[..., 1] + 0.5 * gt_width
    return tf.stack([(gt_center_y - center_y) / height,
                     (gt_center_x - center_x) / width,
                     tf.math.log(gt_height / height),
                     tf.math.log(gt_width / width)], axis=-1)


def _box_scale_shift(shape):
    """norm_boxes' scale (h - 1, w - 1, h - 1, w - 1) and shift, float64, for shape (height, width)."""
    h, w = tf.split(tf.cast(shape, tf.float64), 2, axis=-1)
    return tf.concat([h, w, h, w], axis=-1) - 1.0, tf.constant([0., 0., 1., 1.], tf.float64)


def norm_boxes_graph(boxes, shape):
    """`norm_boxes` on tensors: pixel boxes [..., 4] to normalised float32 ones; shape is
    one (height, width) for all boxes. Computed in float64 and rounded once to
    float32, as numpy does, so the bits are numpy's (for boxes with integer
    values, as pixel boxes are, float32 division would round the same)."""
    scale, shift = _box_scale_shift(shape)
    return tf.cast((tf.cast(boxes, tf.float64) - shift) / scale, tf.float32)


def denorm_boxes_graph(boxes, shape):
    """`denorm_boxes` on tensors: normalised boxes [..., 4] to int32 pixel boxes, in float64
    as numpy (boxes times the scale is exact there; in float32 it could round
    across a .5 and move a corner by one pixel)."""
    scale, shift = _box_scale_shift(shape)
    return tf.cast(tf.round(tf.cast(boxes, tf.float64) * scale + shift), tf.int32)


def unmold_boxes_graph(boxes, window, image_shape, original_image_shape):
    """`unmold_boxes` on tensors, with numpy's dtype at each step (so its bits):
    boxes [..., N, 4] float32, window [..., 4] (one per leading index), the
    molded and original (height, width) shared by all."""
    window = norm_boxes_graph(window, image_shape[:2])[..., None, :]
    corner = tf.concat([window[..., :2], window[..., :2]], axis=-1)
    size = window[..., 2:] - window[..., :2]
    boxes = (tf.cast(boxes, tf.float32) - corner) / tf.concat([size, size], axis=-1)
    return denorm_boxes_graph(boxes, original_image_shape[:2])


def overlaps_graph(boxes1, boxes2):
    """IoU matrix [..., N1, N2] between boxes1 [..., N1, 4] and boxes2 [..., N2, 4]."""
    b1 = tf.expand_dims(boxes1, -2)
    b2 = tf.expand_dims(boxes2, -3)
    y1 = tf.maximum(b1[..., 0], b2[..., 0])
    x1 = tf.maximum(b1[..., 1], b2[..., 1])
    y2 = tf.minimum(b1[..., 2], b2[..., 2])
    x2 = tf.minimum(b1[..., 3], b2[..., 3])
    intersection = tf.maximum(x2 - x1, 0) * tf.maximum(y2 - y1, 0)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return intersection / (area1 + area2 - intersection)


def _hashable(value):
    """Nested sequences and arrays as nested tuples of Python numbers (a cache key)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_hashable(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def anchor_params(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """The arguments of `generate_pyramid_anchors` as one hashable tuple, the
    key of the anchor caches (`normalized_anchors` takes it instead of a config)."""
    return (_hashable(scales), _hashable(ratios), _hashable(feature_shapes),
            _hashable(feature_strides), int(anchor_stride))


def _params(config_or_params, image_shape):
    """`anchor_params` of a config's pyramid for images of `image_shape`, or the given params."""
    if isinstance(config_or_params, tuple):
        return config_or_params
    config = config_or_params
    return anchor_params(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                         compute_backbone_shapes(config, image_shape), config.BACKBONE_STRIDES,
                         config.RPN_ANCHOR_STRIDE)


_ANCHOR_CACHE = {}  # (params,) -> pixel anchors; (params, (h, w)) -> normalised anchors


def _cached(key, make):
    """The read-only array cached under `key`, made by `make()` on first use."""
    if key not in _ANCHOR_CACHE:
        array = make()
        array.flags.writeable = False
        _ANCHOR_CACHE[key] = array
    return _ANCHOR_CACHE[key]


def compute_anchors(config_or_params, image_shape):
    """Anchors [N, (y1, x1, y2, x2)] (float64, pixels) for images of `image_shape`.

    `config_or_params`: a Config (its RPN_ANCHOR_* and BACKBONE_STRIDES, the
    backbone's feature shapes) or an `anchor_params` tuple. Cached per
    anchor parameters; the array is read-only because it is shared.
    """
    params = _params(config_or_params, image_shape)
    return _cached((params,), lambda: generate_pyramid_anchors(*params))


def normalized_anchors(config_or_params, image_shape):
    """`compute_anchors` normalised for images of `image_shape` (float32 [N, 4]):
    the graph's `input_anchors`. Cached and read-only, shared by
    `MaskRCNN.get_anchors`, the models' AnchorsLayer and the SavedModel export."""
    params = _params(config_or_params, image_shape)
    shape = tuple(int(d) for d in image_shape[:2])
    return _cached((params, shape),
                   lambda: norm_boxes(compute_anchors(params, image_shape), shape))

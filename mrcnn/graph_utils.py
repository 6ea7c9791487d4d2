"""TensorFlow helpers used inside the Mask R-CNN layers.

Boxes are (y1, x1, y2, x2). Every function works on real tensors (inside a
layer's `call`), never on Keras symbolic tensors. Where matterport's version
only took one image ([N, 4]), these accept any leading batch dimensions
([..., N, 4]) with identical results, so layers can work on whole batches.
"""

import keras
import tensorflow as tf


_REQUIRED = object()


def setting(value, config, attr, default=_REQUIRED):
    """`value` if given, else `config.<attr>`, else `default` (for settings
    matterport did not have): lets layers take matterport's `config=` argument
    yet serialise plain values in `get_config`."""
    if value is not None:
        return value
    if config is not None:
        return getattr(config, attr)
    if default is _REQUIRED:
        raise ValueError(f"Pass either config or {attr.lower()}.")
    return default


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
    h, w = tf.split(tf.cast(shape, tf.float32), 2, axis=-1)
    return tf.concat([h, w, h, w], axis=-1) - 1.0, tf.constant([0., 0., 1., 1.])


def norm_boxes_graph(boxes, shape):
    """Pixel boxes (y2, x2 exclusive) to normalised ones (inclusive);
    shape is (height, width)."""
    scale, shift = _box_scale_shift(shape)
    return (tf.cast(boxes, tf.float32) - shift) / scale


def denorm_boxes_graph(boxes, shape):
    """Normalised boxes to int32 pixel boxes (y2, x2 exclusive)."""
    scale, shift = _box_scale_shift(shape)
    return tf.cast(tf.round(boxes * scale + shift), tf.int32)


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


def trim_zeros_graph(boxes, name="trim_zeros"):
    """Drop all-zero (padding) rows of boxes [N, 4]; also return the row mask."""
    non_zeros = tf.cast(tf.reduce_sum(tf.abs(boxes), axis=1), tf.bool)
    return tf.boolean_mask(boxes, non_zeros, name=name), non_zeros


def batch_pack_graph(x, counts):
    """Concatenate the first counts[i] rows of x[i] for every image i.

    Vectorised form of matterport's per-image loop (which also took the
    batch size; it is read from `counts` here)."""
    return tf.boolean_mask(x, tf.sequence_mask(counts, tf.shape(x)[1]))


def smooth_l1_loss(y_true, y_pred):
    """Element-wise smooth-L1: 0.5 d^2 where |d| < 1, else |d| - 0.5."""
    diff = tf.abs(y_true - y_pred)
    less_than_one = tf.cast(diff < 1.0, diff.dtype)
    return less_than_one * 0.5 * diff ** 2 + (1 - less_than_one) * (diff - 0.5)


def parse_image_meta_graph(meta):
    """Split image metas [batch, meta length] (see `compose_image_meta`) into
    a dict of tensors: image_id, original_image_shape, image_shape, window
    (y1, x1, y2, x2 in pixels), scale, active_class_ids."""
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, 1:4],
        "image_shape": meta[:, 4:7],
        "window": meta[:, 7:11],
        "scale": meta[:, 11],
        "active_class_ids": meta[:, 12:],
    }


def mean_or_zero(x):
    """Mean of x, or 0 when x is empty (no NaN value or gradient)."""
    return tf.math.divide_no_nan(tf.reduce_sum(x), tf.cast(tf.size(x), x.dtype))


class GraphLayer(keras.layers.Layer):
    """Base of the weightless custom layers.

    They compute in float32 whatever the global dtype policy (box arithmetic
    needs it), and declare `supports_jit = False`: their dynamic shapes (NMS,
    tf.where, map_fn) do not compile with XLA, and Keras' default
    jit_compile="auto" would otherwise turn XLA on for the model on GPUs."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.supports_jit = False


class LossLayer(GraphLayer):
    """Base of the loss layers: computes `loss_graph(*inputs)` and returns it
    as a [1] tensor (one value per batch) so that it can be a model output.
    Subclasses set `loss_graph`."""

    loss_graph = None

    def call(self, inputs):
        return tf.reshape(self.loss_graph(*inputs), [1])

    def compute_output_shape(self, input_shape):
        return (1,)


def ranked_nms(boxes, keys, max_output_size, iou_threshold):
    """tf.image.non_max_suppression on each of a batch of box sets, all in
    one tf.image.combined_non_max_suppression.

    boxes [batch, N, 4]; keys [batch, N] float32: rank keys, distinct
    integers in [1, 2**24) (exact in float32), larger first; -1 for boxes
    that are not candidates. Combined NMS orders by score alone (equal scores
    in no defined order), so the caller encodes its order, ties included, in
    the keys and maps the returned keys back. IoU and the suppression test
    (IoU > iou_threshold) are non_max_suppression's.

    Returns the survivors' boxes [batch, max_output_size, 4] and keys
    [batch, max_output_size] (int32), by descending key, zero padded.
    One class with shared boxes (q = 1) is the form that tf2onnx converts.
    TF 2.21 has a CPU kernel only: on a GPU the op runs on the host.
    """
    out = tf.image.combined_non_max_suppression(
        boxes[:, :, tf.newaxis], keys[..., tf.newaxis], max_output_size, max_output_size,
        iou_threshold, score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    return out.nmsed_boxes, tf.cast(out.nmsed_scores, tf.int32)

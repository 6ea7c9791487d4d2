"""TensorFlow helpers shared by the layers: padding, packing, losses, NMS.

Every function works on real tensors (inside a layer's `call`), never on
Keras symbolic tensors.
"""

import tensorflow as tf

__all__ = [
    "trim_zeros_graph", "batch_pack_graph", "smooth_l1_loss", "global_mean", "mean_or_zero",
    "ranked_nms", "finite_boxes", "batch_slice",
]


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


def global_mean(total, count):
    """total / count over the global batch, as this replica's term of a mean over replicas.

    Under tf.distribute each replica holds part of the batch and of the entries
    a loss averages (positive anchors, positive RoIs, mask pixels: their number
    varies). The counts are summed across replicas and the value returned is
    replicas * total / global count, so the mean of the replicas' values (what
    Keras reports; what the summed gradients follow, train_step dividing by the
    replicas) is the mean over the global batch, as one device computes it. 0
    when the count is 0 (no NaN value or gradient). Outside a replica context
    or on one replica, total / count.
    """
    count = tf.cast(count, total.dtype)
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.math.divide_no_nan(total, count)
    replicas = context.num_replicas_in_sync
    return tf.math.divide_no_nan(total * replicas, context.all_reduce("SUM", count))


def mean_or_zero(x):
    """Mean of x over the global batch (`global_mean`), or 0 when x is empty."""
    return global_mean(tf.reduce_sum(x), tf.size(x))


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


def finite_boxes(boxes):
    """Boxes [..., 4] with every row that holds a NaN or an infinity set to 0 (as padding
    rows are), and the mask [...] of the rows that were finite. Broken or diverged weights
    give such boxes (NaN, inf or huge deltas), which crop_and_resize refuses."""
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
    return tf.where(finite[..., tf.newaxis], boxes, 0.0), finite


def batch_slice(inputs, graph_fn, batch_size, names=None):
    """Run `graph_fn` on each of `batch_size` slices of `inputs` and stack the results.

    For TF code written for one item; prefer vectorised ops in new code.
    """
    import tensorflow as tf

    if not isinstance(inputs, list):
        inputs = [inputs]
    outputs = []
    for i in range(batch_size):
        output_slice = graph_fn(*[x[i] for x in inputs])
        if not isinstance(output_slice, (tuple, list)):
            output_slice = [output_slice]
        outputs.append(output_slice)
    outputs = list(zip(*outputs))
    if names is None:
        names = [None] * len(outputs)
    result = [tf.stack(o, axis=0, name=n) for o, n in zip(outputs, names)]
    return result[0] if len(result) == 1 else result

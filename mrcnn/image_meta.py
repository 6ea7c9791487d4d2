"""The image meta vector: the per-image facts the graph needs, packed in one row.

`META_FIELDS` is the one statement of the layout; `meta_size`, the numpy
`compose_image_meta` / `parse_image_meta` and the TensorFlow
`compose_image_meta_graph` / `parse_image_meta_graph` all read it, and
`Config.IMAGE_META_SIZE` is `meta_size(NUM_CLASSES)`. TensorFlow is imported
only by `compose_image_meta_graph`, so `mrcnn.config` stays light.
"""

import numpy as np

__all__ = [
    "META_FIELDS", "meta_size", "compose_image_meta", "parse_image_meta",
    "compose_image_meta_graph", "parse_image_meta_graph",
]

# (name, length, numpy dtype `parse_image_meta` returns), in order. The last
# field has one 0/1 flag per class (length None: NUM_CLASSES).
META_FIELDS = (
    ("image_id", 1, np.int32),
    ("original_image_shape", 3, np.int32),  # [H, W, C] before resizing
    ("image_shape", 3, np.int32),  # [H, W, C] after resizing and padding
    ("window", 4, np.int32),  # (y1, x1, y2, x2) of the real image inside the padded one
    ("scale", 1, np.float32),
    ("active_class_ids", None, np.int32),  # 1 where the image's source has the class
)


def _field_indices():
    """{name: index} (a scalar index for length 1, else a slice), from META_FIELDS."""
    indices, start = {}, 0
    for name, length, _ in META_FIELDS:
        if length is None:
            indices[name] = slice(start, None)
        else:
            indices[name] = start if length == 1 else slice(start, start + length)
            start += length
    return indices, start


META_INDEX, _FIXED_SIZE = _field_indices()


def meta_size(num_classes):
    """Length of an image meta vector for `num_classes` classes (background included)."""
    return _FIXED_SIZE + num_classes


def _check_length(name, length, got):
    """ValueError unless a fixed-length field has its length (`got` None: unknown yet)."""
    if length is not None and length > 1 and got is not None and got != length:
        what = " [H, W, C]" if name.endswith("shape") else " (y1, x1, y2, x2)" if name == "window" else ""
        raise ValueError(f"image meta: {name} has {got} values; it needs {length}{what}.")


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Pack an image's attributes into one 1-D array of `meta_size(len(active_class_ids))`.

    The fields in `META_FIELDS` order: image_id, original [H, W, C], resized
    [H, W, C], window (y1, x1, y2, x2) of the real image inside the padded
    one, scale, and one 0/1 flag per class telling whether the image's
    source has that class. The dtype is numpy's for the values (float64 when
    the scale is a float), as matterport's.
    """
    values = (image_id, original_image_shape, image_shape, window, scale, active_class_ids)
    parts = []
    for (name, length, _), value in zip(META_FIELDS, values):
        if length == 1:
            parts.append(value)
        else:
            _check_length(name, length, len(value))
            parts.extend(value)
    return np.array(parts)


def parse_image_meta(meta):
    """Split image metas [batch, meta] (or one meta [meta]) into a dict of arrays
    (`META_FIELDS`' names and dtypes; image_id and scale lose the meta axis)."""
    meta = np.asarray(meta)
    return {name: meta[..., META_INDEX[name]].astype(dtype) for name, _, dtype in META_FIELDS}


def compose_image_meta_graph(image_id, original_image_shape, image_shape, window, scale,
                             active_class_ids, dtype="float32"):
    """`compose_image_meta` on tensors: metas [..., meta] of `dtype`.

    Each field is a tensor or array-like with the same leading dimensions
    [...] (image_id and scale have no field axis, the others end in their
    length); each is cast to `dtype` and the fields are concatenated in
    `META_FIELDS` order. With float64 the values are `compose_image_meta`'s.
    """
    import tensorflow as tf

    values = (image_id, original_image_shape, image_shape, window, scale, active_class_ids)
    parts = []
    for (name, length, _), value in zip(META_FIELDS, values):
        # numpy first: a Python float would become a float32 tensor before the cast.
        value = tf.cast(value if tf.is_tensor(value) else np.asarray(value), dtype)
        if length == 1:
            value = value[..., None]
        else:
            _check_length(name, length, value.shape[-1] if value.shape.rank else None)
        parts.append(value)
    return tf.concat(parts, axis=-1)


def parse_image_meta_graph(meta):
    """Split image metas [..., meta length] (see `compose_image_meta`) into
    a dict of tensors of the meta's dtype: image_id, original_image_shape,
    image_shape, window (y1, x1, y2, x2 in pixels), scale, active_class_ids."""
    return {name: meta[..., META_INDEX[name]] for name, _, _ in META_FIELDS}

"""The image meta vector: the per-image facts the graph needs, packed in one row."""

import numpy as np


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

"""RoIAlign sampling: matterport's crop_and_resize grid without its border cliff,
and the aligned (half-pixel) grid of detectron2's ROIAlignV2, as options.

Boxes are normalised (y1, x1, y2, x2). Two sample grids:

- aligned=False (matterport): per axis, M = size * sampling_ratio points evenly
  spaced from y1 * (H - 1) to y2 * (H - 1) in pixel-index coordinates, as
  `tf.image.crop_and_resize` places them. A sample outside [0, H - 1] reads 0,
  except within `BORDER_TOLERANCE` pixels of the map's edge: there float
  rounding of `y1 * (H - 1) + i * step` decides whether a box with y2 = 1.0
  reads its last row or zeros, so those samples read the border value. Every
  other sample is crop_and_resize's, bit for bit.
- aligned=True (detectron2's ROIAlignV2, the paper's RoIAlign): the box covers
  y1 * H .. y2 * H in continuous coordinates (pixel i spans [i, i + 1)); it is
  split into `size` bins, each sampled at sampling_ratio x sampling_ratio
  sub-bin centres shifted by -0.5 pixel; a sample within one pixel outside the
  map reads the nearest border value, one further out reads 0.

With sampling_ratio r > 1 the r x r samples of each output bin are averaged.
"""

import tensorflow as tf

__all__ = [
    "BORDER_TOLERANCE", "roi_align",
]

# Pixels beyond the map's edge that still count as on it (aligned=False): far
# above float32 rounding of sample positions (~1e-5 px on a 1024-px map), far
# below any real overhang.
BORDER_TOLERANCE = 1e-3


def roi_align(image, boxes, box_indices, crop_size, aligned=False, sampling_ratio=1):
    """Pooled features [K, crop_h, crop_w, C] (float32) of `boxes` [K, 4] on
    `image` [N, H, W, C], box k read from image box_indices[k]."""
    r = int(sampling_ratio)
    size = (int(crop_size[0]) * r, int(crop_size[1]) * r)
    image = tf.cast(image, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    sample = _aligned_samples if aligned else _corner_samples
    pooled = sample(image, boxes, box_indices, size)
    if r > 1:
        pooled = tf.nn.avg_pool2d(pooled, r, r, "VALID")
    return pooled


def _replicate_border(image):
    """`image` with its first and last rows and columns repeated once, and the
    map from normalised boxes on `image` to normalised boxes on the result."""
    padded = tf.pad(image, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="SYMMETRIC")
    height, width = _extent(image)
    scale = tf.stack([height - 1, width - 1, height - 1, width - 1])
    extent = tf.stack([height + 1, width + 1, height + 1, width + 1])
    return padded, lambda index_boxes: (index_boxes + 1.0) / extent, scale


def _extent(image):
    shape = tf.shape(image)
    return tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)


def _aligned_samples(image, boxes, box_indices, size):
    """Samples at the centres of size[0] x size[1] equal cells of each box,
    -0.5 px, with detectron2's border rule (see the module docstring)."""
    height, width = _extent(image)
    padded, to_padded, _ = _replicate_border(image)
    extent = tf.stack([height, width, height, width])
    start, end = tf.split(boxes * extent - 0.5, 2, axis=1)   # (y, x) in pixel-index coordinates
    half_step = (end - start) / tf.constant([2.0 * size[0], 2.0 * size[1]])
    first, last = start + half_step, end - half_step
    return tf.image.crop_and_resize(padded, to_padded(tf.concat([first, last], 1)),
                                    box_indices, size, method="bilinear")


def _corner_samples(image, boxes, box_indices, size):
    """crop_and_resize's samples; the few that fall just outside the map by
    rounding are re-read from a border-replicated copy (see the module docstring)."""
    pooled = tf.image.crop_and_resize(image, boxes, box_indices, size, method="bilinear",
                                      extrapolation_value=float("nan"))
    outside = tf.math.is_nan(pooled)
    redo = tf.where(tf.reduce_any(outside, axis=[1, 2, 3]))[:, 0]

    def fix():
        padded, to_padded, scale = _replicate_border(image)
        sub_boxes = tf.gather(boxes, redo)
        index_boxes = sub_boxes * scale
        border = tf.image.crop_and_resize(padded, to_padded(index_boxes),
                                          tf.gather(box_indices, redo), size, method="bilinear")
        height, width = _extent(image)
        near_y = _near_map(index_boxes[:, 0], index_boxes[:, 2], size[0], height)
        near_x = _near_map(index_boxes[:, 1], index_boxes[:, 3], size[1], width)
        near = tf.logical_and(near_y[:, :, None], near_x[:, None, :])[..., None]
        sub = tf.gather(pooled, redo)
        sub = tf.where(tf.math.is_nan(sub), tf.where(near, border, 0.0), sub)
        return tf.tensor_scatter_nd_update(pooled, redo[:, None], sub)

    return tf.cond(tf.size(redo) > 0, fix, lambda: pooled)


def _near_map(start, end, count, extent):
    """[K, count]: whether crop_and_resize's samples from `start` to `end`
    (pixel-index coordinates) lie within BORDER_TOLERANCE of [0, extent - 1]."""
    if count > 1:
        steps = tf.range(count, dtype=tf.float32) * ((end - start) / (count - 1))[:, None]
        positions = start[:, None] + steps
    else:
        positions = (0.5 * (start + end))[:, None]
    return tf.logical_and(positions >= -BORDER_TOLERANCE,
                          positions <= extent - 1 + BORDER_TOLERANCE)

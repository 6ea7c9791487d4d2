"""Export an inference model as a SavedModel that serves whole images.

The exported graph does what `MaskRCNN.detect` does around the Keras model:
resize (IMAGE_RESIZE_MODE "square"), pad, subtract MEAN_PIXEL, compose the
image meta, run the network with the anchors of the IMAGE_MAX_DIM²
molded image (one constant: in "square" mode every molded image has that
size), then unmold: drop padding rows, shift and scale boxes back to
original pixels, drop boxes of zero area, paste each mask thresholded at 0.5.

Resizing (of the image, and of each 28x28 mask to its box) repeats
`utils.resize` (scikit-image's bilinear resize: half-pixel grid, zero outside
the input, clipped to the input's range) operation for operation in float64,
so molded images and pasted masks are bit for bit those of `detect()`.
(`tf.image.resize` clamps at the edges instead of fading to zero; its masks
differ from matterport's along the borders.)

The SavedModel needs only TensorFlow (`tf.saved_model.load`). Signatures,
one image per call:
  serving_default(image: uint8 [H, W, 3])
  serving_bytes(image_bytes: string [], a JPEG/PNG/BMP/GIF file's bytes;
                grayscale is repeated to RGB, alpha dropped)
both returning rois int32 [N, (y1, x1, y2, x2)] in original pixels,
class_ids int32 [N], scores float32 [N] and masks bool [H, W, N].
(TensorFlow decodes 16-bit PNGs to 8 bits as x >> 8; detect() rounds
x * 255 / 65535, which can be one level higher.)
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from mrcnn import files
from mrcnn.geometry import normalized_anchors, unmold_boxes_graph
from mrcnn.image_meta import compose_image_meta_graph
from mrcnn.mask_rcnn import inputs_in_order, outputs_by_name

__all__ = [
    "resize_like_skimage", "ServingModule", "export_saved_model",
]


def _axis_weights(out_size, in_size):
    """For each output position along one axis: the index of its first source
    pixel in the input padded by one zero pixel, and the two linear weights."""
    o = tf.cast(tf.range(out_size), tf.float64)
    c = (o + 0.5) * (tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)) - 0.5
    i0 = tf.floor(c)
    y = c - i0
    return tf.cast(i0, tf.int32) + 1, 1.0 - y, y


def resize_like_skimage(x, out_h, out_w):
    """`utils.resize(x, (out_h, out_w))` (order 1, mode "constant", clip) for a
    float64 tensor [h, w] or [h, w, C], with scipy's rounding order."""
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    extra = [[0, 0]] * (len(x.shape) - 2)
    padded = tf.pad(x, [[1, 1], [1, 1]] + extra)
    iy, wy0, wy1 = _axis_weights(out_h, h)
    ix, wx0, wx1 = _axis_weights(out_w, w)
    rows = [tf.gather(padded, iy + d, axis=0) for d in (0, 1)]
    shape_y, shape_x = [-1, 1] + [1] * len(extra), [1, -1] + [1] * len(extra)
    wy = [tf.reshape(v, shape_y) for v in (wy0, wy1)]
    wx = [tf.reshape(v, shape_x) for v in (wx0, wx1)]
    # scipy sums (v * wy) * wx over the four neighbours, in this order. In a graph, Grappler's
    # arithmetic optimizer regroups such sums of products (factoring out shared weights), which
    # rounds differently; check_numerics after each product (the identity for finite values, and
    # an Identity for tf2onnx) keeps every product as written.
    total = None
    for dy in (0, 1):
        for dx in (0, 1):
            term = tf.debugging.check_numerics(tf.gather(rows[dy], ix + dx, axis=1) * wy[dy], "resize")
            term = tf.debugging.check_numerics(term * wx[dx], "resize")
            total = term if total is None else total + term
    return tf.clip_by_value(total, tf.reduce_min(x), tf.reduce_max(x))


class ServingModule(tf.Module):
    """The exported module: the Keras inference model plus molding and unmolding."""

    def __init__(self, keras_model, config):
        super().__init__(name="mrcnn_serving")
        self.keras_model = keras_model
        self._dim = int(config.IMAGE_MAX_DIM)
        self._min_dim = float(config.IMAGE_MIN_DIM or 0)
        self._min_scale = float(config.IMAGE_MIN_SCALE or 0)
        self._mean = np.asarray(config.MEAN_PIXEL, np.float64)
        self._num_classes = int(config.NUM_CLASSES)
        self._anchors = normalized_anchors(config, (self._dim, self._dim))[None]

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
    def detect_image(self, image):
        return self._detect(image)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image_bytes")])
    def detect_bytes(self, image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
        return self.detect_image(image)

    def _mold(self, image):
        """`mold_inputs` for one image: molded float32 [D, D, 3], meta, window, scale."""
        tf.debugging.assert_positive(tf.size(image), message="the image is empty (0 pixels)")
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
        dim = tf.constant(self._dim, tf.float64)
        scale = tf.maximum(tf.constant(1.0, tf.float64), self._min_dim / tf.minimum(hf, wf))
        scale = tf.maximum(scale, self._min_scale)
        image_max = tf.maximum(hf, wf)
        scale = tf.where(tf.round(image_max * scale) > dim, dim / image_max, scale)
        new_h = tf.cast(tf.round(hf * scale), tf.int32)
        new_w = tf.cast(tf.round(wf * scale), tf.int32)
        # resize_image casts back to uint8 (truncation), then mold_image subtracts the mean.
        resized = tf.floor(resize_like_skimage(tf.cast(image, tf.float64), new_h, new_w))
        top, left = (self._dim - new_h) // 2, (self._dim - new_w) // 2
        padded = tf.pad(resized, [[top, self._dim - new_h - top], [left, self._dim - new_w - left], [0, 0]])
        molded = tf.cast(padded - self._mean, tf.float32)
        molded = tf.ensure_shape(molded, [self._dim, self._dim, 3])
        window = tf.stack([top, left, new_h + top, new_w + left])
        meta = compose_image_meta_graph(0, tf.stack([h, w, 3]), [self._dim, self._dim, 3], window,
                                        scale, tf.zeros([self._num_classes]))
        return molded, meta, window

    def _detect(self, image):
        molded, meta, window = self._mold(image)
        named = {"input_image": molded[None], "input_image_meta": meta[None],
                 "input_anchors": tf.constant(self._anchors)}
        outputs = outputs_by_name(self.keras_model, self.keras_model(
            inputs_in_order(self.keras_model, named), training=False))
        detections, mrcnn_mask = outputs["mrcnn_detection"][0], outputs["mrcnn_mask"][0]
        return self._unmold(detections, mrcnn_mask, tf.shape(image)[0], tf.shape(image)[1], window)

    def _unmold(self, detections, mrcnn_mask, height, width, window):
        """`unmold_detections` in the graph, with numpy's dtypes at each step."""
        is_pad = tf.equal(detections[:, 4], 0)
        n = tf.where(tf.reduce_any(is_pad), tf.argmax(tf.cast(is_pad, tf.int32), output_type=tf.int32),
                     tf.shape(detections)[0])
        detections, mrcnn_mask = detections[:n], mrcnn_mask[:n]
        class_ids = tf.cast(detections[:, 4], tf.int32)
        scores = detections[:, 5]
        masks = tf.gather(tf.transpose(mrcnn_mask, [0, 3, 1, 2]), class_ids, axis=1, batch_dims=1)

        boxes = unmold_boxes_graph(detections[:, :4], window, (self._dim, self._dim),
                                   tf.stack([height, width]))

        keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
        boxes, class_ids = tf.boolean_mask(boxes, keep), tf.boolean_mask(class_ids, keep)
        scores, masks = tf.boolean_mask(scores, keep), tf.boolean_mask(masks, keep)
        full = tf.cond(tf.shape(boxes)[0] > 0,
                       lambda: tf.map_fn(lambda a: _paste_mask(a[0], a[1], height, width), (masks, boxes),
                                         fn_output_signature=tf.TensorSpec([None, None], tf.bool)),
                       lambda: tf.zeros([0, height, width], tf.bool))
        return {"rois": boxes, "class_ids": class_ids, "scores": scores,
                "masks": tf.transpose(full, [1, 2, 0])}


def _paste_mask(mask, box, height, width):
    """`utils.unmold_mask`: the float mask resized to the box, >= 0.5, in an [height, width] frame."""
    y1, x1, y2, x2 = box[0], box[1], box[2], box[3]
    # scikit-image resizes a float32 mask in float64 and returns float32.
    resized = tf.cast(resize_like_skimage(tf.cast(mask, tf.float64), y2 - y1, x2 - x1), tf.float32)
    return tf.pad(resized >= 0.5, [[y1, height - y2], [x1, width - x2]])


def export_saved_model(model, path, overwrite=False):
    """Write `model` (a `MaskRCNN` in inference mode) as a SavedModel folder at `path`; returns `path`.

    See the module docstring for the signatures. Only IMAGE_RESIZE_MODE
    "square" and 3-channel configs export. `path` must not exist, or be an
    empty folder; `overwrite=True` replaces what is there. The export is
    written to a temporary folder beside `path` and renamed into place, so a
    failed export leaves nothing behind.
    """
    if getattr(model, "mode", None) != "inference":
        raise ValueError("export_saved_model() needs a MaskRCNN created with mode='inference'; "
                         "load the trained weights into one: MaskRCNN('inference', config, "
                         "model_dir).load_weights(path, by_name=True).")
    config = model.config
    if config.IMAGE_RESIZE_MODE != "square":
        raise ValueError(f"export_saved_model(): IMAGE_RESIZE_MODE is {config.IMAGE_RESIZE_MODE!r}; "
                         "only 'square' exports (every molded image is IMAGE_MAX_DIM square, so one "
                         "set of anchors fits). Set IMAGE_RESIZE_MODE = 'square' in the inference config.")
    if config.IMAGE_CHANNEL_COUNT != 3:
        raise ValueError(f"export_saved_model(): IMAGE_CHANNEL_COUNT is {config.IMAGE_CHANNEL_COUNT}; "
                         "the serving signatures take RGB images, so only 3-channel models export.")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"export_saved_model(): {path!r} exists and is not an empty folder; "
                         "choose a new path, or pass overwrite=True to replace it.")
    module = ServingModule(model.keras_model, config)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures={
            "serving_default": module.detect_image.get_concrete_function(),
            "serving_bytes": module.detect_bytes.get_concrete_function()})
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        files.apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path

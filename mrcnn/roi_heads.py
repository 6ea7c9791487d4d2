"""Second stage: RoI sampling, RoIAlign, classifier/box and mask heads,
detection post-processing, and the head losses."""

from typing import ClassVar

import keras
import tensorflow as tf

from mrcnn.base_layers import BatchNorm, GraphLayer, LossLayer, bn_training, is_symbolic
from mrcnn.config import DETECTION_CLASS_MODES
from mrcnn.geometry import (apply_box_deltas_graph, box_refinement_graph, clip_boxes_graph, norm_boxes_graph,
                            overlaps_graph)
from mrcnn.image_meta import parse_image_meta_graph
from mrcnn.tf_ops import finite_boxes, global_mean, mean_or_zero, ranked_nms, smooth_l1_loss
from mrcnn.roi_align import roi_align

__all__ = [
    "PyramidROIAlign", "RoIDistributed", "UsedRows", "fpn_classifier_graph",
    "build_fpn_mask_graph", "DetectionTargetLayer", "DetectionLayer", "DetectionBoxes",
    "DetectionClassIds", "LeadingRows", "mrcnn_class_loss_graph", "mrcnn_bbox_loss_graph",
    "mrcnn_mask_loss_graph", "MrcnnClassLoss", "MrcnnBboxLoss", "MrcnnMaskLoss",
]


def _static_or_dynamic_shape(x):
    """x's shape as a list: static dims as ints, unknown ones as scalar tensors."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]


############################################################
#  RoIAlign
############################################################

@keras.saving.register_keras_serializable(package="mrcnn")
class PyramidROIAlign(GraphLayer):
    """RoIAlign over the feature pyramid.

    Each box goes to level k = 4 + round(log2(sqrt(h*w) / (224/sqrt(image
    area)))), clipped to [2, 5], with h, w normalised (matterport's
    adaptation of FPN eq. 1; `round` is TF's half-to-even), and is pooled
    from P_k by `roi_align.roi_align`: by default matterport's
    crop_and_resize grid (one bilinear sample per bin) whose samples on the
    map's edge read the edge instead of 0; `aligned` and `sampling_ratio`
    (ROI_ALIGN_ALIGNED, ROI_ALIGN_SAMPLING_RATIO) select detectron2's grid.
    Zero-size (padding) and NaN boxes go to P2. No gradient flows to the boxes.

    Inputs: boxes [batch, num_boxes, (y1, x1, y2, x2)] normalised,
    image_meta [batch, meta] (the first image's shape is used for all),
    then the feature maps P2..P5 [batch, height, width, channels].
    Output: [batch, num_boxes, pool_height, pool_width, channels].
    """

    CONFIG_ATTRIBUTES: ClassVar[dict] = {
        "aligned": "ROI_ALIGN_ALIGNED",
        "sampling_ratio": "ROI_ALIGN_SAMPLING_RATIO",
    }

    def __init__(self, pool_shape, aligned=False, sampling_ratio=1, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(s) for s in pool_shape)
        self.aligned = bool(aligned)
        self.sampling_ratio = int(sampling_ratio)

    def call(self, inputs):
        boxes = tf.stop_gradient(tf.cast(inputs[0], tf.float32))
        image_meta, feature_maps = inputs[1], inputs[2:]
        shape = _static_or_dynamic_shape(boxes)
        num_boxes = shape[1]

        h = boxes[..., 2] - boxes[..., 0]
        w = boxes[..., 3] - boxes[..., 1]
        image_shape = tf.cast(parse_image_meta_graph(image_meta)["image_shape"][0], tf.float32)
        image_area = image_shape[0] * image_shape[1]
        roi_level = tf.math.log(tf.sqrt(h * w) / (224.0 / tf.sqrt(image_area))) / tf.math.log(2.0)
        # Clipping before the cast keeps log2(0) = -inf (padding) well defined;
        # a NaN box (diverged training) goes to P2 rather than nowhere.
        roi_level = tf.clip_by_value(4.0 + tf.round(roi_level), 2.0, 5.0)
        roi_level = tf.cast(tf.where(tf.math.is_nan(roi_level), 2.0, roi_level), tf.int32)

        flat_boxes = tf.reshape(boxes, [-1, 4])
        flat_levels = tf.reshape(roi_level, [-1])
        pooled, order = [], []
        for level, feature_map in zip(range(2, 6), feature_maps):
            ix = tf.cast(tf.where(tf.equal(flat_levels, level))[:, 0], tf.int32)
            pooled.append(roi_align(feature_map, tf.gather(flat_boxes, ix), ix // num_boxes,
                                    self.pool_shape, self.aligned, self.sampling_ratio))
            order.append(ix)
        # Row i of the concatenation is box order[i]: invert to restore box order.
        pooled = tf.gather(tf.concat(pooled, 0), tf.math.invert_permutation(tf.concat(order, 0)))
        return tf.reshape(pooled, [-1, num_boxes, *self.pool_shape, pooled.shape[-1]])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:2]) + self.pool_shape + (input_shape[2][-1],)

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape),
                "aligned": self.aligned, "sampling_ratio": self.sampling_ratio}


@keras.saving.register_keras_serializable(package="mrcnn")
class RoIDistributed(keras.layers.Wrapper):
    """Applies a layer to every RoI: [batch, rois, ...] is merged to
    [batch * rois, ...], the layer runs once, and the result is split back.

    Stands in for matterport's TimeDistributed (same layer names, same
    weights, BatchNorm statistics over all RoIs of the batch as in Keras 2);
    Keras 3's TimeDistributed loops over a static RoI axis in Python and
    mis-handles a dynamic one. Wired with `training=False`, a wrapped
    BatchNorm is frozen (see `BatchNorm`).

    With `scatter`, the inputs are [rows, row_ids]: `rows` [1, n, ...] are
    the used rows of row_ids [batch, rois] as `UsedRows` gathers them, and
    the output [batch, rois, ...] holds each result in its row, 0 elsewhere.
    """

    def __init__(self, layer, scatter=False, **kwargs):
        super().__init__(layer, **kwargs)
        self.scatter = bool(scatter)

    def build(self, input_shape):
        if not self.layer.built:  # deserialisation builds it beforehand
            shape = input_shape[0] if self.scatter else input_shape
            self.layer.build((None,) + tuple(shape[2:]))
        self.built = True

    def __call__(self, inputs, *args, **kwargs):
        if (kwargs.get("training") is False and is_symbolic(inputs)
                and isinstance(self.layer, BatchNorm)):
            self.layer.frozen = True
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        x = inputs[0] if self.scatter else inputs
        shape = _static_or_dynamic_shape(x)
        outputs = self.layer(tf.reshape(x, [-1] + shape[2:]), training=training)
        if self.scatter:
            used = _used_rows(inputs[1])
            out_shape = tf.concat([tf.shape(used, out_type=tf.int64),
                                   tf.shape(outputs, out_type=tf.int64)[1:]], 0)
            return tf.scatter_nd(tf.where(used), outputs, out_shape)
        return tf.reshape(outputs, shape[:2] + _static_or_dynamic_shape(outputs)[1:])

    def compute_output_shape(self, input_shape):
        if self.scatter:
            inner = self.layer.compute_output_shape((None,) + tuple(input_shape[0][2:]))
            return tuple(input_shape[1][:2]) + tuple(inner[1:])
        inner = self.layer.compute_output_shape((None,) + tuple(input_shape[2:]))
        return tuple(input_shape[:2]) + tuple(inner[1:])

    def get_config(self):
        return {**super().get_config(), "scatter": self.scatter}


def _per_roi(layer, scatter=False):
    """`layer` wrapped in RoIDistributed under the same name and dtype policy."""
    return RoIDistributed(layer, scatter=scatter, name=layer.name, dtype=layer.dtype_policy)


def _used_rows(row_ids):
    """Rows [batch, rois] with an id > 0; the first row when there is none, so that the
    layers always see a row (an empty batch would give BatchNorm NaN statistics)."""
    used = tf.cast(row_ids, tf.float32) > 0
    first = tf.reshape(tf.equal(tf.range(tf.size(used)), 0), tf.shape(used))
    return tf.logical_or(used, tf.logical_and(tf.logical_not(tf.reduce_any(used)), first))


@keras.saving.register_keras_serializable(package="mrcnn")
class UsedRows(GraphLayer):
    """The rows of x [batch, rois, ...] whose row_ids [batch, rois] are > 0 (the
    positives in training, the detections in inference; the first row if none),
    image by image in row order, as one batch of n rows [1, n, ...]."""

    def call(self, inputs):
        x, row_ids = inputs
        return tf.gather_nd(x, tf.where(_used_rows(row_ids)))[tf.newaxis]

    def compute_output_shape(self, input_shape):
        return (1, None) + tuple(input_shape[0][2:])


############################################################
#  Heads
############################################################

def fpn_classifier_graph(rois, feature_maps, image_meta, pool_size, num_classes,
                         train_bn=True, fc_layers_size=1024, aligned=False, sampling_ratio=1):
    """Classifier and box-regression head on the RoIs.

    rois: [batch, num_rois, 4] normalised; feature_maps: [P2, P3, P4, P5].
    Two `fc_layers_size` "FC" layers written as convolutions (pool_size x
    pool_size, then 1x1), each with BatchNorm and ReLU.
    Returns mrcnn_class_logits [batch, num_rois, num_classes], mrcnn_probs
    (softmax) and mrcnn_bbox [batch, num_rois, num_classes, (dy, dx, log(dh),
    log(dw))]. `aligned`, `sampling_ratio`: see PyramidROIAlign.
    """
    training = bn_training(train_bn)
    x = PyramidROIAlign([pool_size, pool_size], aligned, sampling_ratio,
                        name="roi_align_classifier")(
        [rois, image_meta] + list(feature_maps))
    x = _per_roi(keras.layers.Conv2D(fc_layers_size, (pool_size, pool_size), padding="valid",
                                     name="mrcnn_class_conv1"))(x)
    x = _per_roi(BatchNorm(name="mrcnn_class_bn1"))(x, training=training)
    x = keras.layers.Activation("relu")(x)
    x = _per_roi(keras.layers.Conv2D(fc_layers_size, (1, 1), name="mrcnn_class_conv2"))(x)
    x = _per_roi(BatchNorm(name="mrcnn_class_bn2"))(x, training=training)
    x = keras.layers.Activation("relu")(x)
    num_rois = x.shape[1] if x.shape[1] is not None else -1
    shared = keras.layers.Reshape((num_rois, fc_layers_size), name="pool_squeeze")(x)

    mrcnn_class_logits = keras.layers.Dense(num_classes, name="mrcnn_class_logits",
                                            dtype="float32")(shared)
    mrcnn_probs = keras.layers.Activation("softmax", name="mrcnn_class",
                                          dtype="float32")(mrcnn_class_logits)
    x = keras.layers.Dense(num_classes * 4, activation="linear", name="mrcnn_bbox_fc",
                             dtype="float32")(shared)
    mrcnn_bbox = keras.layers.Reshape((num_rois, num_classes, 4), name="mrcnn_bbox",
                                      dtype="float32")(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


def build_fpn_mask_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True,
                         aligned=False, sampling_ratio=1, row_ids=None):
    """Mask head on the RoIs: four 3x3 conv + BN + ReLU, a 2x2 stride-2
    deconvolution and a 1x1 sigmoid conv per class.

    Returns masks [batch, num_rois, 2*pool_size, 2*pool_size, num_classes].
    `aligned`, `sampling_ratio`: see PyramidROIAlign.

    With row_ids [batch, num_rois], the layers after RoIAlign run only on the
    rows whose id is > 0 (see `UsedRows`) and the other rows are 0: the graphs
    pass the positives' class ids in training, the detections' in inference,
    the only masks that are used. With frozen BatchNorm (TRAIN_BN False),
    losses and gradients are those of running it on every RoI; with trained
    BatchNorm its batch statistics come from the positives only (as in
    torchvision and detectron2), no longer from all TRAIN_ROIS_PER_IMAGE
    RoIs as in matterport.
    """
    training = bn_training(train_bn)
    x = PyramidROIAlign([pool_size, pool_size], aligned, sampling_ratio, name="roi_align_mask")(
        [rois, image_meta] + list(feature_maps))
    if row_ids is not None:
        x = UsedRows(name="mask_used_rows")([x, row_ids])
    for i in range(1, 5):
        x = _per_roi(keras.layers.Conv2D(256, (3, 3), padding="same",
                                         name=f"mrcnn_mask_conv{i}"))(x)
        x = _per_roi(BatchNorm(name=f"mrcnn_mask_bn{i}"))(x, training=training)
        x = keras.layers.Activation("relu")(x)
    x = _per_roi(keras.layers.Conv2DTranspose(256, (2, 2), strides=2, activation="relu",
                                              name="mrcnn_mask_deconv"))(x)
    mask = keras.layers.Conv2D(num_classes, (1, 1), strides=1, activation="sigmoid",
                               name="mrcnn_mask", dtype="float32")
    if row_ids is None:
        return _per_roi(mask)(x)
    return _per_roi(mask, scatter=True)([x, row_ids])


############################################################
#  Detection targets (training)
############################################################

@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionTargetLayer(GraphLayer):
    """Samples RoIs from the proposals and builds their training targets.

    Per image (matterport's detection_targets_graph): all-zero rows (padding)
    of the proposals and GT boxes are ignored; GT with a negative class id are
    crowds: they are no target, and proposals overlapping any crowd
    (IoU >= 0.001) are not used as negatives; GT with class 0 are ignored.
    Positives have IoU >= 0.5 with a GT box, at most
    int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO) picked at random; negatives
    (IoU < 0.5) are added to keep that ratio (none if there is no positive, as
    in matterport). Box targets are the refinements to the best-overlapping GT
    box (the first on ties) divided by BBOX_STD_DEV; mask targets are that
    GT's (mini-)mask cropped to the RoI and resized to MASK_SHAPE by
    `roi_align.roi_align` with the heads' ROI_ALIGN_ALIGNED and
    ROI_ALIGN_SAMPLING_RATIO (matterport: crop_and_resize), then rounded to 0/1.

    Vectorised over the batch (masked, static-shaped tensors; one roi_align
    call for all mask targets). The random sample: one `tf.random.uniform` key
    per proposal per call (seeded by the global seed); the positives are the
    candidates with the highest keys (`top_k`), in descending key order, and
    so are the negatives: a uniformly random subset in random order, as
    matterport's shuffle and slice.

    Inputs: proposals [batch, N, 4] (normalised, zero padded),
    gt_class_ids [batch, MAX_GT] int, gt_boxes [batch, MAX_GT, 4] normalised,
    gt_masks [batch, height, width, MAX_GT] bool (or 0/1 integers: Keras
    cannot split bool batches across tf.distribute replicas).
    Outputs, zero padded to TRAIN_ROIS_PER_IMAGE (positives first):
    rois [batch, T, 4], target_class_ids [batch, T] int32,
    target_bbox [batch, T, 4], target_mask [batch, T, MASK_SHAPE[0], MASK_SHAPE[1]],
    all constants for the gradient.
    """

    CONFIG_ATTRIBUTES: ClassVar[dict] = {
        "train_rois_per_image": "TRAIN_ROIS_PER_IMAGE",
        "roi_positive_ratio": "ROI_POSITIVE_RATIO",
        "bbox_std_dev": "BBOX_STD_DEV",
        "use_mini_mask": "USE_MINI_MASK",
        "mask_shape": "MASK_SHAPE",
        "roi_align_aligned": "ROI_ALIGN_ALIGNED",
        "roi_align_sampling_ratio": "ROI_ALIGN_SAMPLING_RATIO",
    }
    SETTING_DEFAULTS: ClassVar[dict] = {"roi_align_aligned": False, "roi_align_sampling_ratio": 1}

    def __init__(self, config=None, train_rois_per_image=None, roi_positive_ratio=None,
                 bbox_std_dev=None, use_mini_mask=None, mask_shape=None, roi_align_aligned=None,
                 roi_align_sampling_ratio=None, **kwargs):
        super().__init__(**kwargs)
        values = self.settings(config, train_rois_per_image=train_rois_per_image,
                               roi_positive_ratio=roi_positive_ratio, bbox_std_dev=bbox_std_dev,
                               use_mini_mask=use_mini_mask, mask_shape=mask_shape,
                               roi_align_aligned=roi_align_aligned,
                               roi_align_sampling_ratio=roi_align_sampling_ratio)
        self.train_rois_per_image = int(values["train_rois_per_image"])
        self.roi_positive_ratio = float(values["roi_positive_ratio"])
        self.bbox_std_dev = [float(v) for v in values["bbox_std_dev"]]
        self.use_mini_mask = bool(values["use_mini_mask"])
        self.mask_shape = [int(v) for v in values["mask_shape"]]
        self.roi_align_aligned = bool(values["roi_align_aligned"])
        self.roi_align_sampling_ratio = int(values["roi_align_sampling_ratio"])

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        keys = tf.random.uniform(tf.shape(proposals)[:2], dtype=tf.float32)
        return self._targets(proposals, gt_class_ids, gt_boxes, gt_masks, keys)

    def _targets(self, proposals, gt_class_ids, gt_boxes, gt_masks, keys):
        """The outputs of `call` for the sampling keys [batch, N] in [0, 1):
        of the candidates, those with the highest keys are taken."""
        t = self.train_rois_per_image
        p = min(int(t * self.roi_positive_ratio), t)
        proposals = tf.cast(proposals, tf.float32)
        gt_class_ids = tf.cast(gt_class_ids, tf.int32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_masks = tf.cast(gt_masks, tf.bool)
        keys = tf.cast(keys, tf.float32)
        # At least T proposal rows (top_k's k) and one GT column (argmax, the
        # gathers); the added rows and columns are zero, i.e. padding.
        more_n = tf.maximum(t - tf.shape(proposals)[1], 0)
        more_g = tf.maximum(1 - tf.shape(gt_boxes)[1], 0)
        proposals = tf.pad(proposals, [(0, 0), (0, more_n), (0, 0)])
        keys = tf.pad(keys, [(0, 0), (0, more_n)])
        gt_class_ids = tf.pad(gt_class_ids, [(0, 0), (0, more_g)])
        gt_boxes = tf.pad(gt_boxes, [(0, 0), (0, more_g), (0, 0)])
        gt_masks = tf.pad(gt_masks, [(0, 0), (0, 0), (0, 0), (0, more_g)])

        valid = tf.cast(tf.reduce_sum(tf.abs(proposals), axis=2), tf.bool)      # [B, N]
        gt_valid = tf.cast(tf.reduce_sum(tf.abs(gt_boxes), axis=2), tf.bool)    # [B, G]
        objects = tf.logical_and(gt_valid, gt_class_ids > 0)
        crowds = tf.logical_and(gt_valid, gt_class_ids < 0)
        overlaps = overlaps_graph(proposals, gt_boxes)                          # [B, N, G]
        iou = tf.where(objects[:, None, :], overlaps, -1.0)
        crowd_iou = tf.where(crowds[:, None, :], overlaps, -1.0)
        roi_iou_max = tf.reduce_max(iou, axis=2)
        no_crowd = tf.reduce_max(crowd_iou, axis=2) < 0.001
        positive = tf.logical_and(valid, roi_iou_max >= 0.5)
        negative = tf.logical_and(tf.logical_and(valid, roi_iou_max < 0.5), no_crowd)

        def sample(candidates, k):
            """The k highest-keyed candidates' indices [B, k], and which are candidates."""
            scores, indices = tf.math.top_k(tf.where(candidates, keys, -1.0), k)
            return indices, scores >= 0.0

        positive_ix, is_positive = sample(positive, p)
        positive_count = tf.reduce_sum(tf.cast(is_positive, tf.int32), axis=1)
        r = tf.constant(1.0 / self.roi_positive_ratio, tf.float32)
        negative_count = tf.cast(r * tf.cast(positive_count, tf.float32), tf.int32) - positive_count
        negative_ix, is_negative = sample(negative, t)
        is_negative = tf.logical_and(is_negative, tf.range(t) < negative_count[:, None])

        # Row j: positive j below positive_count, then negative j - positive_count.
        rows = tf.range(t)[None, :]
        from_positives = rows < positive_count[:, None]
        negative_slot = tf.maximum(rows - positive_count[:, None], 0)
        row_ix = tf.where(from_positives, tf.pad(positive_ix, [(0, 0), (0, t - p)]),
                          tf.gather(negative_ix, negative_slot, batch_dims=1))
        used = tf.logical_or(from_positives, tf.gather(is_negative, negative_slot, batch_dims=1))
        rois = tf.where(used[..., None], tf.gather(proposals, row_ix, batch_dims=1), 0.0)

        # Positive slots [B, P]; the others compute on a dummy unit box and are zeroed.
        unit = tf.constant([0.0, 0.0, 1.0, 1.0])
        assignment = tf.argmax(tf.gather(iou, positive_ix, batch_dims=1), axis=2,
                               output_type=tf.int32)
        positive_rois = tf.where(is_positive[..., None],
                                 tf.gather(proposals, positive_ix, batch_dims=1), unit)
        roi_gt_boxes = tf.where(is_positive[..., None],
                                tf.gather(gt_boxes, assignment, batch_dims=1), unit)
        class_ids = tf.where(is_positive, tf.gather(gt_class_ids, assignment, batch_dims=1), 0)
        deltas = box_refinement_graph(positive_rois, roi_gt_boxes)
        deltas /= tf.constant(self.bbox_std_dev, tf.float32)
        deltas = tf.where(is_positive[..., None], deltas, 0.0)

        # Masks of every image as one stack [B * G, height, width, 1]; box k reads
        # mask image * G + assigned GT.
        batch, height, width, g = _static_or_dynamic_shape(gt_masks)
        stack = tf.reshape(tf.transpose(gt_masks, [0, 3, 1, 2]), [-1, height, width, 1])
        boxes = positive_rois
        if self.use_mini_mask:
            # Mini-masks span their GT box: express the RoI in that box's frame.
            y1, x1, y2, x2 = tf.split(positive_rois, 4, axis=2)
            gt_y1, gt_x1, gt_y2, gt_x2 = tf.split(roi_gt_boxes, 4, axis=2)
            gt_h = gt_y2 - gt_y1
            gt_w = gt_x2 - gt_x1
            boxes = tf.concat([(y1 - gt_y1) / gt_h, (x1 - gt_x1) / gt_w,
                               (y2 - gt_y1) / gt_h, (x2 - gt_x1) / gt_w], 2)
        box_indices = tf.range(batch)[:, None] * g + assignment
        masks = roi_align(stack, tf.reshape(boxes, [-1, 4]), tf.reshape(box_indices, [-1]),
                          self.mask_shape, self.roi_align_aligned, self.roi_align_sampling_ratio)
        masks = tf.reshape(tf.round(masks), [batch, p, *self.mask_shape])
        masks = tf.where(is_positive[..., None, None], masks, 0.0)

        pad = [(0, 0), (0, t - p)]
        targets = (rois, tf.pad(class_ids, pad), tf.pad(deltas, pad + [(0, 0)]),
                   tf.pad(masks, pad + [(0, 0), (0, 0)]))
        return [tf.stop_gradient(x) for x in targets]

    def compute_output_spec(self, inputs):
        batch, t = inputs[0].shape[0], self.train_rois_per_image
        return [keras.KerasTensor((batch, t, 4), "float32"),
                keras.KerasTensor((batch, t), "int32"),
                keras.KerasTensor((batch, t, 4), "float32"),
                keras.KerasTensor((batch, t, *self.mask_shape), "float32")]

    def get_config(self):
        return {**super().get_config(), "train_rois_per_image": self.train_rois_per_image,
                "roi_positive_ratio": self.roi_positive_ratio, "bbox_std_dev": self.bbox_std_dev,
                "use_mini_mask": self.use_mini_mask, "mask_shape": self.mask_shape,
                "roi_align_aligned": self.roi_align_aligned,
                "roi_align_sampling_ratio": self.roi_align_sampling_ratio}


############################################################
#  Detections (inference)
############################################################

@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionLayer(GraphLayer):
    """Final detections from the classified, refined RoIs.

    Candidates are (RoI, foreground class) pairs, each with that class's
    probability as score and that class's deltas (times BBOX_STD_DEV)
    applied to the RoI, the box clipped to the image window. Which pairs
    compete depends on detection_class_mode (config DETECTION_CLASS_MODE;
    "argmax" for a layer built from values without a config):

    - "argmax" (matterport's refine_detections_graph, for a whole batch):
      only each RoI's most probable class; a RoI whose top class is the
      background gives nothing, so with two classes every score is above 0.5.
    - "per_class" (torchvision's and detectron2's post-processing): every
      class of every RoI; one RoI may give detections of several classes.

    Candidates below DETECTION_MIN_CONFIDENCE, or whose box is not finite
    (broken or diverged head weights), are dropped; per-class NMS
    (DETECTION_NMS_THRESHOLD, at most DETECTION_MAX_INSTANCES per class and
    image); then the DETECTION_MAX_INSTANCES best of the image by descending
    score, ties going to the lower RoI index, then the lower class id.
    There is no pre-NMS cap: the N x (classes - 1) candidates of an image
    are scored and NMS sees those of one class at a time.

    The NMS is one tf.image.combined_non_max_suppression over all (image,
    class) pairs (tf_ops' ranked_nms), scored with each candidate's rank
    in that order: the same as a tf.image.non_max_suppression per image and
    class, ties included (N x (classes - 1) < 2**24).

    Inputs: rois [batch, N, 4], mrcnn_class [batch, N, classes],
    mrcnn_bbox [batch, N, classes, 4], image_meta [batch, meta].
    Output: [batch, DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)]
    in normalised coordinates, by descending score, zero padded.
    """

    CONFIG_ATTRIBUTES: ClassVar[dict] = {
        "bbox_std_dev": "BBOX_STD_DEV",
        "detection_min_confidence": "DETECTION_MIN_CONFIDENCE",
        "detection_max_instances": "DETECTION_MAX_INSTANCES",
        "detection_nms_threshold": "DETECTION_NMS_THRESHOLD",
        "detection_class_mode": "DETECTION_CLASS_MODE",
    }
    # Built from values alone (or saved before the setting): matterport's "argmax".
    SETTING_DEFAULTS: ClassVar[dict] = {"detection_class_mode": "argmax"}

    def __init__(self, config=None, bbox_std_dev=None, detection_min_confidence=None,
                 detection_max_instances=None, detection_nms_threshold=None,
                 detection_class_mode=None, **kwargs):
        super().__init__(**kwargs)
        values = self.settings(config, bbox_std_dev=bbox_std_dev,
                               detection_min_confidence=detection_min_confidence,
                               detection_max_instances=detection_max_instances,
                               detection_nms_threshold=detection_nms_threshold,
                               detection_class_mode=detection_class_mode)
        self.bbox_std_dev = [float(v) for v in values["bbox_std_dev"]]
        self.detection_min_confidence = float(values["detection_min_confidence"])
        self.detection_max_instances = int(values["detection_max_instances"])
        self.detection_nms_threshold = float(values["detection_nms_threshold"])
        mode = values["detection_class_mode"]
        if not isinstance(mode, str) or mode not in DETECTION_CLASS_MODES:
            raise ValueError(f"detection_class_mode is {mode!r}; use 'argmax' (matterport's: each "
                             "RoI's top class) or 'per_class' (a candidate per RoI and class).")
        self.detection_class_mode = mode

    def call(self, inputs):
        rois, probs, deltas = (tf.cast(t, tf.float32) for t in inputs[:3])
        meta = parse_image_meta_graph(inputs[3])
        window = norm_boxes_graph(meta["window"], meta["image_shape"][0][:2])
        k, num_classes = self.detection_max_instances, probs.shape[-1]
        if num_classes == 1:  # background only: nothing to detect
            return tf.zeros([tf.shape(rois)[0], k, 6])

        # Candidate (RoI, class c) at [:, roi, c - 1]: score, box and whether it competes.
        scores = probs[..., 1:]
        deltas = deltas[:, :, 1:] * tf.constant(self.bbox_std_dev, tf.float32)
        # RoIs repeated per class, not broadcast: in a graph, Grappler regroups the box
        # arithmetic of operands of one shape only, and then as for one box per RoI, so that
        # "argmax" stays bit for bit the former output (broadcasting moved boxes by 1 ulp).
        boxes = apply_box_deltas_graph(tf.broadcast_to(rois[:, :, tf.newaxis], tf.shape(deltas)),
                                       deltas)
        boxes, finite = finite_boxes(clip_boxes_graph(boxes, window[:, tf.newaxis, tf.newaxis]))
        keep = tf.logical_and(scores >= self.detection_min_confidence, finite)
        if self.detection_class_mode == "argmax":
            top_class = tf.argmax(probs, axis=2, output_type=tf.int32)
            keep = tf.logical_and(keep, tf.equal(top_class[..., tf.newaxis],
                                                 tf.range(1, num_classes)))
        batch, foreground = tf.shape(rois)[0], num_classes - 1
        if probs.shape[1] is not None and probs.shape[1] * foreground >= 2 ** 24:
            raise ValueError(f"{probs.shape[1]} RoIs x {foreground} classes: the rank keys of "
                             "the candidates would not be exact in float32 (2**24 at most).")

        # Flattened, candidate (roi, c) is at roi * (classes - 1) + c - 1. `order` lists the
        # kept candidates first, by descending score, ties to the lower flat index (top_k's
        # rule): the lower RoI, then the lower class. Rank keys `kept` - rank (-1: not kept)
        # carry that order. Only the `kept` first are sorted (most of the image's in COCO).
        flat_scores = tf.reshape(scores, [batch, -1])
        flat_keep = tf.reshape(keep, [batch, -1])
        kept = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(flat_keep, tf.int32), 1)), 0)
        order = tf.nn.top_k(tf.where(flat_keep, flat_scores, -1.0), k=kept, sorted=True).indices
        images = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], tf.shape(order))
        keys = tf.scatter_nd(tf.stack([images, order], -1),
                             tf.broadcast_to(tf.range(kept, 0, -1), tf.shape(order)),
                             tf.shape(flat_scores))
        keys = tf.where(flat_keep, tf.cast(keys, tf.float32), -1.0)

        # NMS per image and class: the (image, class) pairs along the batch axis, each with
        # its class's N boxes; at most k survivors each, by descending key.
        n = tf.shape(boxes)[1]
        nms_boxes, nms_keys = ranked_nms(
            tf.reshape(tf.transpose(boxes, [0, 2, 1, 3]), [-1, n, 4]),
            tf.reshape(tf.transpose(tf.reshape(keys, tf.shape(scores)), [0, 2, 1]), [-1, n]),
            k, self.detection_nms_threshold)
        # The image's k best survivors: the largest keys of its classes' (0: padding).
        best_keys, best = tf.nn.top_k(tf.reshape(nms_keys, [batch, -1]), k=k, sorted=True)
        ranked = tf.gather(tf.pad(order, [(0, 0), (0, 1)]), kept - best_keys, batch_dims=1)
        detections = tf.concat([
            tf.gather(tf.reshape(nms_boxes, [batch, -1, 4]), best, batch_dims=1),
            tf.cast(ranked % foreground + 1, tf.float32)[..., None],
            tf.gather(flat_scores, ranked, batch_dims=1)[..., None]], axis=2)
        return tf.where(best_keys[..., None] > 0, detections, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.detection_max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "bbox_std_dev": self.bbox_std_dev,
                "detection_min_confidence": self.detection_min_confidence,
                "detection_max_instances": self.detection_max_instances,
                "detection_nms_threshold": self.detection_nms_threshold,
                "detection_class_mode": self.detection_class_mode}


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionBoxes(GraphLayer):
    """The (y1, x1, y2, x2) columns of the detections, for the mask head."""

    def call(self, detections):
        return detections[..., :4]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (4,)


@keras.saving.register_keras_serializable(package="mrcnn")
class DetectionClassIds(GraphLayer):
    """The class id column of the detections (0 for padding): the mask head's row ids."""

    def call(self, detections):
        return detections[..., 4]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


@keras.saving.register_keras_serializable(package="mrcnn")
class LeadingRows(GraphLayer):
    """The first `count` rows (axis 1) of each input. The mask head and its
    loss take the first int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO) rows
    of DetectionTargetLayer's outputs, where all the positives are: RoIAlign
    for the mask head then pools those rows only."""

    @classmethod
    def config_arguments(cls, config):
        """count: the most positives DetectionTargetLayer samples (Config.validate makes it >= 1)."""
        return {"count": int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)}

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, inputs):
        return [x[:, :self.count] for x in inputs]

    def compute_output_spec(self, inputs):
        return [keras.KerasTensor((x.shape[0], self.count) + tuple(x.shape[2:]), x.dtype)
                for x in inputs]

    def get_config(self):
        return {**super().get_config(), "count": self.count}


############################################################
#  Losses
############################################################

def mrcnn_class_loss_graph(target_class_ids, pred_class_logits, active_class_ids):
    """Classifier loss: softmax cross-entropy over all RoIs (padding counts
    as background, as in matterport), dropping RoIs whose *predicted* class is
    not active in the image's dataset; mean over the rest (0 if none), over
    the global batch under tf.distribute (`tf_ops.global_mean`).

    target_class_ids [batch, rois], pred_class_logits [batch, rois, classes],
    active_class_ids [batch, classes] (1 = class of the image's source).
    Each image uses its own active classes; matterport used the first
    image's for the whole batch (the same when a batch has one source).
    """
    target_class_ids = tf.cast(target_class_ids, tf.int64)
    pred_class_ids = tf.argmax(pred_class_logits, axis=2)
    pred_active = tf.gather(tf.cast(active_class_ids, pred_class_logits.dtype),
                            pred_class_ids, batch_dims=1)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids,
                                                          logits=pred_class_logits)
    return global_mean(tf.reduce_sum(loss * pred_active), tf.reduce_sum(pred_active))


def mrcnn_bbox_loss_graph(target_bbox, target_class_ids, pred_bbox):
    """Box loss: smooth-L1 between target_bbox [batch, rois, 4] and the
    predicted deltas of the true class (pred_bbox [batch, rois, classes, 4]),
    over positive RoIs only (class id > 0); mean over elements, 0 if none."""
    target_class_ids = tf.reshape(target_class_ids, (-1,))
    target_bbox = tf.reshape(target_bbox, (-1, 4))
    pred_bbox = tf.reshape(pred_bbox, (-1, pred_bbox.shape[2], 4))
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    positive_class_ids = tf.cast(tf.gather(target_class_ids, positive_ix), tf.int64)
    indices = tf.stack([positive_ix, positive_class_ids], axis=1)
    return mean_or_zero(smooth_l1_loss(tf.gather(target_bbox, positive_ix),
                                       tf.gather_nd(pred_bbox, indices)))


def mrcnn_mask_loss_graph(target_masks, target_class_ids, pred_masks):
    """Mask loss: binary cross-entropy between target_masks [batch, rois, h, w]
    and the true class's predicted mask (pred_masks [batch, rois, h, w,
    classes], probabilities), over positive RoIs only; mean over pixels, 0
    if none."""
    target_class_ids = tf.reshape(target_class_ids, (-1,))
    mask_shape = tf.shape(target_masks)
    target_masks = tf.reshape(target_masks, (-1, mask_shape[2], mask_shape[3]))
    pred_shape = tf.shape(pred_masks)
    pred_masks = tf.reshape(pred_masks, (-1, pred_shape[2], pred_shape[3], pred_shape[4]))
    pred_masks = tf.transpose(pred_masks, [0, 3, 1, 2])
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    positive_class_ids = tf.cast(tf.gather(target_class_ids, positive_ix), tf.int64)
    indices = tf.stack([positive_ix, positive_class_ids], axis=1)
    y_true = tf.gather(target_masks, positive_ix)
    y_pred = tf.gather_nd(pred_masks, indices)
    return mean_or_zero(keras.ops.binary_crossentropy(y_true, y_pred))


def _class_loss_from_meta(target_class_ids, pred_class_logits, image_meta):
    return mrcnn_class_loss_graph(target_class_ids, pred_class_logits,
                                  parse_image_meta_graph(image_meta)["active_class_ids"])


@keras.saving.register_keras_serializable(package="mrcnn")
class MrcnnClassLoss(LossLayer):
    """`mrcnn_class_loss_graph` as a layer: inputs [target_class_ids,
    mrcnn_class_logits, input_image_meta] (active classes read from the meta)."""

    loss_graph = staticmethod(_class_loss_from_meta)


@keras.saving.register_keras_serializable(package="mrcnn")
class MrcnnBboxLoss(LossLayer):
    """`mrcnn_bbox_loss_graph` as a layer: inputs [target_bbox, target_class_ids, mrcnn_bbox]."""

    loss_graph = staticmethod(mrcnn_bbox_loss_graph)


@keras.saving.register_keras_serializable(package="mrcnn")
class MrcnnMaskLoss(LossLayer):
    """`mrcnn_mask_loss_graph` as a layer: inputs [target_mask, target_class_ids, mrcnn_mask]."""

    loss_graph = staticmethod(mrcnn_mask_loss_graph)

"""The Mask R-CNN training and inference graphs as Keras functional models.

Both are built from the same layer names (matterport's), so weights move
between them by name. The training model is a `TrainingModel`: its
`train_step` sums the five loss outputs (weighted) and L2 weight decay.

Mixed precision (Config.MIXED_PRECISION): each model is built with that Keras
dtype policy set as the global one for the build only (`_dtype_policy_scope`):
every layer, a user's BACKBONE callable's included, takes it without a dtype
argument threaded through each graph function, keeps it (and serialises it),
and the process-wide policy is restored afterwards. Weights are float32
variables under every policy. Under mixed_float16 the model's own policy makes
`compile()` wrap the optimizer in a LossScaleOptimizer, which unscales the
gradients before the inner optimizer clips them (GRADIENT_CLIP_NORM) and skips
steps whose gradients overflow. These layers are float32 (explicit
`dtype="float32"`): the RPN's logits/deltas convolutions, reshapes and
concatenations (`rpn_class_raw`, `rpn_bbox_pred`, `rpn_class_logits`,
`rpn_class`, `rpn_bbox`), the heads' `mrcnn_class_logits`, `mrcnn_class`,
`mrcnn_bbox_fc`, `mrcnn_bbox` and `mrcnn_mask` (with their RoIDistributed
wrappers), and every weightless custom layer (base_layers.GraphLayer: ROI,
proposal_targets, roi_align_*, mrcnn_detection, the losses, anchors, box
normalisation). Softmax, sigmoid and cross-entropy lose accuracy and
overflow in half precision; bfloat16's 8-bit mantissa cannot place a box to
a pixel (normalised coordinates near 1.0 step by 8 px on a 1024-px image),
and float16 overflows in exp() of deltas above 11. The rest (backbone, FPN, the heads' convolutions)
computes in half precision.
"""

import contextlib

import keras
import tensorflow as tf

from mrcnn.backbone import compute_backbone_shapes, resnet_graph
from mrcnn.config import LOSS_NAMES
from mrcnn.distribute import num_workers
from mrcnn.base_layers import BatchNorm, GraphLayer
from mrcnn.geometry import norm_boxes_graph
from mrcnn.roi_heads import (DetectionBoxes, DetectionClassIds, DetectionLayer,
                             DetectionTargetLayer, LeadingRows,
                             MrcnnBboxLoss, MrcnnClassLoss, MrcnnMaskLoss, PyramidROIAlign,
                             build_fpn_mask_graph, fpn_classifier_graph)
from mrcnn.rpn import AnchorsLayer, ProposalLayer, RpnBboxLoss, RpnClassLoss, build_rpn_model

__all__ = [
    "NormBoxes", "build_training_model", "build_inference_model", "TrainingModel",
    "inputs_in_order", "outputs_by_name",
]


@keras.saving.register_keras_serializable(package="mrcnn")
class NormBoxes(GraphLayer):
    """Pixel boxes [batch, N, 4] to normalised ones, using the height and
    width of the image given as second input."""

    def call(self, inputs):
        boxes, image = inputs
        return norm_boxes_graph(boxes, tf.shape(image)[1:3])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


@contextlib.contextmanager
def _dtype_policy_scope(policy):
    """Keras' global dtype policy set to `policy` (None: leave it) inside the
    block and restored afterwards, whatever happens. Layers created inside
    keep the policy. Not thread-safe: another thread building layers at the
    same time sees the policy too."""
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _feature_pyramid(input_image, config):
    """Backbone and FPN: returns (rpn_feature_maps P2..P6, mrcnn_feature_maps P2..P5)."""
    if callable(config.BACKBONE):
        _, c2, c3, c4, c5 = config.BACKBONE(input_image, stage5=True, train_bn=config.TRAIN_BN)
    else:
        _, c2, c3, c4, c5 = resnet_graph(input_image, config.BACKBONE, stage5=True,
                                         train_bn=config.TRAIN_BN)
    size = config.TOP_DOWN_PYRAMID_SIZE
    p5 = keras.layers.Conv2D(size, (1, 1), name="fpn_c5p5")(c5)
    p4 = keras.layers.Add(name="fpn_p4add")([
        keras.layers.UpSampling2D(size=(2, 2), name="fpn_p5upsampled")(p5),
        keras.layers.Conv2D(size, (1, 1), name="fpn_c4p4")(c4)])
    p3 = keras.layers.Add(name="fpn_p3add")([
        keras.layers.UpSampling2D(size=(2, 2), name="fpn_p4upsampled")(p4),
        keras.layers.Conv2D(size, (1, 1), name="fpn_c3p3")(c3)])
    p2 = keras.layers.Add(name="fpn_p2add")([
        keras.layers.UpSampling2D(size=(2, 2), name="fpn_p3upsampled")(p3),
        keras.layers.Conv2D(size, (1, 1), name="fpn_c2p2")(c2)])
    p2 = keras.layers.Conv2D(size, (3, 3), padding="same", name="fpn_p2")(p2)
    p3 = keras.layers.Conv2D(size, (3, 3), padding="same", name="fpn_p3")(p3)
    p4 = keras.layers.Conv2D(size, (3, 3), padding="same", name="fpn_p4")(p4)
    p5 = keras.layers.Conv2D(size, (3, 3), padding="same", name="fpn_p5")(p5)
    # P6 (subsampled P5) only feeds the RPN, for the largest anchors.
    p6 = keras.layers.MaxPooling2D(pool_size=(1, 1), strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6], [p2, p3, p4, p5]


def _rpn(rpn_feature_maps, config):
    """The shared RPN on every level, concatenated: rpn_class_logits, rpn_class, rpn_bbox."""
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE)
    per_level = [rpn(p) for p in rpn_feature_maps]
    return [keras.layers.Concatenate(axis=1, name=name, dtype="float32")(list(outputs))
            for outputs, name in zip(zip(*per_level), ("rpn_class_logits", "rpn_class", "rpn_bbox"))]


def _classifier_head(rois, mrcnn_feature_maps, input_image_meta, config):
    """fpn_classifier_graph with the config's settings: mrcnn_class_logits, mrcnn_class, mrcnn_bbox."""
    return fpn_classifier_graph(rois, mrcnn_feature_maps, input_image_meta, config.POOL_SIZE,
                                config.NUM_CLASSES, train_bn=config.TRAIN_BN,
                                fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE,
                                **PyramidROIAlign.config_arguments(config))


def _mask_head(rois, mrcnn_feature_maps, input_image_meta, row_ids, config):
    """build_fpn_mask_graph with the config's settings, on the rows of `row_ids` > 0."""
    return build_fpn_mask_graph(rois, mrcnn_feature_maps, input_image_meta, config.MASK_POOL_SIZE,
                                config.NUM_CLASSES, train_bn=config.TRAIN_BN, row_ids=row_ids,
                                **PyramidROIAlign.config_arguments(config))


def _image_inputs(config):
    return (keras.Input(shape=[None, None, config.IMAGE_SHAPE[2]], name="input_image"),
            keras.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta"))


def build_training_model(config):
    """matterport's training graph as a `TrainingModel` named "mask_rcnn".

    Inputs: input_image, input_image_meta, input_rpn_match, input_rpn_bbox,
    input_gt_class_ids, input_gt_boxes (pixels), input_gt_masks (mini-masks
    if USE_MINI_MASK), and input_roi (pixels) when USE_RPN_ROIS is False.
    Outputs: rpn_class_logits, rpn_class, rpn_bbox, mrcnn_class_logits,
    mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois (ROI), output_rois, then
    the five losses (LOSS_NAMES order), each [1]. mrcnn_mask covers only the
    first int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO) RoIs of each image,
    where all positives are, and is computed for the positives only (0 in
    the other rows): the mask loss uses nothing else.

    `config` must be valid: `MaskRCNN` validates it once; after changing
    attributes of an instance, call `config.validate()` before building.
    With SYNC_BATCH_NORM, the BatchNorm layers that train compute their batch
    statistics over all replicas (Keras' `synchronized`).
    """
    with _dtype_policy_scope(config.MIXED_PRECISION):
        model = _training_model(config)
    if config.SYNC_BATCH_NORM:
        for layer in _sublayers(model):
            if isinstance(layer, BatchNorm) and not layer.frozen:
                layer.synchronized = True
    return model


def _sublayers(layer):
    """Every layer inside `layer`: of nested models and of wrappers, recursively."""
    for inner in list(getattr(layer, "layers", [])) + [getattr(layer, "layer", None)]:
        if inner is not None:
            yield inner
            yield from _sublayers(inner)


def _training_model(config):
    input_image, input_image_meta = _image_inputs(config)
    input_rpn_match = keras.Input(shape=[None, 1], name="input_rpn_match", dtype="int32")
    input_rpn_bbox = keras.Input(shape=[None, 4], name="input_rpn_bbox", dtype="float32")
    input_gt_class_ids = keras.Input(shape=[None], name="input_gt_class_ids", dtype="int32")
    input_gt_boxes = keras.Input(shape=[None, 4], name="input_gt_boxes", dtype="float32")
    gt_boxes = NormBoxes(name="norm_gt_boxes")([input_gt_boxes, input_image])
    mask_shape = config.MINI_MASK_SHAPE if config.USE_MINI_MASK else config.IMAGE_SHAPE[:2]
    input_gt_masks = keras.Input(shape=[int(mask_shape[0]), int(mask_shape[1]), None],
                                 name="input_gt_masks", dtype="bool")

    rpn_feature_maps, mrcnn_feature_maps = _feature_pyramid(input_image, config)
    anchors = AnchorsLayer(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                           compute_backbone_shapes(config, config.IMAGE_SHAPE),
                           config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE,
                           config.IMAGE_SHAPE, name="anchors")(input_image)
    rpn_class_logits, rpn_class, rpn_bbox = _rpn(rpn_feature_maps, config)
    rpn_rois = ProposalLayer.from_model_config(config, proposal_count=config.POST_NMS_ROIS_TRAINING,
                                               name="ROI")([rpn_class, rpn_bbox, anchors])

    inputs = [input_image, input_image_meta, input_rpn_match, input_rpn_bbox,
              input_gt_class_ids, input_gt_boxes, input_gt_masks]
    if config.USE_RPN_ROIS:
        target_rois = rpn_rois
    else:
        input_rois = keras.Input(shape=[config.POST_NMS_ROIS_TRAINING, 4], name="input_roi",
                                 dtype="int32")
        inputs.append(input_rois)
        target_rois = NormBoxes(name="norm_input_roi")([input_rois, input_image])

    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer.from_model_config(
        config, name="proposal_targets")([target_rois, input_gt_class_ids, gt_boxes, input_gt_masks])
    mrcnn_class_logits, mrcnn_class, mrcnn_bbox = _classifier_head(
        rois, mrcnn_feature_maps, input_image_meta, config)
    mask_rois, mask_class_ids, target_mask = LeadingRows.from_model_config(
        config, name="positive_rows")([rois, target_class_ids, target_mask])
    mrcnn_mask = _mask_head(mask_rois, mrcnn_feature_maps, input_image_meta, mask_class_ids, config)
    output_rois = keras.layers.Identity(name="output_rois", dtype="float32")(rois)

    losses = [
        RpnClassLoss(name="rpn_class_loss")([input_rpn_match, rpn_class_logits]),
        RpnBboxLoss(name="rpn_bbox_loss")([input_rpn_bbox, input_rpn_match, rpn_bbox]),
        MrcnnClassLoss(name="mrcnn_class_loss")(
            [target_class_ids, mrcnn_class_logits, input_image_meta]),
        MrcnnBboxLoss(name="mrcnn_bbox_loss")([target_bbox, target_class_ids, mrcnn_bbox]),
        MrcnnMaskLoss(name="mrcnn_mask_loss")([target_mask, mask_class_ids, mrcnn_mask]),
    ]
    outputs = [rpn_class_logits, rpn_class, rpn_bbox, mrcnn_class_logits, mrcnn_class,
               mrcnn_bbox, mrcnn_mask, rpn_rois, output_rois] + losses
    return TrainingModel(inputs, outputs, loss_weights=config.LOSS_WEIGHTS,
                         weight_decay=config.WEIGHT_DECAY, name="mask_rcnn")


def build_inference_model(config):
    """matterport's inference graph as a keras.Model named "mask_rcnn".

    Inputs: input_image, input_image_meta, input_anchors (normalised,
    [batch, anchors, 4]). Outputs: detections [batch,
    DETECTION_MAX_INSTANCES, (y1, x1, y2, x2, class_id, score)] (normalised),
    mrcnn_class, mrcnn_bbox, mrcnn_mask (computed for the detections only,
    0 in the padding rows), rpn_rois, rpn_class, rpn_bbox.

    `config` must be valid, as for `build_training_model`.
    """
    with _dtype_policy_scope(config.MIXED_PRECISION):
        return _inference_model(config)


def _inference_model(config):
    input_image, input_image_meta = _image_inputs(config)
    input_anchors = keras.Input(shape=[None, 4], name="input_anchors")

    rpn_feature_maps, mrcnn_feature_maps = _feature_pyramid(input_image, config)
    _, rpn_class, rpn_bbox = _rpn(rpn_feature_maps, config)
    rpn_rois = ProposalLayer.from_model_config(config, proposal_count=config.POST_NMS_ROIS_INFERENCE,
                                               name="ROI")([rpn_class, rpn_bbox, input_anchors])
    _, mrcnn_class, mrcnn_bbox = _classifier_head(rpn_rois, mrcnn_feature_maps, input_image_meta,
                                                  config)
    detections = DetectionLayer.from_model_config(config, name="mrcnn_detection")(
        [rpn_rois, mrcnn_class, mrcnn_bbox, input_image_meta])
    detection_boxes = DetectionBoxes(name="detection_boxes")(detections)
    mrcnn_mask = _mask_head(detection_boxes, mrcnn_feature_maps, input_image_meta,
                            DetectionClassIds(name="detection_class_ids")(detections), config)
    return keras.Model([input_image, input_image_meta, input_anchors],
                       [detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois, rpn_class,
                        rpn_bbox], name="mask_rcnn")


def _is_decayed(weight):
    """matterport's L2 decay covers kernels and biases, not BatchNorm's gamma and beta."""
    return weight.name not in ("gamma", "beta")


def _add(gradient, decay):
    """A weight's loss gradient (None if the losses do not depend on it) plus its decay's."""
    return decay if gradient is None else gradient + decay


@keras.saving.register_keras_serializable(package="mrcnn")
class TrainingModel(keras.Model):
    """Functional model whose outputs include the five loss layers.

    `train_step` minimises sum(LOSS_WEIGHTS[name] * mean(loss output)) plus
    matterport's L2 term WEIGHT_DECAY * sum(w**2) / size(w) over the
    trainable weights except BatchNorm gamma/beta (kernels and biases, as
    matterport), with the optimizer given to `compile` (which clips gradients).
    Losses are recomputed from the trainable weights at every (re)compile,
    so changing `trainable` and compiling again changes which weights train
    and decay, never how the losses are defined.

    "loss" (the total) and each weighted loss are reported through
    `keras.metrics.Mean` trackers, so they appear by name in the progress
    bar, History and TensorBoard; `test_step` reports the same (with
    training=False). Under tf.distribute each replica's loss is divided by
    the replica count before its gradients are summed across replicas; the
    losses are means over the global batch (`tf_ops.global_mean`), so the
    step is one device's step on the whole batch, up to summation order.
    """

    def __init__(self, *args, loss_weights=None, weight_decay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0))
                             for name in LOSS_NAMES}
        self.weight_decay = float(weight_decay)
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in ("loss",) + LOSS_NAMES]
        self.xla_split = None  # an mrcnn.xla.XlaSplit when Config.XLA: the forward pass

    @property
    def metrics(self):
        return list(self.loss_trackers)

    def _loss_values(self, x, training):
        """The total loss and the weighted losses by name, for one (replica) batch."""
        forward = self.xla_split or self
        outputs = outputs_by_name(self, forward(x, training=training))
        losses = {name: tf.reduce_mean(outputs[name]) * self.loss_weights[name]
                  for name in LOSS_NAMES}
        total = tf.add_n(list(losses.values()))
        decayed = [w for w in self.trainable_weights if _is_decayed(w)]
        if decayed and self.weight_decay:   # reported here, its gradient added in train_step
            total += self.weight_decay * tf.stop_gradient(tf.add_n(
                [tf.reduce_sum(tf.square(w)) / tf.cast(tf.size(w), w.dtype) for w in decayed]))
        return total, losses

    def _report_losses(self, total, losses):
        values = [total] + [losses[name] for name in LOSS_NAMES]
        for tracker, value in zip(self.loss_trackers, values):
            tracker.update_state(value)
        logs = {tracker.name: tracker.result() for tracker in self.loss_trackers}
        if num_workers(tf.distribute.get_strategy()) > 1:
            # Keras averages a step's outputs across workers along axis 0, which scalars
            # lack (keras-team/keras#20585): give them one.
            logs = {name: value[None] for name, value in logs.items()}
        return logs

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_weights
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            total, losses = self._loss_values(x, training=True)
            scaled = self.optimizer.scale_loss(total / replicas)
        gradients = tape.gradient(scaled, weights)
        if self.weight_decay:
            # The L2 term's gradient 2 * WEIGHT_DECAY * w / size(w), added here: through the
            # tape it cost a backward pass over every weight each step.
            factor = self.optimizer.scale_loss(2.0 * self.weight_decay / replicas)
            gradients = [_add(g, factor * w / tf.cast(tf.size(w), w.dtype)) if _is_decayed(w)
                         else g for g, w in zip(gradients, weights)]
        self.optimizer.apply_gradients(zip(gradients, weights))
        return self._report_losses(total, losses)

    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._report_losses(*self._loss_values(x, training=False))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build the optimizer in the strategy's scope before `fit` traces its step.

        Keras' version first reduces a batch across replicas, only to learn its
        shapes, and that reduce fails for a batch of several tensors under
        MultiWorkerMirroredStrategy (keras-team/keras#20329). This functional
        model is built with its layers and has no compiled loss or metrics:
        the optimizer (once compiled) is all there is to build.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)

    def get_config(self):
        return {**super().get_config(), "loss_weights": self.loss_weights,
                "weight_decay": self.weight_decay}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        settings = {key: config.pop(key) for key in ("loss_weights", "weight_decay")
                    if key in config}
        model = super().from_config(config, custom_objects=custom_objects)
        model.loss_weights = {name: float(settings.get("loss_weights", {}).get(name, 1.0))
                              for name in LOSS_NAMES}
        model.weight_decay = float(settings.get("weight_decay", 0.0))
        return model


def inputs_in_order(keras_model, named):
    """{input name: value} as the list in `keras_model.inputs` order, the form a call (or a
    tf.function traced on lists) takes; extra names are ignored."""
    names = [t.name for t in keras_model.inputs]
    missing = [name for name in names if name not in named]
    if missing:
        raise ValueError(f"Model {keras_model.name!r} needs the inputs {names}; {missing} are "
                         f"missing from the given {sorted(named)}.")
    return [named[name] for name in names]


def outputs_by_name(keras_model, outputs):
    """`keras_model`'s outputs (a list in its output order) as {output name: value}, so that
    callers read e.g. outputs["mrcnn_detection"] rather than a position."""
    names = keras_model.output_names
    if len(outputs) != len(names):
        raise ValueError(f"Model {keras_model.name!r} has {len(names)} outputs {names}, "
                         f"got {len(outputs)} values.")
    return dict(zip(names, outputs))

"""Region proposal network: the shared RPN head, proposals, and RPN losses."""

import functools
from typing import ClassVar

import keras
import tensorflow as tf

from mrcnn.base_layers import GraphLayer, LossLayer
from mrcnn.geometry import anchor_params, apply_box_deltas_graph, clip_boxes_graph, normalized_anchors
from mrcnn.tf_ops import batch_pack_graph, finite_boxes, mean_or_zero, ranked_nms, smooth_l1_loss

__all__ = [
    "rpn_graph", "build_rpn_model", "ProposalLayer", "AnchorsLayer", "rpn_class_loss_graph",
    "rpn_bbox_loss_graph", "RpnClassLoss", "RpnBboxLoss",
]


def rpn_graph(feature_map, anchors_per_location, anchor_stride):
    """RPN head on one feature map [batch, H, W, depth].

    Returns rpn_class_logits [batch, H*W*anchors, 2] (BG/FG logits),
    rpn_probs (their softmax) and rpn_bbox [batch, H*W*anchors, (dy, dx,
    log(dh), log(dw))], anchors ordered by (y, x, anchor) as utils'
    generate_anchors orders them.
    """
    shared = keras.layers.Conv2D(512, (3, 3), padding="same", activation="relu",
                                 strides=anchor_stride, name="rpn_conv_shared")(feature_map)
    x = keras.layers.Conv2D(2 * anchors_per_location, (1, 1), padding="valid",
                            activation="linear", name="rpn_class_raw", dtype="float32")(shared)
    rpn_class_logits = keras.layers.Reshape((-1, 2), name="rpn_class_logits_reshape",
                                            dtype="float32")(x)
    rpn_probs = keras.layers.Activation("softmax", name="rpn_class_xxx",
                                        dtype="float32")(rpn_class_logits)
    x = keras.layers.Conv2D(anchors_per_location * 4, (1, 1), padding="valid",
                            activation="linear", name="rpn_bbox_pred", dtype="float32")(shared)
    rpn_bbox = keras.layers.Reshape((-1, 4), name="rpn_bbox_reshape", dtype="float32")(x)
    return [rpn_class_logits, rpn_probs, rpn_bbox]


def build_rpn_model(anchor_stride, anchors_per_location, depth):
    """The RPN head as the nested model `rpn_model`, shared by all pyramid levels.

    Its outputs are those of `rpn_graph`; its weights are stored under the
    layer `rpn_model` as in matterport's weight files."""
    input_feature_map = keras.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    outputs = rpn_graph(input_feature_map, anchors_per_location, anchor_stride)
    return keras.Model([input_feature_map], outputs, name="rpn_model")


@keras.saving.register_keras_serializable(package="mrcnn")
class ProposalLayer(GraphLayer):
    """Turns anchor scores and deltas into proposals.

    Keeps the PRE_NMS_LIMIT best-scoring anchors, applies their deltas (times
    RPN_BBOX_STD_DEV), clips to [0, 0, 1, 1], runs NMS at `nms_threshold` and
    zero-pads to `proposal_count`: one NMS op for the batch (tf_ops'
    ranked_nms), giving per image what tf.image.non_max_suppression gives,
    ties in score included (to the lower anchor index), as in matterport.

    Inputs: rpn_probs [batch, anchors, 2], rpn_bbox [batch, anchors, 4],
    anchors [batch, anchors, 4] (normalised).
    Output: proposals [batch, proposal_count, (y1, x1, y2, x2)], normalised,
    in descending score order. A box that is not finite (NaN, inf or huge
    deltas: broken or diverged RPN weights) is dropped, so the heads never
    see one; with all dropped, the proposals are all padding. They carry no gradient: stage 2 must not
    train the RPN's refinement (matterport's stated intent, issue #343, and
    what Detectron and torchvision do), yet in matterport the gradients of
    the box and mask targets still reached the RPN through the proposals.

    `config` (matterport's argument) supplies PRE_NMS_LIMIT and
    RPN_BBOX_STD_DEV unless they are given (`GraphLayer.settings`);
    `from_model_config(config, proposal_count=...)` takes RPN_NMS_THRESHOLD
    too. `get_config` stores the values.
    """

    CONFIG_ATTRIBUTES: ClassVar[dict] = {
        "nms_threshold": "RPN_NMS_THRESHOLD",
        "pre_nms_limit": "PRE_NMS_LIMIT",
        "rpn_bbox_std_dev": "RPN_BBOX_STD_DEV",
    }

    def __init__(self, proposal_count, nms_threshold, config=None, pre_nms_limit=None,
                 rpn_bbox_std_dev=None, **kwargs):
        super().__init__(**kwargs)
        values = self.settings(config, nms_threshold=nms_threshold, pre_nms_limit=pre_nms_limit,
                               rpn_bbox_std_dev=rpn_bbox_std_dev)
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(values["nms_threshold"])
        self.pre_nms_limit = int(values["pre_nms_limit"])
        self.rpn_bbox_std_dev = [float(v) for v in values["rpn_bbox_std_dev"]]

    def call(self, inputs):
        rpn_probs, rpn_bbox, anchors = (tf.cast(t, tf.float32) for t in inputs)
        scores = rpn_probs[:, :, 1]
        deltas = rpn_bbox * tf.constant(self.rpn_bbox_std_dev, tf.float32)
        pre_nms_limit = tf.minimum(self.pre_nms_limit, tf.shape(anchors)[1])
        ix = tf.nn.top_k(scores, pre_nms_limit, sorted=True, name="top_anchors").indices
        deltas = tf.gather(deltas, ix, batch_dims=1)
        boxes = apply_box_deltas_graph(tf.gather(anchors, ix, batch_dims=1), deltas)
        boxes, finite = finite_boxes(clip_boxes_graph(boxes, tf.constant([0., 0., 1., 1.])))
        # top_k put the boxes by descending score, ties to the lower anchor index: the
        # order non_max_suppression considers them in. Rank keys n, n - 1, ..., 1 make
        # combined NMS follow it (exact in float32 while n < 2**24).
        keys = tf.cast(tf.range(tf.shape(ix)[1], 0, -1), tf.float32)
        keys = tf.where(finite, tf.broadcast_to(keys, tf.shape(ix)), -1.0)
        proposals = ranked_nms(boxes, keys, self.proposal_count, self.nms_threshold)[0]
        return tf.stop_gradient(proposals)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        return {**super().get_config(), "proposal_count": self.proposal_count,
                "nms_threshold": self.nms_threshold, "pre_nms_limit": self.pre_nms_limit,
                "rpn_bbox_std_dev": self.rpn_bbox_std_dev}


@keras.saving.register_keras_serializable(package="mrcnn")
class AnchorsLayer(GraphLayer):
    """The anchor pyramid for a fixed image shape, broadcast to the batch of
    its input ([batch, anchors, 4], normalised coordinates).

    matterport's training graph held the anchors in a Lambda-made variable;
    here they are `geometry.normalized_anchors` of the constructor's
    arguments (those of `utils.generate_pyramid_anchors`, and the image
    shape), the array `MaskRCNN.get_anchors` returns, and enter the graph as
    a constant, so they are neither trained nor written to weight files.
    """

    def __init__(self, scales, ratios, feature_shapes, feature_strides, anchor_stride,
                 image_shape, **kwargs):
        super().__init__(**kwargs)
        self.scales = [float(s) for s in scales]
        self.ratios = [float(r) for r in ratios]
        self.feature_shapes = [[int(d) for d in shape] for shape in feature_shapes]
        self.feature_strides = [int(s) for s in feature_strides]
        self.anchor_stride = int(anchor_stride)
        self.image_shape = [int(d) for d in image_shape[:2]]
        self.anchors = normalized_anchors(
            anchor_params(self.scales, self.ratios, self.feature_shapes, self.feature_strides,
                          self.anchor_stride), self.image_shape)

    def call(self, inputs):
        anchors = tf.constant(self.anchors)
        return tf.broadcast_to(anchors, tf.concat([tf.shape(inputs)[:1], tf.shape(anchors)], 0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.anchors.shape

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, "ratios": self.ratios,
                "feature_shapes": self.feature_shapes, "feature_strides": self.feature_strides,
                "anchor_stride": self.anchor_stride, "image_shape": self.image_shape}


def rpn_class_loss_graph(rpn_match, rpn_class_logits):
    """RPN anchor classifier loss: cross-entropy over the anchors with
    rpn_match [batch, anchors, 1] = 1 (FG) or -1 (BG); 0 (neutral) is ignored.
    Mean over those anchors, 0 when there are none."""
    rpn_match = tf.squeeze(rpn_match, -1)
    anchor_class = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    indices = tf.where(tf.not_equal(rpn_match, 0))
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.gather_nd(anchor_class, indices),
        logits=tf.gather_nd(rpn_class_logits, indices))
    return mean_or_zero(loss)


def rpn_bbox_loss_graph(config, target_bbox, rpn_match, rpn_bbox):
    """RPN box loss: smooth-L1 between the deltas of the positive anchors
    (rpn_match == 1, in anchor order) and target_bbox [batch, max positives,
    4], whose rows are the positives' targets in the same order, zero padded.
    Mean over elements, 0 when there are no positives.

    `config` is unused (matterport needed its IMAGES_PER_GPU); it is kept so
    that matterport's calls work unchanged."""
    rpn_match = tf.squeeze(rpn_match, -1)
    positive = tf.equal(rpn_match, 1)
    rpn_bbox = tf.gather_nd(rpn_bbox, tf.where(positive))
    target_bbox = batch_pack_graph(target_bbox, tf.reduce_sum(tf.cast(positive, tf.int32), axis=1))
    return mean_or_zero(smooth_l1_loss(target_bbox, rpn_bbox))


@keras.saving.register_keras_serializable(package="mrcnn")
class RpnClassLoss(LossLayer):
    """`rpn_class_loss_graph` as a layer: inputs [input_rpn_match, rpn_class_logits]."""

    loss_graph = staticmethod(rpn_class_loss_graph)


@keras.saving.register_keras_serializable(package="mrcnn")
class RpnBboxLoss(LossLayer):
    """`rpn_bbox_loss_graph` as a layer: inputs [input_rpn_bbox, input_rpn_match, rpn_bbox]."""

    loss_graph = staticmethod(functools.partial(rpn_bbox_loss_graph, None))

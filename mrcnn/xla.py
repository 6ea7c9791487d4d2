"""Config.XLA: the backbone, FPN and RPN head compiled with XLA, the rest as before.

Only that front part has static shapes all through. What comes after does not
compile with XLA in TF 2.21 (measured, `jit_compile=True` on each layer):

- ProposalLayer and DetectionLayer: `CombinedNonMaxSuppression` has no XLA kernel
  ("No registered 'CombinedNonMaxSuppression' OpKernel for XLA_CPU_JIT devices");
  with auto-clustering (TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit)
  the clusters around it fail instead: "Input 0 to node
  `mrcnn_detection/range_1` with op Range must be a compile-time constant" (a
  tf.range over a count known only at run time).
- PyramidROIAlign (both heads) and DetectionTargetLayer's mask targets:
  "No registered 'CropAndResize' OpKernel for XLA_CPU_JIT devices".
- The classifier and mask heads between them do compile (static [batch, rois,
  7, 7, 256] inputs), but are one large convolution/matmul each, where XLA on
  CPU was not faster than TensorFlow's kernels; cut off between two
  non-compilable layers they are not worth a split of their own.

The Keras model is unchanged: the same layers, names and weights
(mrcnn.weights, load_weights(by_name=True) and export see no difference).
`XlaSplit` builds two more keras.Models over the same layers -- the front
(input_image -> P2..P5 and the RPN outputs) and the back (the rest, from those
tensors) -- and runs the front in a `tf.function(jit_compile=True)`. The
SavedModel export (mrcnn.export) calls the Keras model itself, so it stays
without XLA. See benchmarks/README.md for the measurements behind the default.
"""

import keras
import tensorflow as tf

from mrcnn.mask_rcnn import inputs_in_order

__all__ = [
    "FEATURE_MAPS", "RPN_OUTPUTS", "XlaSplit",
]

FEATURE_MAPS = ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5")
RPN_OUTPUTS = {"training": ("rpn_class_logits", "rpn_class", "rpn_bbox"),
               "inference": ("rpn_class", "rpn_bbox")}


class XlaSplit:
    """Calls `keras_model` as front (XLA) + back (no XLA); returns its outputs in its order.

    Called with the model's inputs (a list in `keras_model.inputs` order, or a
    dict by input name) and `training`; the front's tf.function is traced once
    per input shape and `training` value, like the model's own function.
    """

    def __init__(self, keras_model, mode):
        self.keras_model = keras_model
        cut = [keras_model.get_layer(name).output for name in FEATURE_MAPS + RPN_OUTPUTS[mode]]
        image = next(t for t in keras_model.inputs if t.name == "input_image")
        self.front = keras.Model(image, cut, name="xla_front")
        # The back's outputs must not be its inputs (Keras would clone them), so the
        # RPN outputs that are also model outputs come from the front.
        self._from_front = [next((i for i, c in enumerate(cut) if c is t), None)
                            for t in keras_model.outputs]
        rest = [t for t, i in zip(keras_model.outputs, self._from_front) if i is None]
        self.back = keras.Model(cut + list(keras_model.inputs), rest, name="xla_back")
        self._front_fn = tf.function(self._run_front, jit_compile=True)

    def _run_front(self, image, training):
        return self.front(image, training=training)

    def __call__(self, inputs, training=False):
        if isinstance(inputs, dict):
            inputs = inputs_in_order(self.keras_model, inputs)
        named = dict(zip((t.name for t in self.keras_model.inputs), inputs))
        cut = list(self._front_fn(named["input_image"], training))
        rest = iter(self.back(cut + list(inputs), training=training))
        return [next(rest) if i is None else cut[i] for i in self._from_front]

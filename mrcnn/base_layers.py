"""What every custom layer builds on: the weightless base layers and the BatchNorm policy."""

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


def is_symbolic(inputs):
    """True while a layer is being wired into a functional graph."""
    return any(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(inputs))


@keras.saving.register_keras_serializable(package="mrcnn")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization whose `training=False` at graph-building time sticks.

    matterport wires every BN with `training=config.TRAIN_BN`; False freezes
    the layer: it normalises with its moving statistics, in training too.
    Keras 2 baked that argument into the graph, but a Keras 3 functional model
    replaces it with the model's own `training` flag, which would silently
    unfreeze these layers in `fit`. So a BatchNorm wired with `training=False`
    records `frozen=True` (serialised) and always runs in inference mode;
    gamma and beta still train when the layer is trainable, as in matterport.
    Otherwise `training` passes through unchanged.
    """

    def __init__(self, *args, frozen=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen = bool(frozen)

    def __call__(self, inputs, *args, **kwargs):
        if kwargs.get("training") is False and is_symbolic(inputs):
            self.frozen = True
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False if self.frozen else training, mask=mask)

    def get_config(self):
        return {**super().get_config(), "frozen": self.frozen}


def bn_training(train_bn):
    """The `training` argument for BN layers given matterport's train_bn flag.

    False: frozen. None (matterport's "train BN, the normal mode") and True:
    follow the model's phase. matterport passed train_bn itself, so True forced
    batch statistics even at inference (a known bug)."""
    return None if train_bn is None or train_bn else False

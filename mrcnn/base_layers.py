"""What every custom layer builds on: the weightless base layers and the BatchNorm policy."""

from typing import ClassVar

import keras
import tensorflow as tf

__all__ = [
    "GraphLayer", "LossLayer", "is_symbolic", "BatchNorm", "bn_training",
]


class GraphLayer(keras.layers.Layer):
    """Base of the weightless custom layers.

    They compute in float32 whatever the global dtype policy (box arithmetic
    needs it), and declare `supports_jit = False`: their dynamic shapes (NMS,
    tf.where, map_fn) do not compile with XLA, and Keras' default
    jit_compile="auto" would otherwise turn XLA on for the model on GPUs.

    Settings reach a layer one way: plain constructor arguments, which
    `get_config` stores as they are. `from_model_config(config, **arguments)`
    builds a layer from a mrcnn `Config` (detectron2's `from_config`
    pattern) through `config_arguments`, the layer's one mapping from Config
    attributes to arguments (CONFIG_ATTRIBUTES: argument -> attribute, or an
    override for computed ones). It is not named `from_config`: Keras
    reserves `Layer.from_config(dict)` for deserialisation from
    `get_config`'s dict. The layers with matterport's `config=` argument
    (ProposalLayer, DetectionTargetLayer, DetectionLayer) pass it to
    `settings`, which fills the arguments not given through that same
    mapping.
    """

    CONFIG_ATTRIBUTES: ClassVar[dict] = {}   # constructor argument -> Config attribute
    SETTING_DEFAULTS: ClassVar[dict] = {}    # defaults of arguments that matterport's Config did not have

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.supports_jit = False

    @classmethod
    def config_arguments(cls, config):
        """{constructor argument: value} read from a mrcnn Config."""
        return {arg: getattr(config, attr) for arg, attr in cls.CONFIG_ATTRIBUTES.items()}

    @classmethod
    def from_model_config(cls, config, **arguments):
        """The layer with its settings from `config`; `arguments` (e.g. name) are added or replace them."""
        return cls(**{**cls.config_arguments(config), **arguments})

    @classmethod
    def settings(cls, config, **given):
        """The CONFIG_ATTRIBUTES arguments for matterport's `config=`: each given
        one (not None), else `config`'s, else its SETTING_DEFAULTS value."""
        values = {**cls.SETTING_DEFAULTS, **(cls.config_arguments(config) if config is not None else {}),
                  **{arg: value for arg, value in given.items() if value is not None}}
        missing = [arg for arg in given if values.get(arg) is None]
        if missing:
            raise ValueError(f"{cls.__name__}: pass config or {', '.join(missing)}.")
        return values


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

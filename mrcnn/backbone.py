"""ResNet-50/101 backbone with matterport's layer names."""

import math

import keras
import numpy as np

from mrcnn.base_layers import BatchNorm, bn_training

__all__ = [
    "identity_block", "conv_block", "resnet_graph", "compute_backbone_shapes",
]


def _bottleneck(input_tensor, kernel_size, filters, stage, block, strides,
                shortcut, use_bias, train_bn):
    nb_filter1, nb_filter2, nb_filter3 = filters
    conv_name = f"res{stage}{block}_branch"
    bn_name = f"bn{stage}{block}_branch"
    training = bn_training(train_bn)

    x = keras.layers.Conv2D(nb_filter1, (1, 1), strides=strides, name=conv_name + "2a",
                            use_bias=use_bias)(input_tensor)
    x = BatchNorm(name=bn_name + "2a")(x, training=training)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(nb_filter2, (kernel_size, kernel_size), padding="same",
                            name=conv_name + "2b", use_bias=use_bias)(x)
    x = BatchNorm(name=bn_name + "2b")(x, training=training)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(nb_filter3, (1, 1), name=conv_name + "2c", use_bias=use_bias)(x)
    x = BatchNorm(name=bn_name + "2c")(x, training=training)

    if shortcut:
        input_tensor = keras.layers.Conv2D(nb_filter3, (1, 1), strides=strides,
                                           name=conv_name + "1", use_bias=use_bias)(input_tensor)
        input_tensor = BatchNorm(name=bn_name + "1")(input_tensor, training=training)
    x = keras.layers.Add()([x, input_tensor])
    return keras.layers.Activation("relu", name=f"res{stage}{block}_out")(x)


def identity_block(input_tensor, kernel_size, filters, stage, block,
                   use_bias=True, train_bn=True):
    """Bottleneck block whose shortcut is the input itself."""
    return _bottleneck(input_tensor, kernel_size, filters, stage, block, (1, 1),
                       False, use_bias, train_bn)


def conv_block(input_tensor, kernel_size, filters, stage, block,
               strides=(2, 2), use_bias=True, train_bn=True):
    """Bottleneck block with a strided 1x1 convolution on the shortcut."""
    return _bottleneck(input_tensor, kernel_size, filters, stage, block, strides,
                       True, use_bias, train_bn)


def resnet_graph(input_image, architecture, stage5=False, train_bn=True):
    """ResNet-50 or -101 on `input_image`; returns [C1, C2, C3, C4, C5]
    (C5 is None unless stage5)."""
    if architecture not in ("resnet50", "resnet101"):
        raise ValueError(f"architecture is {architecture!r}; use 'resnet50' or 'resnet101'.")
    x = keras.layers.ZeroPadding2D((3, 3))(input_image)
    x = keras.layers.Conv2D(64, (7, 7), strides=(2, 2), name="conv1", use_bias=True)(x)
    x = BatchNorm(name="bn_conv1")(x, training=bn_training(train_bn))
    x = keras.layers.Activation("relu")(x)
    c1 = x = keras.layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)

    x = conv_block(x, 3, [64, 64, 256], stage=2, block="a", strides=(1, 1), train_bn=train_bn)
    for block in "bc":
        x = identity_block(x, 3, [64, 64, 256], stage=2, block=block, train_bn=train_bn)
    c2 = x

    x = conv_block(x, 3, [128, 128, 512], stage=3, block="a", train_bn=train_bn)
    for block in "bcd":
        x = identity_block(x, 3, [128, 128, 512], stage=3, block=block, train_bn=train_bn)
    c3 = x

    x = conv_block(x, 3, [256, 256, 1024], stage=4, block="a", train_bn=train_bn)
    for i in range({"resnet50": 5, "resnet101": 22}[architecture]):
        x = identity_block(x, 3, [256, 256, 1024], stage=4, block=chr(98 + i), train_bn=train_bn)
    c4 = x

    c5 = None
    if stage5:
        x = conv_block(x, 3, [512, 512, 2048], stage=5, block="a", train_bn=train_bn)
        for block in "bc":
            x = identity_block(x, 3, [512, 512, 2048], stage=5, block=block, train_bn=train_bn)
        c5 = x
    return [c1, c2, c3, c4, c5]


def compute_backbone_shapes(config, image_shape):
    """[[height, width]] of the feature map at each of config.BACKBONE_STRIDES."""
    if callable(config.BACKBONE):
        return config.COMPUTE_BACKBONE_SHAPE(image_shape)
    if config.BACKBONE not in ("resnet50", "resnet101"):
        raise ValueError(f"config.BACKBONE is {config.BACKBONE!r}; use 'resnet50', "
                         "'resnet101' or a callable with COMPUTE_BACKBONE_SHAPE.")
    return np.array([[int(math.ceil(image_shape[0] / stride)),
                      int(math.ceil(image_shape[1] / stride))]
                     for stride in config.BACKBONE_STRIDES])

"""ImageNet weights for the ResNet backbones, with matterport's layer names.

ResNet-50: matterport's own file (fchollet's deep-learning-models release),
whose names (res2a_branch2a, ...) already are resnet_graph's.

ResNet-101 (beyond matterport, which loaded the ResNet-50 file into ResNet-101
models): keras.applications' published "notop" file, converted once into our
Keras-2 layout with matterport's names. The name mapping:

    conv1_conv                -> conv1             conv1_bn -> bn_conv1
    conv{S}_block{B}_0_conv   -> res{S}{L}_branch1     (..._bn -> bn{S}{L}_branch1)
    conv{S}_block{B}_1_conv   -> res{S}{L}_branch2a
    conv{S}_block{B}_2_conv   -> res{S}{L}_branch2b
    conv{S}_block{B}_3_conv   -> res{S}{L}_branch2c

with block letter L = "abc..."[B - 1]; ResNet-101's stage 4 has blocks 1..23,
i.e. res4a..res4w (matterport's `chr(98 + i)` letters, not Caffe's res4b1..b22).

Architecture, compared layer by layer: both put the stride 2 in the first 1x1
conv (and the shortcut) of each stage's first block and use biases in every
conv. Two differences:

- BatchNorm epsilon: keras.applications 1.001e-5, matterport's BatchNorm 1e-3.
  The conversion folds the difference into gamma,
  gamma' = gamma * sqrt(var + 1e-3) / sqrt(var + 1.001e-5), so a BatchNorm
  that normalises with its moving statistics (TRAIN_BN = False, matterport's
  default, and inference) computes exactly what keras.applications' does.
- The stem's max pool: keras.applications pads conv1's output by 1 on every
  side, then pools 3x3/2 "valid"; matterport pools 3x3/2 "same", which pads
  only bottom/right. Same output size, but each pooling window sits one conv1
  pixel (two input pixels) further down and right, so C2..C5 are not identical
  to keras.applications' (the weights are only an initialisation; matterport's
  graph is kept because its trained COCO weights depend on it).
  tests/test_imagenet.py checks that everything except that pool matches.
"""

import os

import keras
import numpy as np

from mrcnn import files
from mrcnn.backbone import resnet_graph
from mrcnn.weights import Keras2File, save_weights_by_name

__all__ = [
    "RESNET50_IMAGENET_URL", "RESNET101_IMAGENET_URL", "KERAS_APPLICATIONS_BN_EPSILON",
    "matterport_name", "backbone_model", "convert_keras_applications_resnet",
    "imagenet_weights",
]

RESNET50_IMAGENET_URL = ("https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
                         "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
# keras.applications.ResNet101(weights="imagenet", include_top=False) downloads this file.
RESNET101_IMAGENET_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                          "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5")
KERAS_APPLICATIONS_BN_EPSILON = 1.001e-5
_BRANCHES = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}


def matterport_name(keras_applications_name):
    """resnet_graph's name for a keras.applications ResNet (v1) layer name, or None if it has no weights there."""
    if keras_applications_name in ("conv1_conv", "conv1_bn"):
        return {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}[keras_applications_name]
    parts = keras_applications_name.split("_")   # conv4_block12_3_bn
    if (len(parts) != 4 or not parts[0].startswith("conv") or not parts[0][4:].isdigit()
            or not parts[1].startswith("block") or not parts[1][5:].isdigit()
            or not 1 <= int(parts[1][5:]) <= 26 or parts[2] not in _BRANCHES
            or parts[3] not in ("conv", "bn")):
        return None
    stage, block = parts[0][4:], int(parts[1][5:])
    letter = chr(ord("a") + block - 1)
    prefix = "res" if parts[3] == "conv" else "bn"
    return f"{prefix}{stage}{letter}_branch{_BRANCHES[parts[2]]}"


def backbone_model(architecture):
    """resnet_graph (C1..C5, BatchNorm frozen) as a keras.Model on images of any size."""
    image = keras.Input((None, None, 3), name="input_image")
    return keras.Model(image, resnet_graph(image, architecture, stage5=True, train_bn=False),
                       name=architecture)


def convert_keras_applications_resnet(source, target, architecture="resnet101"):
    """Write keras.applications ResNet "notop" weights from `source` to `target`
    (atomically) in our Keras-2 layout with matterport's names; returns `target`.

    Every backbone layer must be set from the file and every weight of the file
    used, else a ValueError names what is missing or left over.
    """
    model = backbone_model(architecture)
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    unused, done = [], set()
    with Keras2File(source) as f:
        for name, file_weights in f.groups():
            if not file_weights:
                continue
            target_name = matterport_name(name)
            if target_name not in layers:
                unused.append(name)
                continue
            layer = layers[target_name]
            values = {w.rsplit("/", 1)[-1].split(":")[0]: f.read(ds) for w, ds in file_weights}
            wanted = [v.name for v in layer.weights]
            if sorted(values) != sorted(wanted):
                raise ValueError(f"{source!r}: layer {name!r} has weights {sorted(values)}, "
                                 f"{target_name} needs {sorted(wanted)}.")
            if "gamma" in values:
                var = values["moving_variance"].astype(np.float64)
                values["gamma"] = (values["gamma"] * np.sqrt(var + layer.epsilon)
                                   / np.sqrt(var + KERAS_APPLICATIONS_BN_EPSILON))
            for variable in layer.weights:
                value = values[variable.name]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(f"{source!r}: {name}/{variable.name} has shape {value.shape}, "
                                     f"{target_name} in {architecture} needs {tuple(variable.shape)}.")
                variable.assign(value.astype(variable.dtype))
            done.add(target_name)
    missing = [name for name in layers if name not in done]
    if missing or unused:
        raise ValueError(
            f"{source!r} is not keras.applications' {architecture} ImageNet file (include_top=False): "
            f"{len(missing)} backbone layers not in it (e.g. {missing[:3]}), {len(unused)} layers of "
            f"it with no place in {architecture} (e.g. {unused[:3]}).")
    save_weights_by_name(model, target)
    return target


def imagenet_weights(backbone, url=None, cache_dir=None, verbose=1):
    """Local path of ImageNet weights for `backbone` ("resnet50" or "resnet101")
    that `load_weights(path, by_name=True)` loads; downloads (and for
    ResNet-101 converts) once into `cache_dir` (default: the Keras cache,
    $KERAS_HOME/models or ~/.keras/models). Offline, the error says where to
    put the file by hand."""
    if backbone not in ("resnet50", "resnet101"):
        raise ValueError(f"No ImageNet weights for backbone {backbone!r}: only 'resnet50' and "
                         "'resnet101' have them; pass backbone='resnet50' or 'resnet101', or "
                         "train a custom backbone from scratch.")
    url = url or {"resnet50": RESNET50_IMAGENET_URL, "resnet101": RESNET101_IMAGENET_URL}[backbone]
    folder = cache_dir or os.path.join(
        os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
    source = os.path.join(folder, url.rsplit("/", 1)[-1])
    target = source if backbone == "resnet50" else os.path.splitext(source)[0] + "_mrcnn.h5"
    if os.path.exists(target):
        return target
    if not os.path.exists(source):
        what = "ResNet-50 ImageNet weights" if backbone == "resnet50" else \
            "keras.applications' ResNet-101 ImageNet weights"
        files.download_file(url, source, verbose=verbose, what=what)
    if backbone == "resnet101":
        if verbose:
            print(f"Converting {source} to matterport's layer names: {target}")
        try:
            convert_keras_applications_resnet(source, target, backbone)
        except ValueError as err:
            raise ValueError(f"{err} Delete {source!r} to download it again.") from err
    return target

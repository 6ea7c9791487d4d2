"""MaskRCNN.train()'s paths: the NaN stop, layer selection by preset and regex, the
"already trained" shortcut, and last_checkpoint over several run folders."""

import os
import re

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.training_state import state_path
from mrcnn.weights import save_weights_by_name
from samples.shapes.shapes import lite_backbone, lite_backbone_shapes
from tests.conftest import TinyConfig


class Quick(TinyConfig):
    STEPS_PER_EPOCH = 3
    VALIDATION_STEPS = 0


class QuickRandomRoIs(Quick):
    """The heads on random RoIs around the GT boxes: every step has positives, so the mask
    head gets a gradient (an untrained RPN's proposals often have none)."""
    USE_RPN_ROIS = False


class LiteQuick(Quick):
    """Quick on the shapes sample's small backbone, for tests that need steps, not ResNet names."""
    BACKBONE = staticmethod(lite_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(lite_backbone_shapes)
    STEPS_PER_EPOCH = 2


def layer_values(keras_model):
    """{leaf layer name: [weight arrays]}, the nested rpn_model opened."""
    out = {}
    for layer in keras_model._flatten_layers(include_self=False):
        if layer.weights and not isinstance(layer, keras.Model):
            out[layer.name] = [np.array(v.numpy()) for v in layer.weights]
    return out


class PoisonAt(keras.callbacks.Callback):
    """Set the class logits' kernel to inf before step `step` (1-based) of epoch `epoch`."""

    def __init__(self, keras_model, epoch, step):
        super().__init__()
        self.kernel = next(v for v in keras_model.get_layer("mrcnn_class_logits").weights if v.name == "kernel")
        self.at, self.epoch = (epoch, step), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch + 1) == self.at:
            self.kernel.assign(np.full(self.kernel.shape, np.inf, np.float32))


class Snapshot(keras.callbacks.Callback):
    """The bytes and mtime of a checkpoint right after epoch `epoch` (1-based) wrote it."""

    def __init__(self, path, epoch):
        super().__init__()
        self.path, self.epoch, self.taken = path, epoch, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.taken = (os.stat(self.path).st_mtime_ns, open(self.path, "rb").read())


@pytest.mark.large
def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(shapes_train, tmp_path):
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("training", LiteQuick(), str(tmp_path))
    first = model.checkpoint_path.format(epoch=1)
    snapshot = Snapshot(first, epoch=1)
    with pytest.raises(modellib.TrainingDiverged, match=r"became (nan|inf) at epoch 2, step 2\b"):
        model.train(shapes_train, None, 0.001, epochs=2, layers="heads",
                    custom_callbacks=[snapshot, PoisonAt(model.keras_model, epoch=2, step=2)])
    assert sorted(f for f in os.listdir(model.log_dir) if f.endswith(".h5")) == [
        os.path.basename(first), os.path.basename(state_path(first))]
    assert (os.stat(first).st_mtime_ns, open(first, "rb").read()) == snapshot.taken
    assert model.find_last() == first


def trainable_layer_names(keras_model):
    """Names of the layers owning the variables train_step differentiates."""
    owners = {id(v): layer.name for layer in keras_model._flatten_layers(include_self=False)
              if not isinstance(layer, keras.Model) for v in layer.weights}
    return {owners[id(v)] for v in keras_model.trainable_weights}


@pytest.mark.large
def test_layers_presets_and_regex_train_exactly_the_matching_layers(shapes_train, tmp_path):
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("training", QuickRandomRoIs(), str(tmp_path))
    names = set(layer_values(model.keras_model))
    heads = {n for n in names if n.startswith(("mrcnn_", "rpn_", "fpn_"))}
    stage = {k: {n for n in names if n.startswith((f"res{k}", f"bn{k}"))} for k in (2, 3, 4, 5)}
    assert "rpn_conv_shared" in heads and "res3a_branch2a" in stage[3] and "bn5c_branch2c" in stage[5]
    assert all(stage.values()) and {"conv1", "bn_conv1"} <= names
    for layers, expected in (("3+", heads | stage[3] | stage[4] | stage[5]),
                             ("5+", heads | stage[5]),
                             (r"mrcnn_mask.*|rpn_class_raw", {n for n in heads if n.startswith("mrcnn_mask")}
                              | {"rpn_class_raw"})):
        assert model.train(shapes_train, None, 0.001, epochs=0, layers=layers) is None  # selects, fits nothing
        assert trainable_layer_names(model.keras_model) == expected, layers

    before = layer_values(model.keras_model)
    model.config.STEPS_PER_EPOCH = 1
    model.train(shapes_train, None, 0.01, epochs=1, layers=r"mrcnn_mask.*|rpn_class_raw")
    after = layer_values(model.keras_model)
    changed = {n for n in names if any(not np.array_equal(a, b) for a, b in zip(before[n], after[n]))}
    assert "mrcnn_mask" in changed and "rpn_class_raw" in changed
    assert changed <= {n for n in names if re.fullmatch(r"mrcnn_mask.*|rpn_class_raw", n)}


def test_train_up_to_an_epoch_already_reached_trains_nothing(shapes_train, tmp_path, capsys):
    model = modellib.MaskRCNN("training", Quick(), str(tmp_path))
    model.set_log_dir(os.path.join(str(tmp_path), "tiny20260101T1200", "mask_rcnn_tiny_0003.h5"))
    assert model.epoch == 3
    before = layer_values(model.keras_model)
    for epochs in (3, 2):
        assert model.train(shapes_train, None, 0.001, epochs=epochs, layers="heads") is None
        assert "Already trained up to epoch 3; pass epochs > 3" in capsys.readouterr().out
    assert model.epoch == 3 and os.listdir(model.log_dir) == []
    after = layer_values(model.keras_model)
    assert all(np.array_equal(a, b) for n in before for a, b in zip(before[n], after[n]))


def write_checkpoint(path, complete=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    inp = keras.Input((2,))
    save_weights_by_name(keras.Model(inp, keras.layers.Dense(1, name="mrcnn_bbox_fc")(inp)), path)
    if not complete:
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 3])


def test_last_checkpoint_across_run_folders(tmp_path):
    logs = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="Could not find a checkpoint of config 'tiny'"):
        modellib.last_checkpoint(logs, "tiny")
    older = os.path.join(logs, "tiny20260101T0900")
    for epoch in (9, 10):
        write_checkpoint(os.path.join(older, f"mask_rcnn_tiny_{epoch:04d}.h5"))
    assert modellib.last_checkpoint(logs, "TINY") == os.path.join(older, "mask_rcnn_tiny_0010.h5")
    newer = os.path.join(logs, "tiny20260102T0900")
    write_checkpoint(os.path.join(newer, "mask_rcnn_tiny_0001.h5"), complete=False)   # cut off mid-write
    write_checkpoint(os.path.join(logs, "other20270101T0000", "mask_rcnn_other_0005.h5"))
    write_checkpoint(os.path.join(logs, "tinyish20270101T0000", "mask_rcnn_tinyish_0005.h5"))
    assert modellib.last_checkpoint(logs, "tiny") == os.path.join(older, "mask_rcnn_tiny_0010.h5")
    write_checkpoint(os.path.join(newer, "mask_rcnn_tiny_0002.h5"))
    assert modellib.last_checkpoint(logs, "tiny") == os.path.join(newer, "mask_rcnn_tiny_0002.h5")

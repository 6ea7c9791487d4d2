"""Config.XLA: the backbone, FPN and RPN head compiled with XLA give the plain model's
detections, losses and weight updates, keep the weight contract, trace once, and export
without XLA."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import model as modellib
from mrcnn.mask_rcnn import outputs_by_name
from mrcnn.weights import save_weights_by_name
from tests.conftest import TinyConfig
from tests.test_graph import TinyBackboneConfig, training_batch


class DetectConfig(TinyConfig):
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.0   # random weights: keep every detection


def test_xla_setting_is_validated_and_displayed(capsys):
    class Bad(TinyConfig):
        XLA = "yes"

    with pytest.raises(ValueError, match=r"Bad\.XLA is 'yes'.*True .*or False"):
        Bad()

    class On(TinyConfig):
        XLA = True

    On().display()
    assert any(line.split() == ["XLA", "True"] for line in capsys.readouterr().out.splitlines())
    assert TinyConfig().XLA is False


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """A plain detector with random weights and an XLA one loaded from its weights file by name."""
    logs = str(tmp_path_factory.mktemp("logs"))
    keras.utils.set_random_seed(0)
    plain = modellib.MaskRCNN("inference", DetectConfig(), logs)
    path = str(tmp_path_factory.mktemp("weights") / "plain.h5")
    save_weights_by_name(plain.keras_model, path)

    class XlaConfig(DetectConfig):
        XLA = True

    keras.utils.set_random_seed(1)  # different initial weights, all replaced by the file's
    xla = modellib.MaskRCNN("inference", XlaConfig(), logs)
    report = xla.load_weights(path, by_name=False)
    return plain, xla, report


def test_xla_model_keeps_the_layers_and_loads_weights_by_name(detectors, tmp_path):
    plain, xla, report = detectors
    def named(model):   # Keras' automatic names (activation, activation_7, ...) differ by a suffix
        return [re.sub(r"_\d+$", "", layer.name) for layer in model.keras_model.layers]
    assert named(xla) == named(plain) and len(xla.keras_model.layers) == len(plain.keras_model.layers)
    assert "rpn_model" in named(xla) and "fpn_p2" in named(xla) and "xla_front" not in named(xla)
    assert not report.missing_from_file and not report.not_in_model
    for a, b in zip(plain.keras_model.weights, xla.keras_model.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    save_weights_by_name(xla.keras_model, str(tmp_path / "xla.h5"))   # and saves them by name
    assert plain.load_weights(str(tmp_path / "xla.h5"), by_name=False)


@pytest.mark.large
def test_xla_detect_equals_plain_detect_and_does_not_retrace(detectors, shapes_val):
    """Same detections within 1e-3 in scores and 1 px in boxes, raw mask probabilities within
    1e-2 (measured on bench_model's ResNet-50 configs: detections 1e-4, mask probabilities
    1.5e-3 at most: XLA fuses and reorders the backbone's float sums); a second detect()
    traces and compiles nothing."""
    plain, xla, _ = detectors
    images = [shapes_val.load_image(0)]
    expected = plain.detect(images)
    got = xla.detect(images)
    for e, g in zip(expected, got):
        assert len(e["class_ids"]) == len(g["class_ids"]) == DetectConfig.DETECTION_MAX_INSTANCES
        np.testing.assert_array_equal(g["class_ids"], e["class_ids"])
        np.testing.assert_allclose(g["scores"], e["scores"], atol=1e-3)
        np.testing.assert_allclose(g["rois"], e["rois"], atol=1)
        assert np.mean(g["masks"] != e["masks"]) < 1e-3
    # Raw outputs: detections and mask probabilities.
    molded, metas, _ = plain.mold_inputs(images)
    inputs = [tf.constant(x) for x in plain._inference_inputs(molded, metas)]
    a, b = (outputs_by_name(m.keras_model, m._predict(inputs)) for m in (plain, xla))
    for name, atol in (("mrcnn_detection", 1e-3), ("mrcnn_mask", 1e-2)):
        np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), atol=atol, err_msg=name)
    split = xla._xla_split
    counts = (xla._predict.experimental_get_tracing_count(),
              split._front_fn.experimental_get_tracing_count())
    assert counts == (1, 1)
    xla.detect([shapes_val.load_image(1)])
    assert (xla._predict.experimental_get_tracing_count(),
            split._front_fn.experimental_get_tracing_count()) == counts


@pytest.mark.large
def test_export_of_an_xla_model_runs_without_xla(detectors, tmp_path):
    """Export falls back to the plain graph: the SavedModel calls the Keras model itself, so no
    function in it is XLA-compiled (what it computes is test_export's business)."""
    _, xla, _ = detectors
    path = xla.export_saved_model(tmp_path / "saved")
    graph_text = open(os.path.join(path, "saved_model.pb"), "rb").read()
    assert b"detect_image" in graph_text and b"_XlaMustCompile" not in graph_text


class TrainConfig(TinyBackboneConfig):
    XLA = True


@pytest.mark.large
def test_xla_training_step_equals_plain_step(tmp_path):
    """Through the XLA front and through the plain model, from the same weights: the same five
    losses (rtol 1e-4) and gradients (1e-3 of each weight's largest), and train_on_batch with
    XLA reports those losses. The RoIs are given (USE_RPN_ROIS False, all negatives equal) so
    that RoI sampling cannot differ."""
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("training", TrainConfig(), str(tmp_path))
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, 0.9)
    km = model.keras_model
    assert km.xla_split is model._xla_split is not None
    data = training_batch(TrainConfig(), 2, np.random.default_rng(3), rois=True)
    data[-1][:, 2:] = [0, 100, 20, 127]
    x = [tf.constant(v) for v in data]
    results = {}
    for name, split in (("plain", None), ("xla", model._xla_split)):
        km.xla_split = split
        with tf.GradientTape() as tape:
            total, losses = km._loss_values(x, training=True)
        results[name] = ({k: float(v) for k, v in losses.items()},
                         tape.gradient(total, km.trainable_weights))
    (plain_losses, plain_grads), (xla_losses, xla_grads) = results["plain"], results["xla"]
    for key in plain_losses:
        np.testing.assert_allclose(xla_losses[key], plain_losses[key], rtol=1e-4, err_msg=key)
    checked = 0
    for w, a, b in zip(km.trainable_weights, plain_grads, xla_grads):
        if a is None:
            assert b is None, w.path
            continue
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-3 * np.abs(a.numpy()).max() + 1e-8,
                                   err_msg=w.path)
        checked += 1
    assert checked >= 20
    logs = km.train_on_batch(data, return_dict=True)   # km.xla_split is the XLA one again
    for key, value in plain_losses.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-4, err_msg=key)


def test_xla_training_refuses_seed(tmp_path):
    class Seeded(TrainConfig):
        SEED = 0

    with pytest.raises(ValueError, match="XLA = True cannot train with Config.SEED"):
        modellib.MaskRCNN("training", Seeded(), str(tmp_path))

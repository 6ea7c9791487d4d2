"""MaskRCNN end to end on the tiny shapes data: learning, freezing, checkpoints, detect()."""

import os
import re

import keras
import numpy as np
import pytest

from mrcnn import model as modellib
from tests.conftest import TinyConfig, local_server

# Every test here trains the tiny model (60 steps) or uses the one trained by the fixture.
pytestmark = pytest.mark.large

LOSSES = ["rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"]


class LearnConfig(TinyConfig):
    STEPS_PER_EPOCH = 10
    VALIDATION_STEPS = 2
    TRAIN_BN = True          # nothing is pretrained: BatchNorm must learn its statistics
    LEARNING_RATE = 0.003
    SEED = 0                 # the same batches every run: unseeded, the loading threads share
                             # np.random and the 60 steps' outcome varied (bbox loss once rose)


class InferConfig(TinyConfig):
    IMAGES_PER_GPU = 1
    TRAIN_BN = True
    DETECTION_MIN_CONFIDENCE = 0.0


def weights_of(keras_model, pattern):
    """{variable path: value} of the variables of layers whose names match `pattern`."""
    out = {}
    for layer in keras_model._flatten_layers(include_self=False):
        if re.fullmatch(pattern, layer.name):
            for v in layer.weights:
                out[v.path] = np.array(v.numpy())
    return out


class FixedRoIConfig(LearnConfig):
    USE_RPN_ROIS = False  # the heads see given RoIs: the same ones before and after training


def fixed_batch_losses(model, dataset, tmp_dir):
    """The five losses on the same 4 held-out batches, with the heads fed the same random RoIs.

    With RPN proposals the head losses average over however many positive
    RoIs the still-learning RPN happens to yield (none at first, which reads as
    zero loss), so they cannot show learning; fixed RoIs around the ground
    truth can. The weights are copied by name into a USE_RPN_ROIS=False model
    and run in training mode (BatchNorm on batch statistics, as in training).
    """
    import keras
    from mrcnn.pipeline import training_dataset
    from mrcnn.weights import save_weights_by_name
    path = os.path.join(tmp_dir, "eval.h5")
    save_weights_by_name(model.keras_model, path)
    evaluator = modellib.MaskRCNN("training", FixedRoIConfig(), tmp_dir)
    evaluator.load_weights(path, by_name=True)
    keras.utils.set_random_seed(123)
    batches = training_dataset(dataset, evaluator.config, shuffle=False, steps=4, seed=123,
                               random_rois=FixedRoIConfig.POST_NMS_ROIS_TRAINING).take(4)
    km = evaluator.keras_model
    values = {name: [] for name in LOSSES}
    for batch in batches:
        outputs = dict(zip(km.output_names, km(batch, training=True)))
        for name in LOSSES:
            values[name].append(float(np.mean(outputs[name])))
    return {name: float(np.mean(v)) for name, v in values.items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_train, shapes_val):
    """heads for 3 epochs of 10 steps, then all layers for 3 more, recording what the tests check."""
    import keras
    keras.utils.set_random_seed(0)
    model_dir = str(tmp_path_factory.mktemp("logs"))
    model = modellib.MaskRCNN("training", LearnConfig(), model_dir)
    losses_before = fixed_batch_losses(model, shapes_val, str(tmp_path_factory.mktemp("eval")))
    before = weights_of(model.keras_model, r"(conv1|bn_conv1|res\d.*|bn\d.*)")
    heads_before = weights_of(model.keras_model, r"(mrcnn_.*|rpn_.*|fpn_.*)")
    h1 = model.train(shapes_train, shapes_val, LearnConfig.LEARNING_RATE, epochs=3, layers="heads")
    after_heads = weights_of(model.keras_model, r"(conv1|bn_conv1|res\d.*|bn\d.*)")
    heads_after = weights_of(model.keras_model, r"(mrcnn_.*|rpn_.*|fpn_.*)")
    h2 = model.train(shapes_train, shapes_val, LearnConfig.LEARNING_RATE / 2, epochs=6, layers="all")
    losses_after = fixed_batch_losses(model, shapes_val, str(tmp_path_factory.mktemp("eval")))
    return dict(model=model, model_dir=model_dir, h1=h1.history, h2=h2.history, before=before,
                after_heads=after_heads, heads_before=heads_before, heads_after=heads_after,
                losses_before=losses_before, losses_after=losses_after)


def test_heads_training_leaves_backbone_bit_identical(trained):
    before, after = trained["before"], trained["after_heads"]
    assert len(before) > 100 and before.keys() == after.keys()
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed == []
    heads_changed = [k for k in trained["heads_before"]
                     if not np.array_equal(trained["heads_before"][k], trained["heads_after"][k])]
    assert len(heads_changed) > 10


def test_every_loss_goes_down(trained):
    """60 steps (heads, then all) lower each of the five losses on the same held-out batches."""
    h1, h2 = trained["h1"], trained["h2"]
    assert len(h1["loss"]) == 3 and len(h2["loss"]) == 3 and all(np.isfinite(h2["loss"]))
    assert np.mean(h2["loss"][-2:]) < h1["loss"][0]
    before, after = trained["losses_before"], trained["losses_after"]
    for name in LOSSES:
        assert after[name] < before[name], f"{name}: {before[name]:.4f} before, {after[name]:.4f} after"
    assert "val_loss" in h2 and np.isfinite(h2["val_loss"][-1])


def test_checkpoints_per_epoch_and_find_last(trained):
    model = trained["model"]
    assert model.epoch == 6
    files = sorted(os.listdir(model.log_dir))
    checkpoints = [f for f in files if f.endswith(".h5")]
    assert checkpoints == sorted([f"mask_rcnn_tiny_{e:04d}{kind}.h5" for e in range(1, 7)
                                  for kind in ("", ".state")])
    assert model.find_last() == os.path.join(model.log_dir, "mask_rcnn_tiny_0006.h5")
    # TensorBoard gets every loss by name.
    events = b"".join(open(os.path.join(root, f), "rb").read()
                      for root, _, fs in os.walk(os.path.join(model.log_dir, "train")) for f in fs)
    for name in LOSSES:
        assert name.encode() in events, name


def test_find_last_skips_a_checkpoint_cut_off_mid_write(trained):
    model = trained["model"]
    last = model.find_last()
    partial = os.path.join(model.log_dir, "mask_rcnn_tiny_0007.h5")
    with open(last, "rb") as src, open(partial, "wb") as dst:
        dst.write(src.read()[:5000])
    try:
        assert model.find_last() == last
    finally:
        os.remove(partial)


def test_set_log_dir_resumes_epoch_numbering(trained, tmp_path):
    model = modellib.MaskRCNN("inference", InferConfig(), str(tmp_path))
    model.load_weights(trained["model"].find_last(), by_name=True)
    assert model.epoch == 6
    # Same run name (matterport keeps the checkpoint's timestamp), under this model's model_dir.
    assert model.log_dir == os.path.join(str(tmp_path), os.path.basename(trained["model"].log_dir))


@pytest.fixture(scope="module")
def detector(trained, tmp_path_factory):
    model = modellib.MaskRCNN("inference", InferConfig(), str(tmp_path_factory.mktemp("infer")))
    model.load_weights(trained["model"].find_last(), by_name=True)
    return model


def test_training_and_inference_weights_agree_layer_by_layer(trained, detector):
    train_w = {layer.name: layer.get_weights() for layer in trained["model"].keras_model._flatten_layers()
               if layer.weights and not isinstance(layer, type(detector.keras_model))}
    infer_w = {layer.name: layer.get_weights() for layer in detector.keras_model._flatten_layers()
               if layer.weights and not isinstance(layer, type(detector.keras_model))}
    common = set(train_w) & set(infer_w)
    assert len(common) > 100 and "mrcnn_mask" in common and "rpn_conv_shared" in common
    for name in common:
        for a, b in zip(train_w[name], infer_w[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_detect_outputs_and_types(detector, shapes_val):
    image = shapes_val.load_image(0)
    r = detector.detect([image])[0]
    n = len(r["class_ids"])
    assert r["rois"].dtype == np.int32 and r["rois"].shape == (n, 4)
    assert r["class_ids"].dtype == np.int32 and r["scores"].dtype == np.float32
    assert r["masks"].dtype == bool and r["masks"].shape == (128, 128, n)
    assert n > 0 and np.all((r["class_ids"] >= 1) & (r["class_ids"] <= 3))
    assert np.all(np.diff(r["scores"]) <= 1e-6)  # sorted by score
    assert np.all(r["rois"][:, 2] > r["rois"][:, 0]) and np.all(r["rois"] >= 0) and np.all(r["rois"] <= 128)


def test_second_detect_of_same_size_does_not_retrace(detector, shapes_val):
    image = shapes_val.load_image(1)
    detector.detect([image])
    count = detector._predict.experimental_get_tracing_count()
    detector.detect([shapes_val.load_image(2)])
    assert detector._predict.experimental_get_tracing_count() == count


def test_detect_any_image_size_and_kind(detector):
    rng = np.random.default_rng(0)
    for image in [rng.integers(0, 255, (300, 200, 3), dtype=np.uint8),
                  rng.integers(0, 255, (50, 70), dtype=np.uint8),                # grayscale
                  rng.integers(0, 255, (64, 64, 4), dtype=np.uint8),             # RGBA
                  rng.integers(0, 65535, (90, 90, 1), dtype=np.uint16),          # 16-bit, one channel
                  rng.random((33, 47, 3)).astype(np.float32),                    # float in [0, 1]
                  np.zeros((1, 1, 3), np.uint8)]:
        r = detector.detect([image])[0]
        n = len(r["scores"])
        assert r["masks"].shape == image.shape[:2] + (n,)
        assert np.all(r["rois"][:, [0, 2]] <= image.shape[0]) and np.all(r["rois"][:, [1, 3]] <= image.shape[1])


def test_detect_bad_input_is_a_clear_error(detector, shapes_val):
    image = shapes_val.load_image(0)
    with pytest.raises(ValueError, match="got 2 images but BATCH_SIZE is 1"):
        detector.detect([image, image])
    with pytest.raises(ValueError, match="not an image"):
        detector.detect([np.zeros((10, 10, 7), np.uint8)])
    with pytest.raises(ValueError, match="NaN"):
        detector.detect([np.full((10, 10, 3), np.nan, np.float32)])


def test_no_detections_gives_empty_arrays_of_the_right_shape(trained, tmp_path):
    class Strict(InferConfig):
        DETECTION_MIN_CONFIDENCE = 1.0
    model = modellib.MaskRCNN("inference", Strict(), str(tmp_path))
    model.load_weights(trained["model"].find_last(), by_name=True)
    r = model.detect([np.zeros((100, 60, 3), np.uint8)])[0]
    assert r["rois"].shape == (0, 4) and r["rois"].dtype == np.int32
    assert r["class_ids"].shape == (0,) and r["scores"].shape == (0,)
    assert r["masks"].shape == (100, 60, 0) and r["masks"].dtype == bool


def test_save_load_gives_identical_detections(detector, shapes_val, tmp_path):
    from mrcnn.weights import save_weights_by_name
    path = str(tmp_path / "copy.h5")
    save_weights_by_name(detector.keras_model, path)
    other = modellib.MaskRCNN("inference", InferConfig(), str(tmp_path))
    other.load_weights(path, by_name=False)
    image = shapes_val.load_image(3)
    a, b = detector.detect([image])[0], other.detect([image])[0]
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(a[key], b[key])


def test_weights_of_another_class_count_name_the_layers(trained, tmp_path):
    class Five(InferConfig):
        NUM_CLASSES = 1 + 5
    model = modellib.MaskRCNN("inference", Five(), str(tmp_path))
    with pytest.raises(ValueError, match=r"mrcnn_class_logits[\s\S]*exclude="):
        model.load_weights(trained["model"].find_last(), by_name=True)
    report = model.load_weights(trained["model"].find_last(), by_name=True, exclude="heads_for_new_classes")
    assert "mrcnn_class_logits" in report.excluded and "conv1" in report.loaded


def test_layers_4plus_trains_res4_and_res5_but_not_res3(shapes_train, tmp_path):
    class Quick(TinyConfig):
        STEPS_PER_EPOCH = 2
        VALIDATION_STEPS = 0
        OPTIMIZER = "adam"
    model = modellib.MaskRCNN("training", Quick(), str(tmp_path))
    before = weights_of(model.keras_model, r"(res|bn)[345].*")
    model.train(shapes_train, None, 0.001, epochs=1, layers="4+")
    assert isinstance(model.keras_model.optimizer, keras.optimizers.Adam)
    assert model.keras_model.optimizer.beta_1 == Quick.LEARNING_MOMENTUM
    after = weights_of(model.keras_model, r"(res|bn)[345].*")
    changed = {k.split("/")[0][:4] for k in before if not np.array_equal(before[k], after[k])}
    assert {"res4", "res5"} <= changed and not any(c.startswith(("res3", "bn3")) for c in changed)


def test_run_graph_returns_named_intermediates(detector, shapes_val):
    km = detector.keras_model
    out = detector.run_graph([shapes_val.load_image(0)], [
        ("proposals", km.get_layer("ROI").output),
        ("detections", km.get_layer("mrcnn_detection").output),
    ])
    assert list(out) == ["proposals", "detections"]
    assert out["proposals"].shape == (1, InferConfig.POST_NMS_ROIS_INFERENCE, 4)
    assert out["detections"].shape == (1, InferConfig.DETECTION_MAX_INSTANCES, 6)


MIRRORED_TRAIN = """
import os, sys
import keras
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, os.getcwd())
from tests.conftest import TinyConfig, TinyShapes
from mrcnn import model as modellib

class Cfg(TinyConfig):
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 0
ds = TinyShapes(); ds.load_shapes(8, seed=3); ds.prepare()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = modellib.MaskRCNN("training", Cfg(), sys.argv[1])
history = model.train(ds, None, 0.001, epochs=1, layers="heads").history
assert all(np.isfinite(history[k][0]) for k in history), history
print("REPLICAS", strategy.num_replicas_in_sync, "CHECKPOINT", model.find_last())
"""


def test_train_runs_unchanged_under_mirrored_strategy(tmp_path):
    """The user's train() call, inside a MirroredStrategy scope over two logical CPUs."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", MIRRORED_TRAIN, str(tmp_path)], cwd=root,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REPLICAS 2" in result.stdout and "mask_rcnn_tiny_0001.h5" in result.stdout


def test_ancestor_and_trainable_layers(detector):
    km = detector.keras_model
    detections = km.get_layer("mrcnn_detection").output
    assert detector.ancestor(detections, "ROI") is km.get_layer("ROI").output
    assert detector.ancestor(detections, "no_such_layer") is None
    names = [layer.name for layer in detector.get_trainable_layers()]
    assert names[:2] == ["conv1", "bn_conv1"] and "rpn_model" in names and "mrcnn_mask" in names
    assert all(layer.weights for layer in detector.get_trainable_layers())


def test_get_imagenet_weights_downloads_once_into_the_keras_cache(detector, tmp_path, monkeypatch):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "resnet50_notop.h5").write_bytes(b"weights" * 1000)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with local_server(tmp_path / "srv") as server:
        url = f"{server}/resnet50_notop.h5"
        path = detector.get_imagenet_weights(url=url)
        assert path == str(tmp_path / "keras" / "models" / "resnet50_notop.h5")
        assert open(path, "rb").read() == b"weights" * 1000
        (tmp_path / "srv" / "resnet50_notop.h5").unlink()  # a second call must not download again
        assert detector.get_imagenet_weights(url=url) == path

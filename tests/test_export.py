"""Export for serving: the SavedModel, loaded in a process that never imports mrcnn, gives
detect()'s results; in-graph resizing is scikit-image's to the bit; .keras files load in safe mode."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import export, utils
from mrcnn import model as modellib
from tests.conftest import TinyConfig, TinyShapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExportConfig(TinyConfig):
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.0   # random weights: keep every detection


def images():
    """Images of several sizes and kinds (the shapes' plain colours test the truncation to uint8)."""
    rng = np.random.default_rng(0)
    shapes = TinyShapes()
    shapes.load_shapes(2, seed=5, size=96)
    return {"shapes96": shapes.load_image(0),
            "shapes300x200": utils.resize(shapes.load_image(1), (300, 200), order=0,
                                          preserve_range=True).astype(np.uint8),
            "noise50x70": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
            "noise128": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "one_pixel": np.full((1, 1, 3), 200, np.uint8)}


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """Random weights, scaled to behave more like a trained model's: mask logits up (masks with
    edges, not all near 0.5), class logits down (scores spread out, not tied at 1.0), box deltas
    down. Unscaled deltas push many RoIs onto the image border as zero-area boxes, where a one-ulp
    difference between two compiled graphs (even eager vs tf.function of the same model) moves
    crop_and_resize's samples outside the feature map and changes class scores by up to 0.07."""
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", ExportConfig(), str(tmp_path_factory.mktemp("logs")))
    km = model.keras_model
    for layer, factor in ((km.get_layer("mrcnn_mask"), 40), (km.get_layer("mrcnn_class_logits"), 0.05),
                          (km.get_layer("mrcnn_bbox_fc"), 0.1),
                          (km.get_layer("rpn_model").get_layer("rpn_bbox_pred"), 0.1)):
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * factor, bias])
    return model


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """Exported over an existing export-to-be-replaced (overwrite=True)."""
    target = tmp_path_factory.mktemp("export") / "saved"
    target.mkdir()
    (target / "old.txt").write_text("old")
    path = detector.export_saved_model(target, overwrite=True)
    assert "saved_model.pb" in os.listdir(target) and "old.txt" not in os.listdir(target)
    assert os.listdir(target.parent) == ["saved"]         # no temporary folder left
    return path


SERVE = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, inputs, outputs = sys.argv[1:4]
served = tf.saved_model.load(path)
data = dict(np.load(inputs))
results, signatures = {}, {}
for name, fn in served.signatures.items():
    signatures[name] = {
        "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_input_signature[1].items()},
        "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_outputs.items()}}
for key, value in data.items():
    if key.startswith("bytes_"):
        out = served.signatures["serving_bytes"](image_bytes=tf.constant(value.tobytes()))
    else:
        out = served.signatures["serving_default"](image=tf.constant(value))
    for k, v in out.items():
        results[f"{key}/{k}"] = v.numpy()
np.savez(outputs, **results)
errors = {}
for name, call in (("empty", lambda: served.signatures["serving_default"](image=tf.zeros([0, 5, 3], tf.uint8))),
                   ("garbage", lambda: served.signatures["serving_bytes"](image_bytes=tf.constant(b"no image")))):
    try:
        call()
    except Exception as e:
        errors[name] = type(e).__name__ + ": " + str(e)[:3000]
print(json.dumps({"signatures": signatures, "errors": errors,
                  "mrcnn_imported": any(m.startswith("mrcnn") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """Run the export in a fresh interpreter that never imports mrcnn, on images and encoded files."""
    folder = tmp_path_factory.mktemp("serve")
    inputs = images()
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (40, 64, 1), dtype=np.uint8)
    rgba = np.concatenate([inputs["noise50x70"], rng.integers(0, 256, (50, 70, 1), dtype=np.uint8)], -1)
    encoded = {"bytes_png_gray": tf.io.encode_png(gray).numpy(),
               "bytes_png_rgba": tf.io.encode_png(rgba).numpy(),
               "bytes_jpeg": tf.io.encode_jpeg(inputs["shapes96"], quality=90).numpy()}
    np.savez(folder / "in.npz", **inputs, **{k: np.frombuffer(v, np.uint8) for k, v in encoded.items()})
    result = subprocess.run([sys.executable, "-c", SERVE, exported, str(folder / "in.npz"), str(folder / "out.npz")],
                            cwd=str(folder), capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    out = dict(np.load(folder / "out.npz"))
    # What detect() gets for the same pictures: the decoded files, as arrays.
    decoded = {"bytes_png_gray": gray[..., 0], "bytes_png_rgba": rgba,
               "bytes_jpeg": tf.io.decode_jpeg(encoded["bytes_jpeg"]).numpy()}
    return {**inputs, **decoded}, out, info


def compare(reference, out, key):
    """Differences between detect()'s result and a converted model's for one image (ONNX)."""
    n = len(reference["class_ids"])
    assert out[f"{key}/rois"].shape == (n, 4), key
    assert np.array_equal(out[f"{key}/class_ids"], reference["class_ids"]), key
    masks, ref_masks = out[f"{key}/masks"], reference["masks"]
    assert masks.shape == ref_masks.shape and masks.dtype == bool, key
    inter, union = (masks & ref_masks).sum(), (masks | ref_masks).sum()
    return {"n": n,
            "box_px": int(np.abs(out[f"{key}/rois"] - reference["rois"]).max(initial=0)),
            "score": float(np.abs(out[f"{key}/scores"] - reference["scores"]).max(initial=0)),
            "mask_iou_all": float(inter / union) if union else 1.0,
            "mask_px_differing": int((masks != ref_masks).sum())}


@pytest.mark.large
def test_served_results_are_exactly_detects(detector, served):
    """Same boxes, class ids, scores and mask pixels, bit for bit, as the README promises."""
    pictures, out, info = served
    assert not info["mrcnn_imported"]
    total = 0
    for key, image in pictures.items():
        reference = detector.detect([image])[0]
        total += len(reference["class_ids"])
        for name in ("rois", "class_ids", "scores", "masks"):
            got = out[f"{key}/{name}"]
            assert got.dtype == reference[name].dtype and got.shape == reference[name].shape, (key, name)
            assert np.array_equal(got, reference[name]), (key, name)
    assert total > 30       # random weights still detect plenty


@pytest.mark.large
def test_signatures_names_dtypes_and_shapes(served, exported):
    signatures = served[2]["signatures"]
    outputs = {"class_ids": ["int32", [None]], "masks": ["bool", [None, None, None]],
               "rois": ["int32", [None, 4]], "scores": ["float32", [None]]}
    assert signatures == {
        "serving_default": {"inputs": {"image": ["uint8", [None, None, 3]]}, "outputs": outputs},
        "serving_bytes": {"inputs": {"image_bytes": ["string", []]}, "outputs": outputs}}
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(exported).st_mode & 0o777 == 0o777 & ~umask   # not tempfile's private 0700
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(exported) for f in fs)
    print(f"\nSavedModel: {size / 2**20:.1f} MiB, signatures {json.dumps(signatures)}")


@pytest.mark.large
def test_bad_serving_input_is_an_error_not_a_crash(served):
    errors = served[2]["errors"]
    assert errors["empty"].startswith("InvalidArgumentError") and "the image is empty" in errors["empty"]
    assert errors["garbage"].startswith("InvalidArgumentError") and "image" in errors["garbage"].lower()


def test_export_refuses_what_cannot_serve(detector, exported, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="exists and is not an empty folder.*overwrite=True"):
        detector.export_saved_model(exported)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        detector.export_saved_model(tmp_path / "file")
    monkeypatch.setattr(detector.config, "IMAGE_RESIZE_MODE", "pad64")
    with pytest.raises(ValueError, match="IMAGE_RESIZE_MODE is 'pad64'.*'square'"):
        detector.export_saved_model(tmp_path / "new")
    monkeypatch.undo()
    monkeypatch.setattr(detector, "mode", "training")
    with pytest.raises(ValueError, match="mode='inference'"):
        detector.export_saved_model(tmp_path / "new")
    with pytest.raises(ValueError, match="needs a MaskRCNN"):
        export.export_saved_model(detector.keras_model, tmp_path / "new")   # the Keras model, not the MaskRCNN
    assert sorted(os.listdir(tmp_path)) == ["file"]       # nothing written by the refusals


@pytest.mark.parametrize("shape, out", [((50, 70, 3), (91, 128)), ((300, 200, 3), (128, 85)),
                                        ((1, 1, 3), (128, 128)), ((28, 28), (7, 60))])
def test_in_graph_resize_is_scikit_images_to_the_bit(shape, out):
    """Eagerly and in a graph with dynamic sizes (where Grappler would regroup plain products)."""
    graph = tf.function(export.resize_like_skimage, input_signature=[
        tf.TensorSpec([None] * len(shape), tf.float64), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)])
    rng = np.random.default_rng(0)
    for x in (rng.integers(0, 256, shape).astype(np.float64),               # image values
              np.full(shape, 77.0),                                          # plain colour
              rng.random(shape).astype(np.float32).astype(np.float64)):     # mask values
        expected = utils.resize(x, out, preserve_range=True)
        np.testing.assert_array_equal(export.resize_like_skimage(tf.constant(x), *out).numpy(), expected)
        np.testing.assert_array_equal(graph(tf.constant(x), *out).numpy(), expected)


def test_masks_pasted_with_tf_image_resize_differ_at_the_edges():
    """Why the export does not use tf.image.resize: it clamps at the edges where scikit-image
    fades to zero, so masks grow at their borders, most for small boxes."""
    paste = tf.function(lambda mask, box: export._paste_mask(mask, box, 100, 100), input_signature=[
        tf.TensorSpec([28, 28], tf.float32), tf.TensorSpec([4], tf.int32)])
    rng = np.random.default_rng(0)
    worst, mean = 1.0, []
    for _ in range(50):
        logits = rng.normal(0, 1, (4, 4))
        mask = 1 / (1 + np.exp(-utils.resize(logits, (28, 28)) * 4)).astype(np.float32)
        y1, x1 = rng.integers(0, 40, 2)
        h, w = rng.integers(3, 60, 2)
        box = (y1, x1, y1 + h, x1 + w)
        ref = utils.unmold_mask(mask, box, (100, 100))
        ours = paste(tf.constant(mask), tf.constant(box, tf.int32)).numpy()
        assert np.array_equal(ours, ref)
        tf_resized = tf.image.resize(mask[..., None], (h, w), method="bilinear").numpy()[..., 0] >= 0.5
        theirs = np.zeros((100, 100), bool)
        theirs[y1:y1 + h, x1:x1 + w] = tf_resized
        iou = (theirs & ref).sum() / max((theirs | ref).sum(), 1)
        worst, mean = min(worst, iou), mean + [iou]
    print(f"\ntf.image.resize masks vs matterport's: IoU min {worst:.3f}, mean {np.mean(mean):.4f}")
    assert worst < 1.0


def test_keras_file_loads_in_safe_mode_with_the_same_outputs(detector, tmp_path):
    path = tmp_path / "mask_rcnn.keras"
    detector.keras_model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    molded, metas, _ = detector.mold_inputs([images()["shapes96"]])
    inputs = [tf.constant(x) for x in detector._inference_inputs(molded, metas)]
    for a, b in zip(detector.keras_model(inputs, training=False), loaded(inputs, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in detector.keras_model.layers]


@pytest.mark.slow
def test_onnx_conversion_runs_in_onnxruntime(detector, exported, tmp_path):
    """tf2onnx converts serving_default (about 80 s here); onnxruntime gives detect()'s detections
    (measured: same boxes, scores within 7e-7, up to 3 mask pixels apart per image)."""
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "mask_rcnn.onnx"
    result = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", exported,
                             "--signature_def", "serving_default", "--opset", "17", "--output", str(path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    session = ort.InferenceSession(str(path))
    names = [o.name for o in session.get_outputs()]
    diffs = {}
    for key, image in images().items():
        out = dict(zip(names, session.run(None, {"image": image})))
        diffs[key] = compare(detector.detect([image])[0], {f"{key}/{k}": v for k, v in out.items()}, key)
    print("\nonnxruntime vs detect():", json.dumps(diffs))
    for key, d in diffs.items():
        assert d["box_px"] <= 1 and d["score"] <= 1e-6 and d["mask_iou_all"] > 0.99, (key, d)

"""Searching the model side for inputs that crash it (issue 15 §2): what users pass to
detect(), weight files that are damaged or of another model, and broken or diverged
weights. Each case ends in documented handling or a named error saying what is wrong
and how to fix it: never a tf.errors.* from inside the graph."""

import ast
import pickle
import re
import zipfile

import h5py
import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mrcnn import mask_rcnn, model as modellib, weights as W
from mrcnn.rpn import ProposalLayer
from mrcnn.roi_heads import DetectionLayer
from tests.conftest import TinyConfig
from tests.test_weights import assert_same, standin



def fuzz(max_examples):
    """Deterministic hypothesis settings for CI: derandomized, no deadline, bounded."""
    return settings(derandomize=True, deadline=None, database=None, max_examples=max_examples,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class PairConfig(TinyConfig):
    IMAGES_PER_GPU = 2
    DETECTION_MIN_CONFIDENCE = 0.0   # detections from random weights, so every path is used


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return modellib.MaskRCNN("inference", PairConfig(), str(tmp_path_factory.mktemp("logs")))


def check_result(r, shape):
    """One image's detect() output is well typed and inside the image."""
    n = len(r["scores"])
    assert r["rois"].dtype == np.int32 and r["rois"].shape == (n, 4)
    assert r["class_ids"].dtype == np.int32 and r["class_ids"].shape == (n,)
    assert r["scores"].dtype == np.float32 and r["masks"].dtype == bool
    assert r["masks"].shape == tuple(shape[:2]) + (n,)
    assert np.all((r["class_ids"] >= 1) & (r["class_ids"] < PairConfig.NUM_CLASSES))
    assert np.all(np.isfinite(r["scores"])) and np.all((r["scores"] >= 0) & (r["scores"] <= 1))
    assert np.all(np.diff(r["scores"]) <= 1e-6)
    y1, x1, y2, x2 = r["rois"].T
    assert np.all((0 <= y1) & (y1 < y2) & (y2 <= shape[0]) & (0 <= x1) & (x1 < x2) & (x2 <= shape[1]))


# --------------------------------------------------------------------------- detect() inputs

DTYPES = [np.uint8, np.uint16, np.int16, np.int64, np.float16, np.float32, np.float64, bool]
LAYOUTS = ["HxW", "HxWx1", "HxWx2", "HxWx3", "HxWx4"]


def resized_side(h, w, size=PairConfig.IMAGE_MAX_DIM):
    """The short side after "square" resizing to `size` (utils.resize_image's scale)."""
    scale = max(1, size / min(h, w))
    if round(max(h, w) * scale) > size:
        scale = size / max(h, w)
    return round(min(h, w) * scale)


@st.composite
def user_images(draw):
    """An image of any dtype, layout and size a user may pass, and whether it holds NaN/inf."""
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    h, w = draw(st.one_of(st.tuples(st.integers(1, 300), st.integers(1, 300)),
                          st.tuples(st.just(10000), st.integers(1, 12)),
                          st.tuples(st.integers(1, 12), st.just(10000))))
    shape = (h, w) if layout == "HxW" else (h, w, int(layout[-1]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if dtype is bool:
        image = rng.random(shape) > 0.5
    elif np.issubdtype(dtype, np.integer):
        image = rng.integers(0, min(np.iinfo(dtype).max, 65535), shape, endpoint=True).astype(dtype)
    else:
        with np.errstate(over="ignore"):
            image = (rng.random(shape) * draw(st.sampled_from([1.0, 255.0, 1e6]))).astype(dtype)
    if image.dtype.kind == "f" and draw(st.booleans()):
        image.flat[rng.integers(image.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return image, not np.all(np.isfinite(image))   # float16 * 1e6 overflows to inf too


@fuzz(40)
@given(batch=st.lists(user_images(), min_size=2, max_size=2), verbose=st.sampled_from([0, 1]))
def test_any_user_image_is_detected_or_named(detector, batch, verbose):
    """Every dtype, layout and size: detections inside the image, or a ValueError naming
    the image and the fix (NaN/inf pixels; a side that resizing would shrink to nothing)."""
    images = [image for image, _ in batch]
    problems = [i for i, (image, bad) in enumerate(batch)
                if bad or resized_side(*image.shape[:2]) == 0]
    if not problems:
        for image, r in zip(images, detector.detect(images, verbose=verbose), strict=True):
            check_result(r, image.shape)
        return
    first = problems[0]
    with pytest.raises(ValueError, match=rf"^detect\(\): image {first}") as info:
        detector.detect(images, verbose=verbose)
    image, bad = batch[first]
    expected = ("NaN or infinite values" if bad else
                rf"is {image.shape[0]}x{image.shape[1]} pixels.*Crop or tile .* raise IMAGE_MAX_DIM")
    assert info.match(expected)



@fuzz(30)
@given(count=st.integers(0, 5).filter(lambda n: n != 2),
       container=st.sampled_from([list, tuple]))
def test_a_batch_of_another_length_is_named(detector, count, container):
    images = container(np.zeros((20, 30, 3), np.uint8) for _ in range(count))
    with pytest.raises(ValueError, match=rf"got {count} images but BATCH_SIZE is 2 .*IMAGES_PER_GPU"):
        detector.detect(images)


def test_an_array_batch_works_and_a_bare_image_is_named(detector):
    batch = np.random.default_rng(0).integers(0, 255, (2, 40, 60, 3), dtype=np.uint8)
    for image, r in zip(batch, detector.detect(batch), strict=True):
        check_result(r, image.shape)
    for bare in (batch[0], batch[0, 0], batch[:, :, :, 0]):   # an image, a row, a gray stack
        with pytest.raises(ValueError, match=re.escape(f"one array of shape {bare.shape}") + r".*pass \[image\]"):
            detector.detect(bare)


@pytest.mark.parametrize("images", [None, 3, "image.jpg", b"\x89PNG"])
def test_no_list_at_all_is_a_type_error(detector, images):
    with pytest.raises(TypeError, match=r"detect\(\) takes a list of 2 images .*Pass \[image\]"):
        detector.detect(images)


GOOD = np.zeros((30, 40, 3), np.uint8)


@pytest.mark.parametrize("bad, expected", [
    (None, r"image 1 is None, not an image array. Read the file first"),
    ("photo.jpg", r"image 1 is 'photo.jpg', not an image array. Read the file first"),
    ([[1, 2], [3]], r"image 1 is not an array of pixels .*Pass a numpy array"),
    (np.zeros((10, 10, 5), np.uint8), r"image 1: shape \(10, 10, 5\) is not an image. Accepted: HxW"),
    (np.zeros(10, np.uint8), r"image 1: shape \(10,\) is not an image"),
    (np.zeros((1, 10, 10, 3), np.uint8), r"image 1: shape \(1, 10, 10, 3\) is not an image"),
    (np.zeros((0, 10, 3), np.uint8), r"image 1: shape \(0, 10, 3\) is not an image"),
    (np.zeros((5, 5, 3), complex), r"image 1: dtype complex128 is not an image type; use"),
    (np.zeros((5, 5, 3), object), r"image 1: dtype object is not an image type"),
    (np.full((5, 5), "a"), r"image 1: dtype <U1 is not an image type"),
])
@pytest.mark.parametrize("verbose", [0, 1])
def test_what_is_not_an_image_is_named(detector, bad, expected, verbose):
    """Checked before anything else, verbose logging included (it printed min/max first)."""
    with pytest.raises(ValueError, match=r"^detect\(\): " + expected):
        detector.detect([GOOD, bad], verbose=verbose)


# --------------------------------------------------------------------------- weight files

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small stand-in model with the contract's layer names, its file's bytes, and a
    second stand-in to load into with a snapshot of its values."""
    source = standin(seed=1)
    path = tmp_path_factory.mktemp("small") / "standin.h5"
    W.save_weights_by_name(source, path)
    target = standin(seed=2)
    return source, path.read_bytes(), target, [v.numpy() for v in target.weights]


def byte_differences(a, b):
    """Bytes that differ between two models' weights, all variables together."""
    return sum(int(np.count_nonzero(np.frombuffer(x.numpy().tobytes(), np.uint8)
                                    != np.frombuffer(y.numpy().tobytes(), np.uint8)))
               for x, y in zip(a.weights, b.weights, strict=True))


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("random"), st.binary(max_size=3000), st.booleans()))


@fuzz(120)
@given(damage=DAMAGE)
def test_damaged_weight_files_are_named_or_load_what_they_hold(small, tmp_path, damage):
    """Random bytes (with or without the HDF5 signature) and truncated files fail with a
    ValueError naming the file, assigning nothing. A flipped bit fails so too, or loads:
    HDF5 keeps no checksums, so a bit flipped inside float data (or in metadata nobody
    reads) cannot be detected -- then the weights differ from the source's in that one
    byte at most, which is the correct handling of such a file."""
    source, data, target, snapshot = small
    kind = damage[0]
    if kind == "truncate":
        blob = data[:int(damage[1] * len(data))]
    elif kind == "flip":
        offset = int(damage[1] * len(data))
        blob = data[:offset] + bytes([data[offset] ^ (1 << damage[2])]) + data[offset + 1:]
    else:
        blob = (b"\x89HDF\r\n\x1a\n" if damage[2] else b"") + damage[1]
    path = tmp_path / "damaged.h5"
    path.write_bytes(blob)
    try:
        W.load_weights_by_name(target, path)
    except ValueError as err:
        assert str(path) in str(err)
        assert all(np.array_equal(v.numpy(), s) for v, s in zip(target.weights, snapshot, strict=True))
        return
    finally:
        loaded = byte_differences(source, target)
        for v, s in zip(target.weights, snapshot, strict=True):
            v.assign(s)
    assert kind == "flip" and loaded <= 1


def test_nan_from_a_flipped_exponent_is_named_with_the_fix(small, tmp_path):
    """A flip that makes a weight NaN or inf is detectable: refused, naming the layer."""
    source, data, target, snapshot = small
    path = tmp_path / "nan.h5"
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        kernel = f["rpn_model/rpn_bbox_pred/kernel:0"]
        value = kernel[()]
        value.flat[3] = np.float32(np.inf) if value.flat[3] > 0 else np.float32(np.nan)
        kernel[...] = value
    with pytest.raises(ValueError, match=r"nan\.h5.*NaN or infinite values in 1 weight\(s\) of "
                       r"layer\(s\) \['rpn_bbox_pred'\].*diverged.*exclude=\['rpn_bbox_pred'\]"):
        W.load_weights_by_name(target, path)
    assert all(np.array_equal(v.numpy(), s) for v, s in zip(target.weights, snapshot, strict=True))
    report = W.load_weights_by_name(target, path, exclude=["rpn_bbox_pred"])
    assert report.excluded == ["rpn_bbox_pred"]
    assert_same(source, target, ["conv1", "rpn_conv_shared", "mrcnn_mask"])
    for v, s in zip(target.weights, snapshot, strict=True):
        v.assign(s)


def _canary(path):
    """What unpickling a Canary calls: it leaves a file behind."""
    with open(path, "w") as fh:
        fh.write("unpickled")


class Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _canary, (self.path,)


@pytest.fixture
def no_pickle(monkeypatch):
    """Any use of pickle fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading weights")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


@pytest.mark.parametrize("storage", ["vlen_object", "opaque"])
def test_pickled_payload_in_a_weights_file_is_refused_not_unpickled(small, tmp_path, no_pickle,
                                                                    storage):
    source, data, target, snapshot = small
    marker = tmp_path / "unpickled.txt"
    payload = pickle.dumps(Canary(str(marker)))
    assert "_canary" in str(payload)
    path = tmp_path / "pickled.h5"
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        del f["conv1/conv1/kernel:0"]
        if storage == "vlen_object":
            ragged = np.empty(1, object)      # an object dataset of variable-length bytes
            ragged[0] = np.frombuffer(payload, np.uint8)
            f["conv1"].create_dataset("conv1/kernel:0", data=ragged, dtype=h5py.vlen_dtype(np.uint8))
        else:
            f["conv1"].create_dataset("conv1/kernel:0", data=np.void(payload))
    with pytest.raises(ValueError, match=r"pickled\.h5.*layer 'conv1' holds weights that are not "
                       r"numbers .*conv1/kernel:0.*never unpickled"):
        W.load_weights_by_name(target, path)
    assert not marker.exists()
    assert all(np.array_equal(v.numpy(), s) for v, s in zip(target.weights, snapshot, strict=True))
    intact = tmp_path / "intact.h5"       # the loading path itself, pickle still refused
    intact.write_bytes(data)
    W.load_weights_by_name(target, intact)
    assert_same(source, target)
    for v, s in zip(target.weights, snapshot, strict=True):
        v.assign(s)


def test_keras3_files_are_refused_without_unpickling(detector, tmp_path, no_pickle):
    """A `.keras` zip (here with a Lambda, which only an unsafe load could run) and a Keras 3
    `.weights.h5` are refused by name, before anything is read or assigned."""
    inp = keras.Input((3,))
    lambda_model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp))
    zipped = tmp_path / "lambda.keras"
    lambda_model.save(zipped)
    assert zipfile.is_zipfile(zipped)
    conv1 = detector.keras_model.get_layer("conv1")
    before = conv1.get_weights()
    for path in (zipped, tmp_path / "lambda.h5"):
        zipped.replace(path)
        zipped = path
        with pytest.raises(ValueError, match=rf"{path.name}.*a zip archive \(a Keras 3 `\.keras` model"):
            detector.load_weights(str(path), by_name=True)
    keras3 = tmp_path / "model.weights.h5"
    detector.keras_model.save_weights(keras3)
    with pytest.raises(ValueError, match=r"model\.weights\.h5.*Keras 3 `\.weights\.h5` file.*"
                                         r"save_weights_by_name"):
        detector.load_weights(str(keras3), by_name=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, conv1.get_weights(), strict=True))


class R101(PairConfig):
    BACKBONE = "resnet101"


class OtherHeads(PairConfig):
    NUM_CLASSES = 1 + 5
    TOP_DOWN_PYRAMID_SIZE = 32


@pytest.fixture(scope="module")
def other_files(tmp_path_factory):
    """Files written by tiny models of another backbone, and of other class count and FPN width."""
    folder = tmp_path_factory.mktemp("other")
    out = {}
    for config in (R101, OtherHeads):
        out[config.__name__] = folder / f"{config.__name__}.h5"
        W.save_weights_by_name(mask_rcnn.build_inference_model(config()), out[config.__name__])
    return out


def test_a_file_of_another_backbone_is_named_with_the_fix(detector, other_files):
    conv1 = detector.keras_model.get_layer("conv1")
    before = conv1.get_weights()
    with pytest.raises(ValueError, match=r"R101\.h5.*ResNet-101 .*but the model is ResNet-50.*"
                                         r'BACKBONE = "resnet101"'):
        detector.load_weights(str(other_files["R101"]), by_name=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, conv1.get_weights(), strict=True))


def test_a_file_of_other_heads_lists_the_layers_and_its_exclude_loads(detector, other_files,
                                                                      shapes_val):
    path = other_files["OtherHeads"]
    with pytest.raises(ValueError, match=r"OtherHeads\.h5.*does not fit") as info:
        detector.load_weights(str(path), by_name=True)
    message = str(info.value)
    for line in ("mrcnn_class_logits/kernel:0: file (128, 6) vs model (128, 4)",
                 "fpn_c5p5/kernel:0: file (1, 1, 2048, 32) vs model (1, 1, 2048, 64)",
                 "rpn_conv_shared/kernel:0: file (3, 3, 32, 512) vs model (3, 3, 64, 512)"):
        assert line in message
    fix = ast.literal_eval(re.search(r"exclude=(\[.*?\])", message).group(1))
    assert {"mrcnn_class_logits", "mrcnn_mask", "fpn_c5p5", "fpn_p2", "rpn_conv_shared",
            "mrcnn_class_conv1", "mrcnn_mask_conv1"} <= set(fix)
    report = detector.load_weights(str(path), by_name=True, exclude=fix)
    assert sorted(report.excluded) == sorted(fix) and "conv1" in report.loaded
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(detector.keras_model.get_layer("res5c_branch2c").get_weights()[0],
                                      f["res5c_branch2c/res5c_branch2c/kernel:0"][()])
    images = [shapes_val.load_image(0), shapes_val.load_image(1)]
    for image, r in zip(images, detector.detect(images), strict=True):
        check_result(r, image.shape)


# --------------------------------------------------------------------------- broken weights

BROKEN_LAYERS = ["rpn_bbox_pred", "rpn_class_raw", "rpn_conv_shared", "fpn_p2", "conv1",
                 "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"]


def leaf(model, name):
    """A layer of the model, or of its nested rpn_model."""
    rpn = model.get_layer("rpn_model")
    return rpn.get_layer(name) if name.startswith("rpn_") else model.get_layer(name)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 255, (100, 128, 3), dtype=np.uint8),
            rng.integers(0, 255, (128, 90, 3), dtype=np.uint8)]


@fuzz(30)
@given(name=st.sampled_from(BROKEN_LAYERS),
       value=st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30]),
       share=st.sampled_from([1.0, 0.05]), seed=st.integers(0, 2 ** 16))
def test_broken_or_diverged_weights_never_crash_detect(detector, images, name, value, share, seed):
    """NaN, inf or huge kernels anywhere (some or all entries): non-finite proposals and
    detections are dropped in the graph, so detect() returns well-typed results inside the
    image (crop_and_resize refused the boxes inside TensorFlow before)."""
    layer = leaf(detector.keras_model, name)
    saved = layer.get_weights()
    kernel = saved[0].copy()
    kernel[np.random.default_rng(seed).random(kernel.shape) < share] = value
    try:
        layer.set_weights([kernel] + saved[1:])
        for image, r in zip(images, detector.detect(images), strict=True):
            check_result(r, image.shape)
    finally:
        layer.set_weights(saved)


def test_nan_rpn_deltas_leave_only_padding_proposals(detector, images):
    layer = leaf(detector.keras_model, "rpn_bbox_pred")
    saved = layer.get_weights()
    km = detector.keras_model
    try:
        layer.set_weights([np.full_like(saved[0], np.nan), saved[1]])
        out = detector.run_graph(images, [("proposals", km.get_layer("ROI").output),
                                          ("detections", km.get_layer("mrcnn_detection").output)])
    finally:
        layer.set_weights(saved)
    assert out["proposals"].shape == (2, PairConfig.POST_NMS_ROIS_INFERENCE, 4)
    assert np.all(out["proposals"] == 0) and np.all(np.isfinite(out["detections"]))


def test_proposal_layer_drops_a_non_finite_box_as_if_its_anchor_were_absent():
    rng = np.random.default_rng(0)
    n = 60
    y, x = rng.uniform(0, 0.8, (2, n))
    anchors = np.stack([y, x, y + rng.uniform(0.05, 0.2, n), x + rng.uniform(0.05, 0.2, n)], 1)
    scores = rng.permutation(n) / n
    probs = np.stack([1 - scores, scores], 1)
    deltas = rng.normal(0, 1, (n, 4))
    layer = ProposalLayer(20, 0.7, pre_nms_limit=100, rpn_bbox_std_dev=[0.1, 0.1, 0.2, 0.2])

    def run(keep, d):
        inputs = [a[keep][np.newaxis].astype(np.float32) for a in (probs, d, anchors)]
        return layer(inputs).numpy()

    best = int(np.argmax(scores))
    everything = np.ones(n, bool)
    for poison in (np.nan, np.inf, 1e30):
        broken = deltas.copy()
        broken[best, 2] = poison
        np.testing.assert_array_equal(run(everything, broken), run(everything != (np.arange(n) == best), deltas))


def test_detection_layer_drops_non_finite_boxes_as_if_their_rois_were_background():
    rng = np.random.default_rng(1)
    rois, classes = 12, 4
    y, x = rng.uniform(0, 0.6, (2, rois))
    boxes = np.stack([y, x, y + rng.uniform(0.1, 0.3, rois), x + rng.uniform(0.1, 0.3, rois)], 1)
    probs = rng.dirichlet(np.ones(classes), rois)
    deltas = rng.normal(0, 0.5, (rois, classes, 4))
    meta = modellib.compose_image_meta(0, (128, 128, 3), (128, 128, 3), (0, 0, 128, 128), 1.0,
                                       np.zeros(classes, np.int32))
    layer = DetectionLayer(bbox_std_dev=[0.1, 0.1, 0.2, 0.2], detection_min_confidence=0.0,
                           detection_max_instances=10, detection_nms_threshold=0.3)

    def run(p, d):
        return layer([boxes[np.newaxis].astype(np.float32), p[np.newaxis].astype(np.float32),
                      d[np.newaxis].astype(np.float32), meta[np.newaxis].astype(np.float32)]).numpy()

    top = probs.argmax(1)
    victims = [i for i in range(rois) if top[i] > 0][:2]
    broken, background = deltas.copy(), probs.copy()
    broken[victims[0], top[victims[0]], 0] = np.nan
    broken[victims[1], top[victims[1]], 3] = 1e30
    background[victims] = np.eye(classes)[0]
    out = run(probs, broken)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, run(background, deltas))

"""DETECTION_CLASS_MODE: "argmax" is matterport's DetectionLayer to the bit; "per_class" scores
every (RoI, class) pair as torchvision and detectron2 do, in the layer, detect(), the SavedModel,
the evaluation helpers and the command lines."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import cli, evaluate, utils
from mrcnn import model as modellib
from mrcnn.config import Config
from mrcnn.geometry import apply_box_deltas_graph, clip_boxes_graph, norm_boxes_graph
from mrcnn.image_meta import parse_image_meta_graph
from mrcnn.roi_heads import DetectionLayer
from samples.shapes import shapes
from tests.conftest import TinyConfig, TinyShapes

STD = [0.1, 0.1, 0.2, 0.2]


def image_meta(batch, num_classes, size=101, window=None):
    """Metas of `batch` size x size images; the default window is the whole image ([0, 0, 1, 1])."""
    window = window or (0, 0, size, size)
    return np.stack([modellib.compose_image_meta(0, (size, size, 3), (size, size, 3), window, 1.0,
                                                 [1] * num_classes)] * batch).astype(np.float32)


def shapes_image(seed):
    ds = TinyShapes()
    ds.load_shapes(1, seed=seed)
    return ds.load_image(0)


def detection_layer(mode, min_confidence=0.0, max_instances=16, nms_threshold=0.3):
    return DetectionLayer(bbox_std_dev=STD, detection_min_confidence=min_confidence,
                          detection_max_instances=max_instances,
                          detection_nms_threshold=nms_threshold, detection_class_mode=mode)


def random_inputs(rng, batch, n, classes, quantum=None):
    """RoIs, softmax probabilities (rounded to multiples of `quantum`, making ties between
    classes and between RoIs), deltas, and metas of 64 x 64 images with a window clipping them."""
    centers, sizes = rng.uniform(0.1, 0.9, (batch, n, 2)), rng.uniform(0.05, 0.4, (batch, n, 2))
    rois = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1).astype(np.float32)
    probs = tf.nn.softmax(rng.normal(size=(batch, n, classes)) * 2).numpy()
    if quantum:
        probs = np.round(probs / quantum) * quantum
    deltas = rng.normal(size=(batch, n, classes, 4)) * 0.5
    return (rois, probs.astype(np.float32), deltas.astype(np.float32),
            image_meta(batch, classes, size=64, window=(4, 0, 60, 64)))


def matterport_detections(rois, probs, deltas, meta, min_confidence, k, nms_threshold):
    """The DetectionLayer of commit 1628174, before DETECTION_CLASS_MODE (matterport's
    refine_detections_graph for a batch), kept here as the reference "argmax" must equal."""
    rois, probs, deltas = (tf.convert_to_tensor(t, tf.float32) for t in (rois, probs, deltas))
    parsed = parse_image_meta_graph(tf.convert_to_tensor(meta))
    window = norm_boxes_graph(parsed["window"], parsed["image_shape"][0][:2])
    num_classes = probs.shape[-1]
    class_ids = tf.argmax(probs, axis=2, output_type=tf.int32)
    class_scores = tf.gather(probs, class_ids, batch_dims=2)
    deltas = tf.gather(deltas, class_ids, batch_dims=2)
    boxes = apply_box_deltas_graph(rois, deltas * tf.constant(STD, tf.float32))
    boxes = clip_boxes_graph(boxes, window[:, tf.newaxis])
    keep = tf.logical_and(class_ids > 0, class_scores >= min_confidence)

    pairs = tf.reshape(tf.stack(tf.meshgrid(tf.range(tf.shape(boxes)[0]), tf.range(1, num_classes),
                                            indexing="ij"), -1), [-1, 2])

    def nms(pair):
        image, class_id = pair[0], pair[1]
        in_class = tf.logical_and(keep[image], tf.equal(class_ids[image], class_id))
        indices = tf.image.non_max_suppression(boxes[image], tf.where(in_class, class_scores[image], -1.0),
                                               k, nms_threshold, score_threshold=-0.5)
        return tf.pad(indices, [(0, k - tf.shape(indices)[0])], constant_values=-1)

    indices = tf.map_fn(nms, pairs, fn_output_signature=tf.TensorSpec([k], tf.int32))
    found = tf.where(indices >= 0)
    rows = tf.stack([tf.gather(pairs[:, 0], found[:, 0]), tf.gather_nd(indices, found)], 1)
    selected = tf.scatter_nd(rows, tf.ones(tf.shape(rows)[:1]), tf.shape(keep)) > 0

    ranked = tf.nn.top_k(tf.where(selected, class_scores, -1.0), k=min(k, probs.shape[1]), sorted=True).indices
    ranked_ids = tf.cast(tf.gather(class_ids, ranked, batch_dims=1), tf.float32)
    detections = tf.concat([tf.gather(boxes, ranked, batch_dims=1), ranked_ids[..., None],
                            tf.gather(class_scores, ranked, batch_dims=1)[..., None]], axis=2)
    count = tf.reduce_sum(tf.cast(selected, tf.int32), axis=1)
    detections = tf.where(tf.sequence_mask(count, tf.shape(ranked)[1])[..., None], detections, 0.0)
    return tf.pad(detections, [(0, 0), (0, k - tf.shape(ranked)[1]), (0, 0)])


def per_class_reference(rois, probs, deltas, window, min_confidence, k, nms_threshold):
    """torchvision's postprocess_detections for one image in numpy, with matterport's box helpers:
    every (RoI, class > 0) with probability >= min_confidence, its class's box, NMS per class
    (at most k each), then the k best by score, ties by RoI then class."""
    candidates = []
    for c in range(1, probs.shape[1]):
        boxes = utils.apply_box_deltas(rois, deltas[:, c] * STD)
        boxes = np.clip(boxes, window[[0, 1, 0, 1]], window[[2, 3, 2, 3]]).astype(np.float32)
        ix = np.where(probs[:, c] >= min_confidence)[0]
        if len(ix):
            ix = ix[utils.non_max_suppression(boxes[ix], probs[ix, c], nms_threshold)][:k]
        candidates += [(-probs[i, c], i, c, boxes[i]) for i in ix]
    expected = np.zeros((k, 6), np.float32)
    for row, (score, _, c, box) in enumerate(sorted(candidates, key=lambda t: t[:3])[:k]):
        expected[row] = [*box, c, -score]
    return expected, len(candidates)


# --------------------------------------------------------------------------- the layer

@pytest.mark.parametrize("batch, n, classes, quantum", [(2, 200, 5, None), (2, 100, 4, 0.05),
                                                        (3, 64, 2, 0.1)])
def test_argmax_is_the_matterport_layer_to_the_bit(batch, n, classes, quantum):
    """Random inputs, with ties between classes of a RoI and between RoIs when quantised,
    eagerly and in a tf.function (where Grappler's rewrites make both differ from eager by ulps)."""
    rng = np.random.default_rng(n + classes)
    inputs = random_inputs(rng, batch, n, classes, quantum)
    if quantum:
        top2 = np.sort(inputs[1], axis=-1)[..., -2:]
        assert (top2[..., 0] == top2[..., 1]).sum() > 5           # argmax ties occur
    for min_confidence in (0.0, 0.3, 0.7):
        layer = detection_layer("argmax", min_confidence, max_instances=20)
        expected = matterport_detections(*inputs, min_confidence, 20, 0.3).numpy()
        assert (expected[..., 4] > 0).sum() > 2 * batch           # plenty of detections
        np.testing.assert_array_equal(layer(list(inputs)).numpy(), expected)
        in_graph = tf.function(lambda *x: matterport_detections(*x, min_confidence, 20, 0.3))
        np.testing.assert_array_equal(tf.function(lambda *x: layer(list(x)))(*inputs).numpy(),
                                      in_graph(*inputs).numpy())


def hand_made(probs_of_roi0=(0.15, 0.45, 0.40)):
    """Image of 101 x 101 (window [0, 0, 1, 1]), classes BG, A, B; RoI 0 is (0.2, 0.2, 0.6, 0.6)
    with its own deltas per class, RoI 1 is background."""
    rois = np.array([[[0.2, 0.2, 0.6, 0.6], [0.7, 0.7, 0.9, 0.9]]], np.float32)
    probs = np.array([[probs_of_roi0, [1.0, 0.0, 0.0]]], np.float32)
    deltas = np.zeros((1, 2, 3, 4), np.float32)
    deltas[0, 0, 0] = [5, 5, 5, 5]       # the background's deltas are never used
    deltas[0, 0, 1] = [1, 0, 0, 0]       # A: dy 1 * 0.1 * height 0.4 = down by 0.04
    deltas[0, 0, 2] = [0, -1, 0, 0]      # B: left by 0.04
    return rois, probs, deltas, image_meta(1, 3)


def test_per_class_gives_one_roi_a_detection_per_class_with_its_own_box():
    inputs = hand_made()
    out = detection_layer("per_class", 0.3)(list(inputs)).numpy()
    np.testing.assert_allclose(out[0, :2], [[0.24, 0.2, 0.64, 0.6, 1, 0.45],      # A
                                            [0.2, 0.16, 0.6, 0.56, 2, 0.40]], atol=1e-6)  # B
    assert not out[0, 2:].any()
    # The two boxes overlap (IoU 0.68) but NMS is per class. argmax keeps A only.
    out = detection_layer("argmax", 0.3)(list(inputs)).numpy()
    np.testing.assert_allclose(out[0, 0], [0.24, 0.2, 0.64, 0.6, 1, 0.45], atol=1e-6)
    assert not out[0, 1:].any()
    # Below the threshold a class gives nothing; argmax ignores B even when it passes.
    out = detection_layer("per_class", 0.42)(list(inputs)).numpy()
    assert out[0, :, 4].tolist() == [1] + [0] * 15


def test_per_class_order_ties_and_nms_per_class():
    """Equal scores go to the lower RoI index, then the lower class id; NMS suppresses a
    class's box under a better box of the same class only."""
    rois = np.array([[[0.0, 0.0, 0.2, 0.2],       # 0: classes 2 and 3 tie at 0.4
                      [0.5, 0.5, 0.7, 0.7],       # 1: classes 1 and 3 tie at 0.4
                      [0.0, 0.0, 0.2, 0.21]]],    # 2: class 2 at 0.7 suppresses RoI 0's class 2
                    np.float32)
    probs = np.array([[[0.2, 0.0, 0.4, 0.4], [0.2, 0.4, 0.0, 0.4], [0.3, 0.0, 0.7, 0.0]]], np.float32)
    out = detection_layer("per_class", 0.05, max_instances=6)(
        [rois, probs, np.zeros((1, 3, 4, 4), np.float32), image_meta(1, 4)]).numpy()[0]
    expected = [[*rois[0, 2], 2, 0.7], [*rois[0, 0], 3, 0.4], [*rois[0, 1], 1, 0.4],
                [*rois[0, 1], 3, 0.4], [0] * 6, [0] * 6]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_per_class_equals_a_numpy_reference_and_the_cap_keeps_the_best():
    """Random inputs against torchvision's rule in numpy; DETECTION_MAX_INSTANCES caps the
    detections of the image, whatever their classes, keeping a prefix of the uncapped ones."""
    rng = np.random.default_rng(4)
    rois, probs, deltas, meta = random_inputs(rng, 2, 60, 4)
    window = utils.norm_boxes(np.array([4, 0, 60, 64]), (64, 64))
    wide = detection_layer("per_class", 0.1, max_instances=100)
    out = wide([rois, probs, deltas, meta]).numpy()
    for i in range(2):
        expected, count = per_class_reference(rois[i], probs[i], deltas[i], window, 0.1, 100, 0.3)
        assert 30 < count < 100                                       # uncapped here
        np.testing.assert_allclose(out[i], expected, atol=1e-5)
        assert len({int(c) for c in out[i, :count, 4]}) == 3
    capped = detection_layer("per_class", 0.1, max_instances=5)
    small = capped([rois, probs, deltas, meta]).numpy()
    assert small.shape == (2, 5, 6) and (small[..., 4] > 0).all()
    np.testing.assert_array_equal(small, out[:, :5])
    in_graph = tf.function(lambda *x: capped(list(x)))(rois, probs, deltas, meta).numpy()
    np.testing.assert_array_equal(in_graph[..., 4], small[..., 4])
    np.testing.assert_allclose(in_graph, small, rtol=0, atol=1e-6)     # Grappler: ulps apart


def test_one_class_lower_confidence_adds_detections_below_half_only_per_class():
    """NUM_CLASSES = 2: argmax never reports a score <= 0.5, whatever the threshold; per_class
    does, and above 0.5 both modes report the same detections."""
    rng = np.random.default_rng(2)
    inputs = list(random_inputs(rng, 2, 80, 2))
    argmax = detection_layer("argmax", 0.05, max_instances=100)(inputs).numpy()
    per_class = detection_layer("per_class", 0.05, max_instances=100)(inputs).numpy()
    arg_scores, pc_scores = argmax[..., 5][argmax[..., 4] > 0], per_class[..., 5][per_class[..., 4] > 0]
    assert arg_scores.min() > 0.5 and (pc_scores < 0.5).sum() > 20 and pc_scores.min() >= 0.05
    for i in range(2):
        n = (argmax[i, :, 4] > 0).sum()
        np.testing.assert_array_equal(per_class[i, :n], argmax[i, :n])
        assert per_class[i, n, 5] <= 0.5
    high = [detection_layer(mode, 0.7)(inputs).numpy() for mode in ("argmax", "per_class")]
    np.testing.assert_array_equal(high[0], high[1])


# --------------------------------------------------------------------------- models

class OneClassConfig(TinyConfig):
    NAME = "modes"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One-class inference models, one per mode, with the same random weights, scaled as in
    test_export (masks with edges, class scores spread out, small box deltas), the background
    favoured so that only some RoIs score above 0.5."""
    logs = str(tmp_path_factory.mktemp("logs"))
    keras.utils.set_random_seed(0)
    built = {}
    for mode in ("argmax", "per_class"):
        config = type("Config", (OneClassConfig,), {"DETECTION_CLASS_MODE": mode})()
        built[mode] = modellib.MaskRCNN("inference", config, logs)
    km = built["argmax"].keras_model
    for layer, factor in ((km.get_layer("mrcnn_mask"), 40), (km.get_layer("mrcnn_class_logits"), 0.05),
                          (km.get_layer("mrcnn_bbox_fc"), 0.1),
                          (km.get_layer("rpn_model").get_layer("rpn_bbox_pred"), 0.1)):
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * factor, bias])
    kernel, bias = km.get_layer("mrcnn_class_logits").get_weights()
    km.get_layer("mrcnn_class_logits").set_weights([kernel, bias + [0.3, 0.0]])
    built["per_class"].keras_model.set_weights(km.get_weights())
    return built


def test_unmold_gives_each_detection_of_one_roi_its_class_mask(models):
    """The hand-made RoI's A and B detections: the mask head's channel A (top half of the box)
    goes to A's detection, channel B (left half) to B's."""
    detections = detection_layer("per_class", 0.3)(list(hand_made())).numpy()[0]
    mrcnn_mask = np.zeros((16, 28, 28, 3), np.float32)
    mrcnn_mask[..., :14, :, 1] = 1.0
    mrcnn_mask[..., :, :14, 2] = 1.0
    boxes, class_ids, _, masks = models["argmax"].unmold_detections(
        detections, mrcnn_mask, (101, 101, 3), (101, 101, 3), np.array([0, 0, 101, 101]))
    assert class_ids.tolist() == [1, 2] and boxes.tolist() == [[24, 20, 65, 61], [20, 16, 61, 57]]
    for (y1, x1, y2, x2), mask, top in zip(boxes, np.moveaxis(masks, -1, 0), (True, False)):
        h, w = y2 - y1, x2 - x1
        inside = mask[y1:y2, x1:x2]
        assert mask.sum() == inside.sum() > 0.4 * h * w
        first, second = (inside[:h // 3], inside[-h // 3:]) if top else (inside[:, :w // 3], inside[:, -w // 3:])
        assert first.all() and not second.any()


@pytest.mark.large
def test_detect_one_class_model_reports_scores_below_half_only_per_class(models):
    images = [shapes_image(seed) for seed in (1, 3)]   # 8 and 12 of 16 detections below 0.5
    for image in images:
        argmax, per_class = (models[mode].detect([image])[0] for mode in ("argmax", "per_class"))
        assert len(argmax["scores"]) and argmax["scores"].min() > 0.5
        assert (per_class["scores"] < 0.5).sum() > 0 and per_class["scores"].min() >= 0.05
        high = per_class["scores"] > 0.5
        for key in ("rois", "class_ids", "scores"):
            np.testing.assert_array_equal(per_class[key][high], argmax[key])
        np.testing.assert_array_equal(per_class["masks"][..., high], argmax["masks"])
    # keras' predict() runs the per_class layer too.
    model = models["per_class"]
    inputs = model._inference_inputs(*model.mold_inputs(images[:1])[:2])
    predicted = model.keras_model.predict(inputs, verbose=0)[0]
    called = model.keras_model([tf.constant(x) for x in inputs], training=False)[0].numpy()
    np.testing.assert_array_equal(predicted[..., 4], called[..., 4])
    np.testing.assert_allclose(predicted, called, rtol=0, atol=1e-5)
    assert ((predicted[0, :, 5] < 0.5) & (predicted[0, :, 4] > 0)).any()


@pytest.mark.large
def test_saved_model_follows_the_config_and_agrees_with_detect(models, tmp_path):
    images = [shapes_image(1), shapes_image(3)[:100, :70]]
    for mode, model in models.items():
        served = tf.saved_model.load(model.export_saved_model(tmp_path / mode))
        scores = []
        for image in images:
            expected = model.detect([image])[0]
            out = {k: v.numpy() for k, v in served.signatures["serving_default"](image=tf.constant(image)).items()}
            assert out["class_ids"].tolist() == expected["class_ids"].tolist() and len(expected["scores"])
            assert np.abs(out["rois"] - expected["rois"]).max() <= 1
            np.testing.assert_allclose(out["scores"], expected["scores"], atol=1e-4)
            inter = (out["masks"] & expected["masks"]).sum((0, 1))
            union = (out["masks"] | expected["masks"]).sum((0, 1))
            assert (inter >= 0.95 * union).all(), mode
            scores.append(out["scores"])
        assert (np.concatenate(scores) < 0.5).any() == (mode == "per_class")


def test_evaluate_names_the_mode(models, shapes_train):
    for mode, model in models.items():
        metrics = evaluate.evaluate(model, shapes_train, limit=2, verbose=0)
        assert metrics["detection_class_mode"] == mode and metrics["detection_min_confidence"] == 0.05
        assert evaluate.format_metrics(metrics).splitlines()[-1] == \
            f"detection class mode: {mode} (DETECTION_MIN_CONFIDENCE 0.05)"
        assert metrics["images"] == 2 and 0 <= metrics["segm"]["AP"] <= 1


# --------------------------------------------------------------------------- settings

def test_command_lines_take_the_mode():
    for spelling in ("DETECTION_CLASS_MODE=per_class", "DETECTION_CLASS_MODE='per_class'",
                     'DETECTION_CLASS_MODE="per_class"'):
        assert cli.parse_overrides([spelling], Config) == {"DETECTION_CLASS_MODE": "per_class"}
    args = cli.build_parser().parse_args(["evaluate", "--dataset", "x.json", "--config",
                                          "DETECTION_CLASS_MODE=per_class", "NUM_CLASSES=3"])
    config = cli.make_config(args)
    assert config.DETECTION_CLASS_MODE == "per_class" and Config.DETECTION_CLASS_MODE == "argmax"
    with pytest.raises(ValueError, match="DETECTION_CLASS_MODE is 'perclass'. Use 'argmax'"):
        cli.make_config(cli.build_parser().parse_args(
            ["evaluate", "--dataset", "x.json", "--config", "DETECTION_CLASS_MODE=perclass"]))
    args = shapes.parse_args(["evaluate", "--set", "DETECTION_CLASS_MODE=per_class",
                              "DETECTION_MIN_CONFIDENCE=0.05"])
    config = shapes.inference_config(shapes.CONFIGS[args.config], 2, args.overrides)
    assert (config.DETECTION_CLASS_MODE, config.DETECTION_MIN_CONFIDENCE, config.BATCH_SIZE) == \
        ("per_class", 0.05, 2)
    assert config.NAME == shapes.FastShapesConfig.NAME
    for bad in ("DETECTION_CLASS_MODE=max", "DETECTION_CLAS_MODE=per_class"):
        with pytest.raises(SystemExit):
            shapes.parse_args(["evaluate", "--set", bad])


@pytest.mark.parametrize("value", ["perclass", "ARGMAX", "", None, 1, ["argmax"], np.array(["argmax"])])
def test_bad_mode_is_a_value_error_naming_the_setting(value):
    class Bad(Config):
        DETECTION_CLASS_MODE = value

    with pytest.raises(ValueError, match=r"Bad.DETECTION_CLASS_MODE is .*Use 'argmax' .* or 'per_class'"):
        Bad()
    if value is not None:                     # to the layer, None means "not given": argmax
        with pytest.raises(ValueError, match="detection_class_mode is .*use 'argmax'"):
            detection_layer(value)


def test_mode_is_carried_by_the_layer_config():
    layer = DetectionLayer(TinyConfig(), name="mrcnn_detection")
    assert layer.detection_class_mode == "argmax"
    config = type("PerClass", (TinyConfig,), {"DETECTION_CLASS_MODE": "per_class"})()
    layer = DetectionLayer(config, name="mrcnn_detection")
    assert DetectionLayer.from_config(layer.get_config()).detection_class_mode == "per_class"
    old = {k: v for k, v in layer.get_config().items() if k != "detection_class_mode"}
    assert DetectionLayer.from_config(old).detection_class_mode == "argmax"   # saved before the setting
    config.DETECTION_CLASS_MODE = "both"                                        # changed on the instance
    with pytest.raises(ValueError, match="DETECTION_CLASS_MODE is 'both'"):
        modellib.MaskRCNN("inference", config, "logs")

"""Every registered mrcnn layer through one harness: config and JSON round trips, symbolic
against eager output shapes and dtypes, and the output dtype under mixed precision.

`CASES` holds one small factory per case, each building a layer (through matterport's
signatures where matterport had the layer) and example inputs. A layer registered with
`keras.saving.register_keras_serializable(package="mrcnn")` without a case fails
`test_every_registered_layer_has_a_case`."""

import copy
import importlib
import json
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import mrcnn
from mrcnn.base_layers import BatchNorm, GraphLayer
from mrcnn.config import LOSS_NAMES
from mrcnn.image_meta import compose_image_meta
from mrcnn.mask_rcnn import NormBoxes, TrainingModel
from mrcnn.roi_heads import (DetectionBoxes, DetectionClassIds, DetectionLayer,
                             DetectionTargetLayer, LeadingRows, MrcnnBboxLoss, MrcnnClassLoss,
                             MrcnnMaskLoss, PyramidROIAlign, RoIDistributed, UsedRows)
from mrcnn.rpn import AnchorsLayer, ProposalLayer, RpnBboxLoss, RpnClassLoss
from tests.conftest import TinyConfig

# Registered names that must stay registered (and covered): a layer that disappears or is
# renamed breaks saved .keras files.
KNOWN = {
    "mrcnn>AnchorsLayer", "mrcnn>BatchNorm", "mrcnn>DetectionBoxes", "mrcnn>DetectionClassIds",
    "mrcnn>DetectionLayer", "mrcnn>DetectionTargetLayer", "mrcnn>LeadingRows",
    "mrcnn>MrcnnBboxLoss", "mrcnn>MrcnnClassLoss", "mrcnn>MrcnnMaskLoss", "mrcnn>NormBoxes",
    "mrcnn>ProposalLayer", "mrcnn>PyramidROIAlign", "mrcnn>RoIDistributed", "mrcnn>RpnBboxLoss",
    "mrcnn>RpnClassLoss", "mrcnn>TrainingModel", "mrcnn>UsedRows",
}

B = 2            # batch
N = 12           # RoIs / proposals per image
A = 40           # anchors
C = 4            # classes (TinyConfig.NUM_CLASSES)
T = 8            # TRAIN_ROIS_PER_IMAGE below
G = 3            # GT instances


class LayerConfig(TinyConfig):
    """TinyConfig with fewer RoIs, small masks and every detection kept."""
    TRAIN_ROIS_PER_IMAGE = T
    MAX_GT_INSTANCES = G
    DETECTION_MAX_INSTANCES = 5
    DETECTION_MIN_CONFIDENCE = 0.0
    MINI_MASK_SHAPE = (14, 14)


def rng():
    return np.random.default_rng(0)


def boxes(count, r=None):
    """[B, count, 4] valid normalised (y1, x1, y2, x2) boxes."""
    r = r or rng()
    corners = np.sort(r.uniform(0, 1, size=(B, count, 2, 2)), axis=2)   # [.., corner, yx]
    corners[:, :, 1] += 0.05
    return np.clip(corners.reshape(B, count, 4), 0, 1).astype(np.float32)


def image_meta(size=64):
    meta = compose_image_meta(0, (size, size, 3), (size, size, 3), (0, 0, size, size), 1.0,
                              np.ones(C))
    return np.stack([meta] * B).astype(np.float32)


def class_ids(count):
    ids = np.zeros((B, count), np.int32)
    ids[:, :3] = [[1, 2, 0], [3, 0, 0]]
    return ids


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def rpn_match():
    match = rng().choice([-1, 0, 0], size=(B, A, 1)).astype(np.int32)
    match[:, :4] = 1
    return match


def pyramid(channels=4):
    """P2..P5 of a 64-px image."""
    r = rng()
    return [r.normal(size=(B, 64 // s, 64 // s, channels)).astype(np.float32)
            for s in (4, 8, 16, 32)]


def proposal_case():
    layer = ProposalLayer(proposal_count=10, nms_threshold=0.7, config=LayerConfig())
    logits = rng().normal(size=(B, A, 2))
    return layer, [softmax(logits), rng().normal(size=(B, A, 4)).astype(np.float32) * 0.1,
                   boxes(A)]


def anchors_case():
    cfg = LayerConfig()
    layer = AnchorsLayer(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS,
                         [[16, 16], [8, 8], [4, 4], [2, 2], [1, 1]], cfg.BACKBONE_STRIDES,
                         cfg.RPN_ANCHOR_STRIDE, (64, 64, 3))
    return layer, np.zeros((B, 64, 64, 3), np.float32)


def rpn_class_loss_case():
    return RpnClassLoss(), [rpn_match(), rng().normal(size=(B, A, 2)).astype(np.float32)]


def rpn_bbox_loss_case():
    return RpnBboxLoss(), [rng().normal(size=(B, 6, 4)).astype(np.float32), rpn_match(),
                           rng().normal(size=(B, A, 4)).astype(np.float32)]


def roi_align_case():
    return PyramidROIAlign([3, 3]), [boxes(N), image_meta(), *pyramid()]


def roi_distributed_case():
    layer = RoIDistributed(keras.layers.Conv2D(5, (3, 3), name="conv"), name="per_roi")
    return layer, rng().normal(size=(B, N, 3, 3, 4)).astype(np.float32)


def roi_distributed_scatter_case():
    layer = RoIDistributed(keras.layers.Conv2D(5, (1, 1), name="conv"), scatter=True,
                           name="per_roi_scatter")
    ids = class_ids(N)
    rows = rng().normal(size=(1, int((ids > 0).sum()), 3, 3, 4)).astype(np.float32)
    return layer, [rows, ids.astype(np.float32)]


def used_rows_case():
    return UsedRows(), [rng().normal(size=(B, N, 3, 3, 2)).astype(np.float32),
                        class_ids(N).astype(np.float32)]


def detection_target_case():
    gt_boxes = boxes(G)
    gt_boxes[1, 2] = 0                                   # padding
    proposals = np.concatenate([gt_boxes, boxes(N - G, np.random.default_rng(1))], axis=1)
    masks = np.zeros((B, 14, 14, G), bool)
    masks[:, 3:11, 2:12] = True
    return DetectionTargetLayer(LayerConfig()), [proposals, class_ids(G), gt_boxes, masks]


def detection_case():
    probs = softmax(rng().normal(size=(B, N, C)) * 3)
    deltas = rng().normal(size=(B, N, C, 4)).astype(np.float32) * 0.1
    return DetectionLayer(config=LayerConfig()), [boxes(N), probs, deltas, image_meta()]


def detections():
    det = np.zeros((B, 5, 6), np.float32)
    det[:, :3, :4] = boxes(3)
    det[:, :3, 4:] = [[1, 0.9], [2, 0.8], [1, 0.5]]
    return det


def leading_rows_case():
    r = rng()
    return LeadingRows(2), [r.normal(size=(B, T, 4)).astype(np.float32), class_ids(T),
                            r.normal(size=(B, T, 7, 7)).astype(np.float32)]


def mrcnn_class_loss_case():
    return MrcnnClassLoss(), [class_ids(T), rng().normal(size=(B, T, C)).astype(np.float32),
                              image_meta()]


def mrcnn_bbox_loss_case():
    r = rng()
    return MrcnnBboxLoss(), [r.normal(size=(B, T, 4)).astype(np.float32), class_ids(T),
                             r.normal(size=(B, T, C, 4)).astype(np.float32)]


def mrcnn_mask_loss_case():
    r = rng()
    return MrcnnMaskLoss(), [(r.uniform(size=(B, T, 6, 6)) > 0.5).astype(np.float32),
                             class_ids(T), r.uniform(0.05, 0.95, size=(B, T, 6, 6, C))
                             .astype(np.float32)]


def norm_boxes_case():
    pixel = boxes(N) * 63
    return NormBoxes(), [pixel, np.zeros((B, 64, 64, 3), np.float32)]


def batch_norm_case(frozen):
    return BatchNorm(frozen=frozen), rng().normal(size=(B, 4, 4, 3)).astype(np.float32)


def training_model_case():
    """A two-layer TrainingModel: the subclass's own config (loss weights, decay) round trips."""
    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(3, name="hidden")(x)
    model = TrainingModel(x, keras.layers.Dense(2, name="out")(h),
                          loss_weights={LOSS_NAMES[0]: 2.0}, weight_decay=1e-4)
    return model, rng().normal(size=(B, 6)).astype(np.float32)


# Case id -> factory returning (layer, inputs). Inputs are numpy arrays (a list for layers
# with several inputs); dims after the batch are the layer's example shape.
CASES = {
    "ProposalLayer": proposal_case,
    "AnchorsLayer": anchors_case,
    "RpnClassLoss": rpn_class_loss_case,
    "RpnBboxLoss": rpn_bbox_loss_case,
    "PyramidROIAlign": roi_align_case,
    "RoIDistributed": roi_distributed_case,
    "RoIDistributed-scatter": roi_distributed_scatter_case,
    "UsedRows": used_rows_case,
    "DetectionTargetLayer": detection_target_case,
    "DetectionLayer": detection_case,
    "DetectionBoxes": lambda: (DetectionBoxes(), detections()),
    "DetectionClassIds": lambda: (DetectionClassIds(), detections()),
    "LeadingRows": leading_rows_case,
    "MrcnnClassLoss": mrcnn_class_loss_case,
    "MrcnnBboxLoss": mrcnn_bbox_loss_case,
    "MrcnnMaskLoss": mrcnn_mask_loss_case,
    "NormBoxes": norm_boxes_case,
    "BatchNorm": lambda: batch_norm_case(frozen=False),
    "BatchNorm-frozen": lambda: batch_norm_case(frozen=True),
    "TrainingModel": training_model_case,
}


def registered_names():
    """The `mrcnn>` layer names in Keras' global registry once every mrcnn module is imported
    (the optimizers registered there are tested with make_optimizer)."""
    for module in pkgutil.walk_packages(mrcnn.__path__, "mrcnn."):
        if module.name.rsplit(".", 1)[-1] != "__main__":   # __main__ runs the CLI
            importlib.import_module(module.name)
    return {name for name, obj in keras.saving.get_custom_objects().items()
            if name.startswith("mrcnn>") and issubclass(obj, keras.layers.Layer)}


def build(case):
    layer, inputs = CASES[case]()
    assert keras.saving.get_registered_name(type(layer)) == "mrcnn>" + case.split("-")[0]
    return layer, inputs


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def symbolic(inputs):
    """keras.Inputs like `inputs` with a dynamic batch dimension."""
    made = [keras.Input(shape=np.shape(x)[1:], dtype=np.asarray(x).dtype.name)
            for x in as_list(inputs)]
    return made if isinstance(inputs, list) else made[0]


def call(layer, inputs):
    """The layer's outputs on `inputs` (seeded: DetectionTargetLayer samples at random)."""
    tf.random.set_seed(7)
    tensors = [tf.constant(x) for x in as_list(inputs)]
    return as_list(layer(tensors if isinstance(inputs, list) else tensors[0]))


def configs_equal(a, b):
    """get_config dicts compared through JSON (tuples and lists alike)."""
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def test_every_registered_layer_has_a_case():
    names = registered_names()
    assert names, "no layer registered with package='mrcnn' was found"
    assert KNOWN <= names, f"registered names gone: {sorted(KNOWN - names)}"
    covered = {"mrcnn>" + case.split("-")[0] for case in CASES}
    assert names <= covered, (f"registered without a case in tests/test_layers.py CASES: "
                              f"{sorted(names - covered)}")
    assert covered <= names, f"cases for unregistered names: {sorted(covered - names)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_and_json_round_trips(case):
    layer, inputs = build(case)
    expected = call(layer, inputs)
    config = layer.get_config()

    again = type(layer).from_config(copy.deepcopy(config))   # Wrapper's pops "layer"
    assert configs_equal(again.get_config(), config)

    text = json.dumps(keras.saving.serialize_keras_object(layer))
    loaded = keras.saving.deserialize_keras_object(json.loads(text), safe_mode=True)
    assert type(loaded) is type(layer)
    assert configs_equal(loaded.get_config(), config)
    call(loaded, inputs)            # builds the weights, then takes the original's
    loaded.set_weights(layer.get_weights())
    for want, got in zip(expected, call(loaded, inputs), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_symbolic_outputs_match_eager_outputs(case):
    layer, inputs = build(case)
    spec = as_list(layer(symbolic(inputs)))
    eager = call(layer, inputs)
    assert len(spec) == len(eager)
    for s, e in zip(spec, eager):
        assert len(s.shape) == len(e.shape), (s.shape, e.shape)
        assert all(d is None or d == got for d, got in zip(s.shape, e.shape)), (s.shape, e.shape)
        assert s.shape[0] in (None, e.shape[0])
        assert keras.backend.standardize_dtype(s.dtype) == e.dtype.name, (s.dtype, e.dtype)
    shapes = [x.shape for x in as_list(symbolic(inputs))]
    try:
        declared = layer.compute_output_shape(shapes if isinstance(inputs, list) else shapes[0])
    except NotImplementedError:   # the layers that define compute_output_spec instead
        return
    declared = declared if isinstance(declared, list) else [declared]
    assert [tuple(s) for s in declared] == [tuple(s.shape) for s in spec]


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_dtype_under_mixed_float16(case):
    """GraphLayers (box arithmetic, losses) compute in float32; the rest in float16."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer, inputs = build(case)
        half = [x.astype(np.float16) if np.asarray(x).dtype == np.float32 else x
                for x in as_list(inputs)]
        outputs = call(layer, half if isinstance(inputs, list) else half[0])
        want = "float32" if isinstance(layer, GraphLayer) else "float16"
        floats = [x.dtype.name for x in outputs if x.dtype.is_floating]
        assert floats and set(floats) == {want}, floats
        assert all(np.isfinite(x.numpy()).all() for x in outputs if x.dtype.is_floating)
    finally:
        keras.config.set_dtype_policy(previous)

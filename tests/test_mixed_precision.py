"""Config.MIXED_PRECISION (issue 12 §2): half-precision layers, float32 scores, masks, losses
and boxes, float32 weights and weight files, loss scaling under mixed_float16, and the
process-wide dtype policy left alone."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import mask_rcnn, pipeline, utils
from mrcnn import model as modellib
from mrcnn.weights import save_weights_by_name
from samples.shapes.shapes import lite_backbone, lite_backbone_shapes
from tests.conftest import TinyConfig, TinyShapes

# Layers that must compute in float32 whatever the policy (see mrcnn.mask_rcnn's docstring).
FLOAT32_LAYERS = ("rpn_class_raw", "rpn_bbox_pred", "rpn_class", "rpn_bbox",
                  "mrcnn_class_logits", "mrcnn_class", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask",
                  "ROI", "roi_align_classifier", "roi_align_mask")
TRAINING_FLOAT32 = ("rpn_class_logits", "proposal_targets", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
                    "mrcnn_bbox_loss", "mrcnn_mask_loss")


class Lite(TinyConfig):
    """TinyConfig on the shapes sample's small backbone: quick to trace and step."""
    BACKBONE = staticmethod(lite_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(lite_backbone_shapes)
    DETECTION_MIN_CONFIDENCE = 0.0      # random weights: keep every detection


def lite(precision, **settings):
    config = type("LiteMixed", (Lite,), {"MIXED_PRECISION": precision, **settings})()
    config.validate()
    return config


def layers_by_name(keras_model):
    return {layer.name: layer for layer in keras_model._flatten_layers(include_self=False)}


@pytest.mark.parametrize("value", ["float16", "bfloat16", "mixed_float32", True, 16])
def test_bad_value_names_the_accepted_ones(value):
    with pytest.raises(ValueError, match=r"MIXED_PRECISION is .*Use None \(no mixed precision\), "
                                         r"'mixed_float16' or 'mixed_bfloat16'"):
        lite(value)


def test_half_precision_inside_float32_at_the_edges_and_policy_restored():
    before = keras.config.dtype_policy().name
    models = {"training": mask_rcnn.build_training_model(lite("mixed_bfloat16")),
              "inference": mask_rcnn.build_inference_model(lite("mixed_bfloat16"))}
    assert keras.config.dtype_policy().name == before == "float32"

    def failing_backbone(*args, **kwargs):
        raise RuntimeError("backbone failed")
    keras.config.set_dtype_policy("mixed_float16")     # a policy of the user's own
    try:
        with pytest.raises(RuntimeError, match="backbone failed"):
            mask_rcnn.build_inference_model(lite("mixed_bfloat16",
                                             BACKBONE=staticmethod(failing_backbone)))
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy(before)

    for mode, model in models.items():
        layers = layers_by_name(model)
        assert model.dtype_policy.name == "mixed_bfloat16"
        for name in ("lite_c2a_conv", "fpn_p2", "rpn_conv_shared", "mrcnn_class_conv1",
                     "mrcnn_mask_conv1", "mrcnn_mask_deconv"):
            assert layers[name].compute_dtype == "bfloat16", (mode, name)
        kept = FLOAT32_LAYERS + (TRAINING_FLOAT32 if mode == "training" else ("mrcnn_detection",))
        for name in kept:
            assert layers[name].compute_dtype == "float32", (mode, name)
        assert {w.dtype for w in model.weights} == {"float32"}, mode
        assert {out.dtype for out in model.outputs} == {"float32"}, mode
    outputs = mask_rcnn.outputs_by_name(models["inference"], models["inference"].outputs)
    assert outputs["mrcnn_detection"].dtype == outputs["mrcnn_mask"].dtype == "float32"


@pytest.fixture(scope="module")
def float32_and_bf16(tmp_path_factory):
    """A float32 and a mixed_bfloat16 inference model with the same weights, moved by a weight file
    written by the float32 one; random weights scaled as in test_export (scores spread out)."""
    folder = tmp_path_factory.mktemp("mixed")
    keras.utils.set_random_seed(0)
    full = modellib.MaskRCNN("inference", lite(None, IMAGES_PER_GPU=1), str(folder))
    km = full.keras_model
    for layer, factor in ((km.get_layer("mrcnn_mask"), 40), (km.get_layer("mrcnn_class_logits"), 0.05),
                          (km.get_layer("mrcnn_bbox_fc"), 0.1),
                          (km.get_layer("rpn_model").get_layer("rpn_bbox_pred"), 0.1)):
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * factor, bias])
    save_weights_by_name(km, str(folder / "float32.h5"))
    half = modellib.MaskRCNN("inference", lite("mixed_bfloat16", IMAGES_PER_GPU=1), str(folder))
    half.load_weights(str(folder / "float32.h5"), by_name=True)
    return full, half, folder


def datasets(path):
    out = {}

    def read(name, obj):    # returns None: visititems stops at the first other value
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]
    with h5py.File(path, "r") as f:
        f.visititems(read)
    return out


def test_weight_files_are_the_same_from_a_float32_or_a_mixed_model(float32_and_bf16):
    full, half, folder = float32_and_bf16
    save_weights_by_name(half.keras_model, str(folder / "bf16.h5"))
    written, read = datasets(folder / "bf16.h5"), datasets(folder / "float32.h5")
    assert written.keys() == read.keys() and len(read) > 50
    for name, value in read.items():
        assert written[name].dtype == value.dtype and np.array_equal(written[name], value), name


def test_bf16_detections_match_float32_ones(float32_and_bf16):
    """On 4 images, each of the 5 best float32 detections against the bf16 detection overlapping
    it most. Measured (this CPU): IoU >= 0.8 (all but one 1.0), same class, boxes within 1 px,
    scores within 0.003, mask IoU 1.0 but for one 0.92 and one 0.125 (a 1-px box shift of a
    tiny random-weight mask). Tolerances: 3 px, 0.02, median mask IoU 0.9."""
    full, half, _ = float32_and_bf16
    shapes = TinyShapes()
    shapes.load_shapes(4, seed=3)
    box_px, score, mask_iou = [], [], []
    for image_id in range(4):
        image = shapes.load_image(image_id)
        ref, got = full.detect([image])[0], half.detect([image])[0]
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in ref.items()}
        assert got["rois"].dtype == got["class_ids"].dtype == np.int32
        assert got["scores"].dtype == np.float32 and got["masks"].dtype == bool
        overlaps = utils.compute_overlaps(ref["rois"][:5].astype(float), got["rois"].astype(float))
        match = overlaps.argmax(1)
        assert (overlaps.max(1) >= 0.7).all(), image_id
        np.testing.assert_array_equal(got["class_ids"][match], ref["class_ids"][:5])
        box_px.append(np.abs(got["rois"][match] - ref["rois"][:5]).max())
        score.append(np.abs(got["scores"][match] - ref["scores"][:5]).max())
        for i, j in enumerate(match):
            a, b = ref["masks"][..., i], got["masks"][..., j]
            mask_iou.append((a & b).sum() / max(1, (a | b).sum()))
    assert max(box_px) <= 3 and max(score) <= 0.02, (box_px, score)
    assert np.median(mask_iou) >= 0.9, mask_iou


@pytest.mark.large
def test_exported_bf16_model_serves_detects_dtypes_and_results(float32_and_bf16):
    _, half, folder = float32_and_bf16
    served = tf.saved_model.load(half.export_saved_model(folder / "saved"))
    image = TinyShapes()
    image.load_shapes(1, seed=4)
    image = image.load_image(0)
    out = {k: v.numpy() for k, v in served.signatures["serving_default"](image=tf.constant(image)).items()}
    ref = half.detect([image])[0]
    assert len(ref["class_ids"]) > 0
    for name in ("rois", "class_ids", "scores", "masks"):
        assert out[name].dtype == ref[name].dtype and out[name].shape == ref[name].shape, name
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)


def fixed_batch(config):
    shapes = TinyShapes()
    shapes.load_shapes(2, seed=1)
    shapes.prepare()
    return next(pipeline.data_generator(shapes, config, shuffle=False, batch_size=config.BATCH_SIZE))[0]


def compiled(config, tmp_path):
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    model.set_trainable(".*", verbose=0)
    model.compile(0.01, config.LEARNING_MOMENTUM)   # as train() does
    return model.keras_model


@pytest.mark.large
def test_bf16_training_keeps_losses_finite_and_falling(tmp_path):
    """Ten SGD steps on one batch. Measured: total 13.2 at the first step, 3.4-6.7 at the last
    three (the box and mask losses join, from 0, when the first positives are sampled)."""
    config = lite("mixed_bfloat16")
    model = compiled(config, tmp_path)
    batch = fixed_batch(config)
    history = [model.train_on_batch(batch, return_dict=True) for _ in range(10)]
    for step in history:
        assert all(np.isfinite(v) for v in step.values()), step
    totals = [step["loss"] for step in history]
    assert np.mean(totals[-3:]) < 0.6 * totals[0], totals
    assert all(step["mrcnn_mask_loss"] > 0 for step in history[-3:]), history


@pytest.mark.large
def test_float16_training_scales_the_loss_and_clips_unscaled_gradients(tmp_path):
    """compile() wraps the optimizer in a LossScaleOptimizer (the model's policy is
    mixed_float16). Steps whose scaled gradients overflow are skipped and halve the scale
    (measured: 5 at the initial 32768); the first applied step is plain SGD's first step
    (-lr * clipped gradient), so its norm is lr * GRADIENT_CLIP_NORM: clipping acts on the
    unscaled gradients (on the scaled ones it would be that divided by the scale)."""
    config = lite("mixed_float16", GRADIENT_CLIP_NORM=0.1)
    model = compiled(config, tmp_path)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert optimizer.inner_optimizer.global_clipnorm == 0.1 and optimizer.global_clipnorm is None
    batch = fixed_batch(config)
    weights = model.trainable_weights
    before = [w.numpy().copy() for w in weights]
    for _ in range(8):
        scale = float(optimizer.dynamic_scale.numpy()) if optimizer.built else optimizer.initial_scale
        losses = model.train_on_batch(batch, return_dict=True)
        assert all(np.isfinite(v) for v in losses.values()), losses
        step = np.sqrt(sum(np.sum((w.numpy() - b) ** 2) for w, b in zip(weights, before)))
        if step > 0:
            break
        assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    else:
        pytest.fail("no step was applied in 8")
    np.testing.assert_allclose(step, 0.01 * 0.1, rtol=1e-3)

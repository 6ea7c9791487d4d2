"""The shapes sample: dataset invariants, configs, metric functions and the command line (no training)."""

import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from mrcnn import evaluate, utils
from samples.shapes import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(count, seed, size=128):
    ds = shapes.ShapesDataset()
    ds.load_shapes(count, size, size, seed=seed)
    ds.prepare()
    return ds


@pytest.fixture(scope="module")
def dataset():
    return make(40, seed=7)


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = make(6, seed=3), make(6, seed=3), make(6, seed=4)
    assert [i["shapes"] for i in a.image_info] == [i["shapes"] for i in b.image_info]
    for image_id in a.image_ids:
        np.testing.assert_array_equal(a.load_image(image_id), b.load_image(image_id))
        np.testing.assert_array_equal(a.load_mask(image_id)[0], b.load_mask(image_id)[0])
    assert [i["shapes"] for i in a.image_info] != [i["shapes"] for i in c.image_info]


def test_classes_and_reference(dataset):
    assert dataset.class_names == ["BG", "square", "circle", "triangle"]
    assert dataset.num_classes == 4
    ref = dataset.image_reference(0)
    assert 1 <= len(ref) <= 4 and all(name in shapes.CLASS_NAMES for name, _, _ in ref)


def test_images_are_uint8_rgb_of_the_requested_size():
    ds = make(3, seed=1, size=96)
    for image_id in ds.image_ids:
        image = ds.load_image(image_id)
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3)


def test_masks_are_disjoint_nonempty_and_match_the_drawn_colours(dataset):
    for image_id in dataset.image_ids:
        image = dataset.load_image(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        assert masks.dtype == bool and masks.shape[:2] == image.shape[:2]
        assert class_ids.dtype == np.int32 and len(class_ids) == masks.shape[-1] >= 1
        assert set(class_ids.tolist()) <= {1, 2, 3}
        assert masks.any(axis=(0, 1)).all(), "every instance has pixels"
        assert masks.sum(axis=-1).max() <= 1, "no pixel belongs to two instances"
        boxes = utils.extract_bboxes(masks)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        # Each instance's pixels show one colour, that of a shape of its class in the
        # image's spec, and the pixels of no instance show the background.
        info = dataset.image_info[image_id]
        spec = {(shapes.CLASS_NAMES.index(name) + 1, color) for name, color, _ in info["shapes"]}
        for i, class_id in enumerate(class_ids):
            colours = np.unique(image[masks[:, :, i]], axis=0)
            assert len(colours) == 1 and (class_id, tuple(colours[0].tolist())) in spec
        assert (image[~masks.any(axis=-1)] == info["bg_color"]).all()


def test_later_shapes_occlude_and_hidden_shapes_are_dropped():
    ds = shapes.ShapesDataset()
    ds.add_class("shapes", 1, "square")
    ds.add_class("shapes", 2, "circle")
    ds.add_class("shapes", 3, "triangle")
    spec = [("circle", (255, 0, 0), (40, 40, 10)),      # hidden by the square below
            ("triangle", (0, 255, 0), (75, 90, 20)),    # its apex is covered by the square
            ("square", (0, 0, 255), (50, 50, 30))]
    ds.add_image("shapes", image_id=0, path=None, width=128, height=128, bg_color=(9, 9, 9), shapes=spec)
    ds.prepare()
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [3, 1]
    square = masks[:, :, 1]
    assert square[20:81, 20:81].all() and square.sum() == 61 * 61
    full_triangle = ds.draw_shape(np.zeros((128, 128), bool), "triangle", (75, 90, 20), True)
    assert 0 < masks[:, :, 0].sum() < full_triangle.sum()
    assert not (masks[:, :, 0] & square).any()
    image = ds.load_image(0)
    assert (image[masks[:, :, 0]] == (0, 255, 0)).all() and (image[square] == (0, 0, 255)).all()


def test_configs_validate_and_the_lite_backbone_matches_its_shapes():
    import keras

    config = shapes.FastShapesConfig()
    assert config.TRAIN_BN and config.NAME == "shapes_fast"
    assert (config.ROI_ALIGN_ALIGNED, config.ROI_ALIGN_SAMPLING_RATIO) == (True, 2)
    args = shapes.parse_args(["evaluate", "--roi-align", "matterport"])
    assert shapes.config_class_from(args)().ROI_ALIGN_ALIGNED is False
    assert shapes.ShapesConfig().BATCH_SIZE == 8
    assert shapes.inference_config(shapes.FastShapesConfig, 5).BATCH_SIZE == 5
    features = shapes.lite_backbone(keras.Input((128, 128, 3)), stage5=True, train_bn=True)
    expected = shapes.lite_backbone_shapes((128, 128, 3))
    assert [tuple(f.shape[1:3]) for f in features[1:]] == [tuple(s) for s in expected[:4]]
    assert expected.tolist() == [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2]]


def test_metrics_of_perfect_predictions_are_one(dataset):
    ids = dataset.image_ids[:10]
    perfect = [dict(gt, scores=np.ones(len(gt["class_ids"]), np.float32))
               for gt in evaluate.ground_truth(dataset, ids)]
    metrics = evaluate.score_detections(dataset, perfect, ids)
    assert metrics["mAP50"] == 1.0
    for iou_type in ("segm", "bbox"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)


def test_metrics_drop_for_missing_or_wrong_predictions(dataset):
    ids = dataset.image_ids[:10]
    gts = evaluate.ground_truth(dataset, ids)
    preds = []
    for gt in gts:
        keep = slice(1, None)  # every image misses its first instance
        preds.append({"rois": gt["rois"][keep], "class_ids": gt["class_ids"][keep],
                      "masks": gt["masks"][:, :, keep], "scores": np.ones(len(gt["class_ids"]) - 1)})
    metrics = evaluate.score_detections(dataset, preds, ids)
    assert metrics["mAP50"] < 1.0 and metrics["segm"]["AP"] < 1.0
    empty = [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
              "masks": np.zeros((128, 128, 0), bool), "scores": np.zeros(0)} for _ in gts]
    metrics = evaluate.score_detections(dataset, empty, ids)
    assert metrics["mAP50"] == 0.0
    assert all(metrics[t][k] == 0.0 for t in ("segm", "bbox") for k in ("AP", "AP50", "AP75"))


def test_time_budget_warms_up_decays_and_stops_after_max_steps():
    class FakeModel:
        optimizer = types.SimpleNamespace(learning_rate=None)
        stop_training = False

    now = time.time()
    budget = shapes.TimeBudget(0.01, now, now + 3600, max_steps=10, warmup_steps=4, final_fraction=0.0)
    budget.set_model(FakeModel())
    rates, stopped = [], []
    for step in range(10):
        budget.on_train_batch_begin(step)
        rates.append(budget.model.optimizer.learning_rate)
        budget.on_train_batch_end(step)
        stopped.append(budget.model.stop_training)
    assert rates[0] == pytest.approx(0.01 / 4)                                  # warm-up
    assert rates[3] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.3)), rel=1e-3)
    assert all(a > b for a, b in zip(rates[3:], rates[4:]))                     # cosine decay
    assert stopped == [False] * 9 + [True]
    logs = {}
    budget.on_epoch_end(0, logs)
    assert logs["lr"] == rates[-1] and logs["elapsed_s"] >= 0


def test_time_budget_reports_where_it_is_in_its_budget(capsys):
    """One line per epoch: time used of the budget, its share, steps, loss and rate (not
    Keras' 'Epoch 35/1000000')."""
    start = time.time() - 90
    budget = shapes.TimeBudget(0.01, start, start + 300)
    budget.steps, budget.lr = 40, 0.005
    budget.on_epoch_end(3, {"loss": 0.5})
    line = capsys.readouterr().out.strip()
    assert line.startswith("1:30 of 5:00 ( 30%)  epoch 4, step 40  loss 0.500  lr 5.00e-03"), line
    with_steps = shapes.TimeBudget(0.01, time.time(), time.time() + 3600, max_steps=80)
    with_steps.steps = 20
    with_steps.on_epoch_end(0, {"loss": 1.0})
    assert "( 25%)  epoch 1, step 20/80" in capsys.readouterr().out


def test_command_line_help(capsys):
    out = subprocess.run([sys.executable, "-m", "samples.shapes.shapes", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: python -m samples.shapes.shapes" in out.stdout
    assert all(command in out.stdout for command in ("train", "evaluate", "detect"))
    for command, option in (("train", "--fresh"), ("evaluate", "--weights"), ("detect", "--image")):
        with pytest.raises(SystemExit) as exit_info:
            shapes.main([command, "--help"])
        assert exit_info.value.code == 0 and option in capsys.readouterr().out


def test_train_is_the_default_command():
    args = shapes.parse_args([])
    assert args.func is shapes.train_main and not args.fresh and args.images == 50
    args = shapes.parse_args(["--minutes", "3", "--fresh"])
    assert args.func is shapes.train_main and args.minutes == 3 and args.fresh

"""mrcnn.evaluate: COCO results records, COCO AP and matterport's mAP on known masks, and the callback."""

import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mrcnn import evaluate, utils

# Four images, each with one instance of category 3 ("box") and one of category 7 ("disk"):
# (COCO image id, height, width, [(category, shape, parameters)]). All but one instance are
# "small" for COCO (area < 32^2); image 1001's box (40 x 40 = 1600 px) is "medium".
IMAGES = [
    (42, 48, 64, [(3, "rect", (10, 5, 20, 25)), (7, "disk", (30, 40, 8))]),
    (1001, 64, 48, [(7, "rect", (0, 0, 16, 16)), (3, "rect", (20, 4, 60, 44))]),
    (5, 40, 40, [(3, "rect", (2, 2, 12, 30)), (7, "rect", (20, 10, 38, 20))]),
    (9, 40, 40, [(3, "disk", (20, 20, 10)), (7, "rect", (0, 0, 5, 40))]),
]
CATEGORIES = ((3, "box"), (7, "disk"))


def draw(shape, params, height, width):
    yy, xx = np.mgrid[:height, :width]
    if shape == "rect":
        y1, x1, y2, x2 = params
        return (yy >= y1) & (yy < y2) & (xx >= x1) & (xx < x2)
    cy, cx, r = params
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


class KnownMasks(utils.Dataset):
    """IMAGES with their masks; `source` "coco" keeps the COCO ids in the results."""

    def load(self, source="coco", images=IMAGES, categories=CATEGORIES):
        for class_id, name in categories:
            self.add_class(source, class_id, name)
        for image_id, height, width, instances in images:
            self.add_image(source, image_id=image_id, path=None, height=height, width=width,
                           instances=instances)
        self.prepare()
        return self

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        if not info["instances"]:
            return np.empty([0, 0, 0]), np.empty([0], np.int32)
        masks = np.stack([draw(s, p, info["height"], info["width"]) for _, s, p in info["instances"]], -1)
        class_ids = [self.map_source_class_id(f"{info['source']}.{abs(c)}") * np.sign(c)
                     for c, _, _ in info["instances"]]
        return masks, np.array(class_ids, np.int32)


def perfect(dataset, image_ids=None):
    """The ground truth as detections with score 1."""
    gts = evaluate.ground_truth(dataset, image_ids)
    return [{"rois": g["rois"], "class_ids": g["class_ids"], "masks": g["masks"],
             "scores": np.ones(len(g["class_ids"]), np.float32)} for g in gts]


def empty(height, width):
    return {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
            "scores": np.zeros(0, np.float32), "masks": np.zeros((height, width, 0), bool)}


@pytest.fixture(scope="module")
def dataset():
    return KnownMasks().load()


def test_perfect_detections_score_one(dataset):
    metrics = evaluate.score_detections(dataset, perfect(dataset))
    # No object is "large" (-1: no ground truth of that size); everything else is perfect.
    expected = dict(zip(evaluate.COCO_METRICS, [1, 1, 1, 1, 1, -1, 1, 1, 1, 1, 1, -1]))
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type] == pytest.approx(expected), iou_type
    assert metrics["mAP50"] == 1.0 and metrics["mAP50_95"] == pytest.approx(1.0)
    assert metrics["images"] == 4


def test_dropping_half_the_detections_halves_recall(dataset):
    """Images 1001 and 9 get no detections: each category is found 2 times out of 4.

    COCOeval samples the precision (1 up to recall 0.5, then 0) at 101 recall points:
    AP = 51/101 at every IoU. Small objects only: category 3 is found in 2 of its 3 small
    instances (67 points), category 7 in 2 of 4 (51); the one medium object is missed.
    compute_ap is 1 on two images and 0 on the other two.
    """
    detections = perfect(dataset)
    for i in (1, 3):
        detections[i] = empty(*detections[i]["masks"].shape[:2])
    metrics = evaluate.score_detections(dataset, detections)
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AP"] == pytest.approx(51 / 101) and m["AP50"] == pytest.approx(51 / 101)
        assert m["AP75"] == pytest.approx(51 / 101)
        assert m["APs"] == pytest.approx((67 / 101 + 51 / 101) / 2)
        assert m["APm"] == 0.0 and m["APl"] == -1.0
        assert m["AR100"] == pytest.approx(0.5) and m["ARs"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["mAP50"] == 0.5 and metrics["mAP50_95"] == pytest.approx(0.5)


def test_no_detections_score_zero(dataset):
    metrics = evaluate.score_detections(dataset, [empty(h, w) for _, h, w, _ in IMAGES])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == 0.0 and metrics[iou_type]["AR100"] == 0.0
        assert metrics[iou_type]["APl"] == -1.0
    assert metrics["mAP50"] == 0.0


def test_a_shifted_box_fails_segm_and_bbox_at_high_iou(dataset):
    """Image 42's box moved by 2 of its 10 rows: IoU 8/12 = 0.67, a match at 0.5 but not at 0.75."""
    detections = perfect(dataset, [0])
    masks = detections[0]["masks"].copy()
    masks[:, :, 0] = np.roll(masks[:, :, 0], 2, axis=0)
    detections[0].update(masks=masks, rois=utils.extract_bboxes(masks), scores=np.array([0.9, 1.0]))
    metrics = evaluate.score_detections(dataset, detections, image_ids=[0])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        # Category 3 counts as found at IoU 0.5..0.65 (4 of 10 thresholds), category 7 always.
        assert metrics[iou_type]["AP"] == pytest.approx((0.4 + 1.0) / 2)
        assert metrics[iou_type]["AP75"] == pytest.approx(0.5)
    # compute_ap_range: the disk (score 1.0) first, so an unmatched box leaves AP 0.5, not 0.
    assert metrics["mAP50"] == 1.0 and metrics["mAP50_95"] == pytest.approx((4 * 1 + 6 * 0.5) / 10)


def test_results_records_are_standard_coco(dataset, tmp_path):
    records = evaluate.to_coco_results(dataset, perfect(dataset))
    assert len(records) == 8
    assert {r["image_id"] for r in records} == {42, 1001, 5, 9}          # original image ids
    assert {r["category_id"] for r in records} == {3, 7}                  # original category ids
    first = records[0]
    assert first["image_id"] == 42 and first["category_id"] == 3 and first["score"] == 1.0
    assert first["bbox"] == [5.0, 10.0, 20.0, 10.0]                       # [x, y, w, h]
    segmentation = first["segmentation"]
    assert isinstance(segmentation["counts"], str) and segmentation["size"] == [48, 64]
    decoded = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), draw("rect", (10, 5, 20, 25), 48, 64))
    path = evaluate.save_results(str(tmp_path / "out" / "results.json"), records)
    assert json.load(open(path)) == records
    # Scoring the written file against a COCO built from the dataset gives the same numbers.
    coco = evaluate.coco_ground_truth(dataset)
    assert evaluate.coco_metrics(coco, json.load(open(path)), "segm")["AP"] == pytest.approx(1.0)
    assert sorted(coco.getCatIds()) == [3, 7] and sorted(coco.getImgIds()) == [5, 9, 42, 1001]


def test_ids_of_other_sources_and_name_ids():
    """Images not from COCO get their internal index; classes whose source ids are not
    distinct integers get their internal ids."""
    ds = KnownMasks().load(source="mine")
    records = evaluate.to_coco_results(ds, perfect(ds))
    assert {r["image_id"] for r in records} == {0, 1, 2, 3}
    assert {r["category_id"] for r in records} == {3, 7}
    by_name = KnownMasks().load(source="named", categories=(("box", "box"), ("disk", "disk")),
                                images=[(0, 20, 20, [("box", "rect", (0, 0, 5, 5))])])
    assert evaluate.category_ids(by_name) == [0, 1, 2]


def test_crowds_and_images_without_instances():
    """A crowd region (negative class id) is neither required nor penalised; an image without
    instances counts in COCO (a false positive there lowers AP) but not in the per-image mAP."""
    images = [(1, 30, 30, [(3, "rect", (0, 0, 10, 10)), (-7, "rect", (15, 15, 30, 30))]),
              (2, 30, 30, [])]
    ds = KnownMasks().load(images=images)
    gt = evaluate.ground_truth(ds)
    assert gt[1]["masks"].shape == (30, 30, 0) and gt[0]["class_ids"].tolist() == [1, -2]
    box = {"rois": gt[0]["rois"][:1], "class_ids": np.array([1]), "scores": np.array([0.9]),
           "masks": gt[0]["masks"][:, :, :1]}
    on_crowd = {"rois": gt[0]["rois"][1:], "class_ids": np.array([2]), "scores": np.array([0.8]),
                "masks": gt[0]["masks"][:, :, 1:]}
    both = {k: np.concatenate([box[k], on_crowd[k]], axis=-1 if k == "masks" else 0) for k in box}
    metrics = evaluate.score_detections(ds, [both, empty(30, 30)])
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["mAP50"] == 1.0
    false_positive = dict(box, scores=np.array([0.95]))
    metrics = evaluate.score_detections(ds, [box, false_positive])
    assert metrics["segm"]["AP"] == pytest.approx(0.5)   # precision 1/2 at every recall...
    assert metrics["mAP50"] == 1.0                         # ...but image 2 has no ground truth


def test_careless_input_gets_clear_errors(dataset):
    good = perfect(dataset)
    with pytest.raises(ValueError, match="3 detection dicts for 4 images"):
        evaluate.score_detections(dataset, good[:3])
    with pytest.raises(ValueError, match="lack"):
        evaluate.to_coco_results(dataset, [{"rois": []}] * 4)
    with pytest.raises(ValueError, match=r"class ids \[0\] outside 1..2"):
        evaluate.to_coco_results(dataset, [dict(good[0], class_ids=np.zeros(2, int))] + good[1:])
    with pytest.raises(ValueError, match="original image's pixels"):
        evaluate.score_detections(dataset, [dict(good[0], masks=good[0]["masks"][:40])] + good[1:])
    with pytest.raises(ValueError, match="2 rois, 1 class_ids"):
        evaluate.to_coco_results(dataset, [dict(good[0], class_ids=np.array([1]))] + good[1:])
    with pytest.raises(ValueError, match="not internal ids"):
        evaluate.score_detections(dataset, good, image_ids=[0, 1, 2, 9])
    with pytest.raises(ValueError, match="prepare"):
        evaluate.ground_truth(utils.Dataset())
    with pytest.raises(ValueError, match="No images to score"):
        evaluate.score_detections(dataset, [], image_ids=[])
    with pytest.raises(ValueError, match="limit is 0"):
        evaluate.evaluate(None, dataset, limit=0)
    coco = evaluate.coco_ground_truth(dataset)
    with pytest.raises(ValueError, match="'bbox' or 'segm'"):
        evaluate.coco_metrics(coco, [], "keypoints")
    with pytest.raises(ValueError, match=r"image ids \[77\]"):
        evaluate.coco_metrics(coco, [{"image_id": 77, "category_id": 3, "bbox": [0, 0, 1, 1],
                                      "score": 1.0}], "bbox")
    with pytest.raises(ValueError, match="lack some of .*'segmentation'"):
        evaluate.coco_metrics(coco, [{"image_id": 42, "category_id": 3, "bbox": [0, 0, 1, 1],
                                      "score": 1.0}], "segm")
    with pytest.raises(ValueError, match="lack some of"):
        evaluate.coco_metrics(coco, [{"image_id": 42, "bbox": [0, 0, 1, 1], "score": 1.0}], "bbox")


def test_format_metrics_prints_the_twelve_numbers(dataset):
    text = evaluate.format_metrics(evaluate.score_detections(dataset, perfect(dataset)))
    header, bbox, segm = text.splitlines()[:3]
    assert header.split() == list(evaluate.COCO_METRICS)
    assert bbox.split() == ["bbox"] + ["1.000"] * 5 + ["-1.000"] + ["1.000"] * 5 + ["-1.000"]
    assert segm.startswith("segm") and "mAP@0.5 (utils.compute_ap, mean over 4 images): 1.0000" in text


def test_inference_config_copies_without_touching_the_original(tiny_config):
    config = evaluate.inference_config(tiny_config, 3)
    assert config.BATCH_SIZE == 3 and config.GPU_COUNT == 1 and config.NAME == tiny_config.NAME
    assert tiny_config.BATCH_SIZE == 2
    with pytest.raises(ValueError, match="IMAGES_PER_GPU"):
        evaluate.inference_config(tiny_config, 0)


def test_callback_evaluates_every_n_epochs_into_logs_and_tensorboard(tmp_path, shapes_val):
    from mrcnn import model as modellib
    from samples.shapes import shapes

    class Config(shapes.FastShapesConfig):
        NAME = "callback"
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
        DETECTION_MIN_CONFIDENCE = 0.0

    model = modellib.MaskRCNN("training", Config(), str(tmp_path))
    callback = evaluate.EvaluationCallback(model, shapes_val, every=2, limit=2, images_per_batch=2)
    callback.set_model(model.keras_model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs == {}                                     # epoch 1 of every 2: nothing
    callback.on_epoch_end(1, logs)
    assert set(logs) == {"val_bbox_AP", "val_bbox_AP50", "val_segm_AP", "val_segm_AP50", "val_mAP50"}
    assert all(-1.0 <= v <= 1.0 for v in logs.values())
    # The inference copy holds the training weights.
    trained = model.keras_model.get_layer("mrcnn_mask").get_weights()
    copied = callback._detector.keras_model.get_layer("mrcnn_mask").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(trained, copied))
    events = b"".join(open(os.path.join(root, f), "rb").read()
                      for root, _, files in os.walk(os.path.join(model.log_dir, "evaluation"))
                      for f in files)
    assert b"epoch_segm_AP" in events and b"epoch_mAP50" in events
    with pytest.raises(ValueError, match="every"):
        evaluate.EvaluationCallback(model, shapes_val, every=0)


def test_inference_model_copies_weights_in_memory_or_loads_a_file(tmp_path, tiny_config):
    from mrcnn import model as modellib
    from mrcnn.weights import save_weights_by_name

    trainer = modellib.MaskRCNN("training", tiny_config, str(tmp_path))
    layer = trainer.keras_model.get_layer("mrcnn_mask")
    layer.set_weights([w + 0.5 for w in layer.get_weights()])       # not the initial values
    detector = modellib.inference_model(trainer, images_per_batch=3)
    assert detector.mode == "inference" and detector.config.BATCH_SIZE == 3
    assert tiny_config.BATCH_SIZE == 2                               # the source's config is kept
    copied = detector.keras_model.get_layer("mrcnn_mask").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), copied))

    path = str(tmp_path / "w.h5")
    save_weights_by_name(trainer.keras_model, path)
    loaded = modellib.inference_model(tiny_config, weights=path)
    assert loaded.config.BATCH_SIZE == 1
    assert all(np.array_equal(a, b) for a, b in
               zip(layer.get_weights(), loaded.keras_model.get_layer("mrcnn_mask").get_weights()))
    fresh = modellib.inference_model(tiny_config)                    # a Config alone: initial weights
    assert not np.array_equal(fresh.keras_model.get_layer("mrcnn_mask").get_weights()[0], copied[0])
    with pytest.raises(ValueError, match="pass a MaskRCNN or a Config"):
        modellib.inference_model(path)


def test_detect_dataset_pads_the_last_partial_batch_and_drops_the_padding(shapes_val, tmp_path):
    """Three images at BATCH_SIZE 2: [0, 1], then [2, 2] of which one result is kept."""
    from mrcnn import model as modellib
    from tests.conftest import TinyConfig

    class Pairs(TinyConfig):
        DETECTION_MIN_CONFIDENCE = 0.0      # random weights: keep every detection

    model = modellib.MaskRCNN("inference", Pairs(), str(tmp_path))
    results = evaluate.detect_dataset(model, shapes_val, image_ids=[0, 1, 2], verbose=0)
    images = [shapes_val.load_image(i) for i in (0, 1, 2)]
    expected = model.detect(images[:2]) + model.detect([images[2], images[2]])[:1]
    assert len(results) == 3 and len(expected[2]["scores"]) > 0
    for got, want in zip(results, expected):
        for key in ("rois", "class_ids", "scores", "masks"):
            np.testing.assert_array_equal(got[key], want[key])
    assert not np.array_equal(results[1]["rois"], results[2]["rois"])

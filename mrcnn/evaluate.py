"""Evaluation: detections over a dataset, COCO results files, COCO AP and matterport's mAP.

Two halves, so that scoring needs no model:

- `detect_dataset(model, dataset)` runs an inference `MaskRCNN` over a
  dataset's images, BATCH_SIZE at a time, with a progress bar;
- `score_detections(dataset, detections)` scores detections (dicts as
  `detect()` returns, one per image) against the dataset's `load_mask`:
  pycocotools' COCOeval for "bbox" and "segm" (its 12 summary numbers) and
  matterport's `utils.compute_ap` mAP@0.5 and `compute_ap_range` mAP@[.5:.95].

`evaluate(model, dataset)` does both. `EvaluationCallback` evaluates during
`MaskRCNN.train()`.

Ids in COCO files (`to_coco_results`, `coco_ground_truth`):
- category_id: each class's id in its source (`dataset.class_info[c]["id"]`,
  for a COCO dataset the original category id) when those are distinct
  integers; otherwise the dataset's internal class id.
- image_id: `dataset.image_info[i]["id"]` when every image comes from source
  "coco" (the original COCO image id); otherwise the internal image id `i`.
Boxes are [x, y, width, height] in the original image's pixels; masks are
RLE with string counts. Negative ground-truth class ids (COCO crowds) become
`iscrowd` regions of their class.
"""

import contextlib
import copy
import io
import json
import numbers
import os

import keras
import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from mrcnn import utils
from mrcnn.model import inference_config, inference_model
from mrcnn.weights import copy_weights_by_name

__all__ = [
    "inference_config", "inference_model", "COCO_METRICS", "IOU_TYPES", "category_ids",
    "coco_image_ids", "ground_truth", "encode_masks", "to_coco_results", "save_results",
    "coco_ground_truth", "coco_metrics", "mean_ap", "mean_ap_range", "score_detections",
    "detection_settings", "format_metrics", "detect_dataset", "evaluate", "EvaluationCallback",
]

# COCOeval.stats, in its order: AP at IoU .5:.95, .5, .75, for small, medium,
# large objects; AR with 1, 10, 100 detections per image, small, medium, large.
# -1 means no ground truth of that size.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


############################################################
#  Ids, ground truth, COCO records
############################################################

def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def category_ids(dataset):
    """COCO category id of each internal class id (entry 0, the background, is 0)."""
    source_ids = [info["id"] for info in dataset.class_info[1:]]
    if all(_is_int(i) for i in source_ids) and len(set(source_ids)) == len(source_ids):
        return [0] + [int(i) for i in source_ids]
    return list(range(len(dataset.class_info)))


def coco_image_ids(dataset):
    """COCO image id of each internal image id."""
    infos = dataset.image_info
    ids = [info["id"] for info in infos]
    if infos and all(info["source"] == "coco" and _is_int(info["id"]) for info in infos) \
            and len(set(ids)) == len(ids):
        return [int(i) for i in ids]
    return list(range(len(infos)))


def _image_ids(dataset, image_ids):
    if getattr(dataset, "num_classes", None) is None:
        raise ValueError("The dataset is not prepared; call dataset.prepare() first.")
    ids = list(dataset.image_ids if image_ids is None else np.asarray(image_ids).ravel())
    bad = [i for i in ids if not _is_int(i) or not 0 <= i < len(dataset.image_info)]
    if bad:
        raise ValueError(f"image_ids {bad[:5]} are not internal ids of the dataset "
                         f"(0..{len(dataset.image_info) - 1}).")
    return [int(i) for i in ids]


def _first(image_ids, limit):
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"limit is {limit!r}; use a number of images >= 1, or None for all.")
    return image_ids[:limit]


def ground_truth(dataset, image_ids=None, verbose=0):
    """Each image's instances from `load_mask`: {"rois", "class_ids", "masks"}, like detect()'s dicts.

    rois [N, (y1, x1, y2, x2)] are the masks' boxes; "shape" is the image's (H, W).
    """
    gts = []
    for image_id in tqdm(_image_ids(dataset, image_ids), desc="ground truth", unit="image",
                         disable=not verbose):
        masks, class_ids = dataset.load_mask(image_id)
        masks, class_ids = np.asarray(masks), np.asarray(class_ids).reshape(-1).astype(np.int32)
        if not len(class_ids) and (masks.ndim != 3 or 0 in masks.shape[:2]):  # e.g. the base class's 0x0x0
            masks = np.zeros(_image_shape(dataset, image_id) + (0,), bool)
        if masks.ndim != 3 or masks.shape[-1] != len(class_ids):
            raise ValueError(f"Image {image_id}: load_mask returned masks {masks.shape} and "
                             f"{len(class_ids)} class ids; expected [H, W, N] masks and N ids.")
        masks = masks.astype(bool)
        gts.append({"rois": utils.extract_bboxes(masks), "class_ids": class_ids, "masks": masks,
                    "shape": masks.shape[:2]})
    return gts


def _image_shape(dataset, image_id):
    """(H, W) of an image: from image_info's height and width if there, else by loading it."""
    info = dataset.image_info[image_id]
    if "height" in info and "width" in info:
        return int(info["height"]), int(info["width"])
    return tuple(int(s) for s in np.shape(dataset.load_image(image_id))[:2])


def encode_masks(masks):
    """Bool masks [H, W, N] as N COCO RLEs {"size": [H, W], "counts": str}."""
    rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8)))
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in rles]


def _xywh(boxes):
    """(y1, x1, y2, x2) pixel boxes (y2, x2 exclusive) as COCO [x, y, width, height] lists."""
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for y1, x1, y2, x2 in boxes]


def _checked_detection(detection, index, shape, num_classes):
    """A detection dict's arrays, validated (against the image's (H, W) `shape` unless None)."""
    missing = {"rois", "class_ids", "scores", "masks"} - set(detection)
    if missing:
        raise ValueError(f"Detections of image {index} lack {sorted(missing)}; pass the dicts "
                         "detect() returns (rois, class_ids, scores, masks).")
    rois = np.asarray(detection["rois"]).reshape(-1, 4)
    class_ids = np.asarray(detection["class_ids"]).reshape(-1)
    scores = np.asarray(detection["scores"], dtype=np.float64).reshape(-1)
    masks = np.asarray(detection["masks"])
    n = len(rois)
    if len(class_ids) != n or len(scores) != n or masks.ndim != 3 or masks.shape[-1] != n:
        raise ValueError(f"Detections of image {index}: {n} rois, {len(class_ids)} class_ids, "
                         f"{len(scores)} scores and masks {masks.shape}; expected N of each and "
                         "masks [H, W, N].")
    if n and shape is not None and masks.shape[:2] != tuple(shape):
        raise ValueError(f"Detections of image {index}: masks of size {masks.shape[:2]} for an "
                         f"image of size {tuple(shape)}; detections must be in the original image's pixels.")
    bad = class_ids[(class_ids < 1) | (class_ids >= num_classes)]
    if len(bad):
        raise ValueError(f"Detections of image {index}: class ids {sorted(set(bad.tolist()))} "
                         f"outside 1..{num_classes - 1} (the dataset's classes, 0 is the background).")
    return rois, class_ids.astype(np.int32), scores, masks.astype(bool)


def to_coco_results(dataset, detections, image_ids=None):
    """detect()'s dicts, one per image of `image_ids`, as COCO result records.

    Each record: image_id, category_id (see the module docstring), bbox
    [x, y, w, h] in the original image's pixels, score, segmentation (RLE with
    string counts). Box and mask of one detection are in one record, as
    detectron2 writes them; `coco_metrics` uses the one it scores.
    """
    image_ids = _image_ids(dataset, image_ids)
    detections = list(detections)
    if len(detections) != len(image_ids):
        raise ValueError(f"Got {len(detections)} detection dicts for {len(image_ids)} images; "
                         "pass one per image, in the order of image_ids.")
    cats, coco_ids = category_ids(dataset), coco_image_ids(dataset)
    records = []
    for image_id, detection in zip(image_ids, detections):
        info = dataset.image_info[image_id]
        shape = (info["height"], info["width"]) if "height" in info and "width" in info else None
        rois, class_ids, scores, masks = _checked_detection(detection, image_id, shape,
                                                            dataset.num_classes)
        for box, rle, class_id, score in zip(_xywh(rois), encode_masks(masks), class_ids, scores):
            records.append({"image_id": coco_ids[image_id], "category_id": cats[class_id],
                            "bbox": box, "score": float(score), "segmentation": rle})
    return records


def save_results(path, records):
    """Write COCO result records (or any JSON-able value) to a JSON file, creating its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _coco_from_ground_truth(dataset, image_ids, gts):
    cats, coco_ids = category_ids(dataset), coco_image_ids(dataset)
    images, annotations = [], []
    for image_id, gt in zip(image_ids, gts):
        images.append({"id": coco_ids[image_id], "height": gt["shape"][0], "width": gt["shape"][1]})
        for class_id, box, rle, mask in zip(gt["class_ids"], _xywh(gt["rois"]),
                                            encode_masks(gt["masks"]), np.moveaxis(gt["masks"], -1, 0)):
            annotations.append({"id": len(annotations) + 1, "image_id": coco_ids[image_id],
                                "category_id": cats[abs(int(class_id))], "iscrowd": int(class_id < 0),
                                "bbox": box, "area": float(mask.sum()), "segmentation": rle})
    categories = [{"id": cats[c], "name": dataset.class_names[c]} for c in range(1, dataset.num_classes)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_ground_truth(dataset, image_ids=None):
    """The dataset's instances (from load_mask) as a pycocotools `COCO` object, ids as in to_coco_results."""
    image_ids = _image_ids(dataset, image_ids)
    return _coco_from_ground_truth(dataset, image_ids, ground_truth(dataset, image_ids))


############################################################
#  Scores
############################################################

def coco_metrics(coco_gt, records, iou_type):
    """pycocotools' COCOeval of result records for iou_type "bbox" or "segm": {name: value} of COCO_METRICS.

    coco_gt: a pycocotools COCO (e.g. `coco_ground_truth(dataset)` or
    `COCO("instances_val2017.json")`). For "segm" the records' masks are
    scored (their area decides small/medium/large), for "bbox" their boxes.
    No records give 0 AP (-1 where there is no ground truth of a size).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type is {iou_type!r}; use 'bbox' or 'segm'.")
    key, drop = ("segmentation", "bbox") if iou_type == "segm" else ("bbox", "segmentation")
    records = [{k: v for k, v in r.items() if k != drop} for r in records]
    required = {"image_id", "category_id", "score", key}
    missing = [r for r in records if not isinstance(r, dict) or not required <= set(r)]
    if missing:
        have = sorted(missing[0]) if isinstance(missing[0], dict) else type(missing[0]).__name__
        raise ValueError(f"{len(missing)} result records lack some of {sorted(required)} (e.g. one "
                         f"has {have}); {iou_type!r} scoring needs them all.")
    unknown_images = sorted({r["image_id"] for r in records} - set(coco_gt.getImgIds()))
    unknown_cats = sorted({r["category_id"] for r in records} - set(coco_gt.getCatIds()))
    if unknown_images or unknown_cats:
        raise ValueError(f"Result records name image ids {unknown_images[:5]} / category ids "
                         f"{unknown_cats[:5]} that the ground truth does not have. Score results "
                         "against the dataset they were made from.")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        if records:
            coco_dt = coco_gt.loadRes(copy.deepcopy(records))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": list(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRICS, evaluator.stats)}


def _without_crowds(gt):
    keep = gt["class_ids"] > 0
    return gt["rois"][keep], gt["class_ids"][keep], gt["masks"][:, :, keep]


def mean_ap(gts, detections, iou_threshold=0.5):
    """matterport's mAP: `utils.compute_ap` (mask IoU) per image, averaged over the images.

    Images without ground truth (where compute_ap is nan) and crowd regions
    are left out; nan if no image has ground truth.
    """
    aps = [utils.compute_ap(*_without_crowds(gt), d["rois"], d["class_ids"], d["scores"], d["masks"],
                            iou_threshold=iou_threshold)[0]
           for gt, d in zip(gts, detections) if np.any(gt["class_ids"] > 0)]
    return float(np.mean(aps)) if aps else float("nan")


def mean_ap_range(gts, detections, iou_thresholds=None):
    """`utils.compute_ap_range` (default IoU 0.5:0.05:0.95) per image, averaged like `mean_ap`."""
    aps = [utils.compute_ap_range(*_without_crowds(gt), d["rois"], d["class_ids"], d["scores"],
                                  d["masks"], iou_thresholds=iou_thresholds, verbose=0)
           for gt, d in zip(gts, detections) if np.any(gt["class_ids"] > 0)]
    return float(np.mean(aps)) if aps else float("nan")


def score_detections(dataset, detections, image_ids=None, verbose=0):
    """Score detections (detect()'s dicts, one per image of `image_ids`) against the dataset.

    Returns {"bbox": {COCO_METRICS}, "segm": {COCO_METRICS}, "mAP50": mean_ap
    at IoU 0.5, "mAP50_95": mean_ap_range, "images": count}.
    """
    image_ids = _image_ids(dataset, image_ids)
    if not image_ids:
        raise ValueError("No images to score: the dataset (or image_ids) is empty.")
    detections = list(detections)
    if len(detections) != len(image_ids):
        raise ValueError(f"Got {len(detections)} detection dicts for {len(image_ids)} images; "
                         "pass one per image, in the order of image_ids.")
    gts = ground_truth(dataset, image_ids, verbose=verbose)
    checked = [dict(zip(("rois", "class_ids", "scores", "masks"),
                        _checked_detection(d, i, gt["shape"], dataset.num_classes)))
               for i, d, gt in zip(image_ids, detections, gts)]
    coco_gt = _coco_from_ground_truth(dataset, image_ids, gts)
    records = to_coco_results(dataset, checked, image_ids)
    metrics = {iou_type: coco_metrics(coco_gt, records, iou_type) for iou_type in IOU_TYPES}
    metrics["mAP50"] = mean_ap(gts, checked, 0.5)
    metrics["mAP50_95"] = mean_ap_range(gts, checked)
    metrics["images"] = len(image_ids)
    return metrics


def detection_settings(config):
    """The settings that decide which detections a model reports, to keep with its metrics:
    {"detection_class_mode": DETECTION_CLASS_MODE, "detection_min_confidence": ...}."""
    return {"detection_class_mode": config.DETECTION_CLASS_MODE,
            "detection_min_confidence": float(config.DETECTION_MIN_CONFIDENCE)}


def format_metrics(metrics):
    """`score_detections`' result as a printable table, then the detection settings if it has them."""
    lines = ["      " + " ".join(f"{name:>6}" for name in COCO_METRICS)]
    for iou_type in IOU_TYPES:
        if iou_type in metrics:
            lines.append(f"{iou_type:5} " + " ".join(f"{metrics[iou_type][n]:6.3f}" for n in COCO_METRICS))
    lines.append(f"mAP@0.5 (utils.compute_ap, mean over {metrics['images']} images): {metrics['mAP50']:.4f}")
    lines.append(f"mAP@[.5:.95] (utils.compute_ap_range): {metrics['mAP50_95']:.4f}")
    if "detection_class_mode" in metrics:
        lines.append(f"detection class mode: {metrics['detection_class_mode']} "
                     f"(DETECTION_MIN_CONFIDENCE {metrics['detection_min_confidence']:g})")
    return "\n".join(lines)


############################################################
#  With a model
############################################################

def detect_dataset(model, dataset, image_ids=None, verbose=1):
    """`model.detect` over the dataset's images, BATCH_SIZE at a time; one result dict per image.

    The last batch is padded with its last image. Shows a progress bar when verbose.
    """
    image_ids = _image_ids(dataset, image_ids)
    batch = model.config.BATCH_SIZE
    results = []
    with tqdm(total=len(image_ids), desc="detect", unit="image", disable=not verbose) as bar:
        for start in range(0, len(image_ids), batch):
            images = [dataset.load_image(i) for i in image_ids[start:start + batch]]
            padded = images + [images[-1]] * (batch - len(images))
            results.extend(model.detect(padded)[:len(images)])
            bar.update(len(images))
    return results


def evaluate(model, dataset, image_ids=None, limit=None, results_path=None, verbose=1):
    """Detect on the dataset's images (the first `limit` of `image_ids`) and score them.

    Returns `score_detections`' dict plus the model's `detection_settings`
    (the scores depend on them); writes the COCO results JSON to
    `results_path` if given.
    """
    image_ids = _first(_image_ids(dataset, image_ids), limit)
    detections = detect_dataset(model, dataset, image_ids, verbose=verbose)
    if results_path:
        save_results(results_path, to_coco_results(dataset, detections, image_ids))
    return {**score_detections(dataset, detections, image_ids, verbose=verbose),
            **detection_settings(model.config)}


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluate a model being trained by `MaskRCNN.train()` every `every` epochs.

    model: the training `MaskRCNN`; dataset: a prepared validation dataset,
    of which the first `limit` images are scored. An inference copy of the
    model is built once (`model.inference_model`); before each evaluation it
    gets the training weights by layer name. Adds val_bbox_AP, val_bbox_AP50, val_segm_AP,
    val_segm_AP50 and val_mAP50 to the epoch's logs (so the progress line and
    the History show them) and writes them to TensorBoard under
    `<model.log_dir>/evaluation`.

        model.train(train_ds, val_ds, ..., custom_callbacks=[EvaluationCallback(model, val_ds, every=5)])
    """

    LOGGED = (("bbox", "AP"), ("bbox", "AP50"), ("segm", "AP"), ("segm", "AP50"))

    def __init__(self, model, dataset, every=1, limit=None, images_per_batch=1, verbose=0):
        super().__init__()
        if not _is_int(every) or every < 1:
            raise ValueError(f"every is {every!r}; use a number of epochs >= 1.")
        self.maskrcnn = model
        self.dataset = dataset
        self.image_ids = _first(_image_ids(dataset, None), limit)
        if not self.image_ids:
            raise ValueError("EvaluationCallback: the dataset has no images to evaluate.")
        self.every = every
        self.images_per_batch = images_per_batch
        self.verbose = verbose
        self._detector = None
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if self._detector is None:
            self._detector = inference_model(self.maskrcnn, images_per_batch=self.images_per_batch)
        else:
            copy_weights_by_name(self.maskrcnn.keras_model, self._detector.keras_model)
        detections = detect_dataset(self._detector, self.dataset, self.image_ids, verbose=self.verbose)
        metrics = score_detections(self.dataset, detections, self.image_ids)
        values = {f"val_{iou_type}_{name}": metrics[iou_type][name] for iou_type, name in self.LOGGED}
        values["val_mAP50"] = metrics["mAP50"]
        if logs is not None:
            logs.update(values)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.maskrcnn.log_dir, "evaluation"))
        with self._writer.as_default():
            for key, value in values.items():
                tf.summary.scalar(f"epoch_{key[4:]}", value, step=epoch)
        self._writer.flush()


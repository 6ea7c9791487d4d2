"""Ground truth of one training image: load, check, augment, the per-image `Sample`, and
the rules for skipping images that every batching loop follows (`SkipRules`).

For the same inputs and the same `np.random` state `load_image_gt` returns
matterport's values. Where matterport crashed, looped forever or returned
wrong values the docstring says what is done instead. Random draws take an
optional `rng` (a np.random.RandomState) so the pipeline's threads can each
draw repeatably; None draws from the global np.random and random, as matterport.
"""

import logging
import random
import threading
import warnings
from typing import NamedTuple

import numpy as np

from mrcnn import utils
from mrcnn.image_meta import compose_image_meta
from mrcnn.images import to_channels
from mrcnn.targets import random_source, build_detection_targets, build_rpn_targets, generate_random_rois

__all__ = [
    "MASK_AUGMENTERS", "TrainingShapeError", "MAX_CONSECUTIVE_ERRORS", "load_image_gt",
    "Sample", "pad_instances", "SkipRules",
]

logger = logging.getLogger(__name__)

# imgaug augmenters that move pixels the same way in images and masks; the
# others (colour, blur, noise...) are applied to images only.
MASK_AUGMENTERS = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud",
                   "CropAndPad", "Affine", "PiecewiseAffine")

# Held while a seeded augmentation callable runs on the process-wide np.random and random.
_GLOBAL_RNG = threading.Lock()


class TrainingShapeError(ValueError):
    """A training image's molded size differs from the IMAGE_SHAPE the training
    graph (anchors, RPN targets) is built for: a configuration error, raised at
    once rather than skipped like an image that fails to load."""


# Images that may fail to load in a row, each logged and skipped, before the error is raised.
MAX_CONSECUTIVE_ERRORS = 5




############################################################
#  Ground truth of one image
############################################################

def load_image_gt(dataset, config, image_id, augmentation=None, use_mini_mask=None, *,
                  augment=False, rng=None):
    """Load an image and its instances, resized and augmented for training.

    augmentation: an imgaug augmenter (anything with `to_deterministic`) or a
        callable `(image, masks) -> (image, masks)` taking and returning an
        image [H, W, C] and bool masks [H, W, N]; it must keep the image shape
        and the number of masks (float masks are thresholded at 0.5).
    use_mini_mask: None means config.USE_MINI_MASK (matterport's default was
        False).
    augment: deprecated, a random horizontal flip; use `augmentation`.
    rng: a np.random.RandomState for the random draws (crop, flip, the
        augmentation's seed; see `_augment`); None means the global np.random
        and random, as matterport.

    The image is brought to config.IMAGE_CHANNEL_COUNT channels by
    `dataset.to_channels`: RGB uint8 for 3, RGB from load_image turned gray for
    1; for other counts load_image must return [H, W, C] arrays.

    Returns image [H, W, C], image_meta (see
    `compose_image_meta`), class_ids [N] int32, bbox [N, (y1, x1, y2, x2)]
    int32 and bool masks [H, W, N] (or [*MINI_MASK_SHAPE, N]). Instances whose
    mask is empty (in load_mask's output, or after resizing or augmentation)
    are dropped together with their class id; none left is an image without
    instances. Negative class ids (COCO crowds) are kept.

    load_mask may return masks as bool, as integers (non-zero is set: 0/1 or
    0/255 images), or as floats holding only 0 and 1; class ids of any
    integer dtype, or integral floats. Anything else (soft or NaN float
    masks, object or string arrays, an HxW mask, N differing between masks
    and class ids, masks of another size than the image, class ids 0 or
    outside -(NUM_CLASSES - 1)..NUM_CLASSES - 1, an image that resizing would
    shrink to less than a pixel across) raises ValueError naming the image
    (`_describe`) and the fix.
    """
    if use_mini_mask is None:
        use_mini_mask = config.USE_MINI_MASK
    _check_dataset(dataset, config)
    name = _describe(dataset, image_id)
    image = to_channels(dataset.load_image(image_id), config.IMAGE_CHANNEL_COUNT,
                        f"Image {name} from load_image")
    mask, class_ids = _checked_mask(dataset.load_mask(image_id), image, name, config)
    original_shape = image.shape
    with np.errstate(divide="ignore"):  # skimage's, for a side resized to 0; raised below
        image, window, scale, padding, crop = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE, rng=rng)
    if window[2] <= window[0] or window[3] <= window[1]:
        raise ValueError(f"Image {name} is {original_shape[0]}x{original_shape[1]} pixels: "
                         f"resized to IMAGE_MAX_DIM {config.IMAGE_MAX_DIM} it would be "
                         f"{window[2] - window[0]}x{window[3] - window[1]}. Crop or tile such "
                         "elongated images, or raise IMAGE_MAX_DIM.")
    mask = utils.resize_mask(mask, scale, padding, crop)

    if augment:
        warnings.warn("load_image_gt: 'augment' is deprecated; use 'augmentation', e.g. "
                      "lambda image, masks: (image[:, ::-1], masks[:, ::-1]).", FutureWarning,
                      stacklevel=2)
        if random_source(rng).randint(2):
            image, mask = np.fliplr(image), np.fliplr(mask)
    if augmentation is not None:
        image, mask = _augment(image, mask, augmentation, image_id, rng)

    keep = np.any(mask, axis=(0, 1))
    mask, class_ids = mask[:, :, keep], class_ids[keep]
    bbox = utils.extract_bboxes(mask)

    # Classes of the image's source: the classifier loss ignores the others.
    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    active_class_ids[dataset.source_class_ids[dataset.image_info[image_id]["source"]]] = 1

    if use_mini_mask:
        mask = utils.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)

    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active_class_ids)
    return image, image_meta, class_ids, bbox, mask


def _check_dataset(dataset, config):
    """Raise ValueError when the dataset is not prepared or its classes do not fit the config."""
    if getattr(dataset, "num_classes", None) is None:
        raise ValueError("The dataset is not prepared; call dataset.prepare() first.")
    if dataset.num_classes != config.NUM_CLASSES:
        raise ValueError(f"The dataset has {dataset.num_classes} classes (background included) but "
                         f"{type(config).__name__}.NUM_CLASSES is {config.NUM_CLASSES}. Set "
                         f"NUM_CLASSES = {dataset.num_classes} or register the missing classes.")
    if len(dataset.image_ids) == 0:
        raise ValueError("The dataset has no images; add_image() some before training.")


def _checked_mask(loaded, image, name, config):
    """Validate load_mask's output (see `load_image_gt`); bool masks [H, W, N], int32 class ids [N]."""
    where = f"Image {name}: load_mask returned"
    if not (isinstance(loaded, tuple | list) and len(loaded) == 2):
        raise ValueError(f"{where} a {type(loaded).__name__}, not (masks, class_ids). Return "
                         "a pair: bool masks [H, W, N] and int32 class ids [N].")
    mask, class_ids = (np.asarray(v) for v in loaded)
    class_ids = class_ids.reshape(-1)
    if mask.ndim != 3:
        raise ValueError(f"{where} masks of shape {mask.shape}. Return [H, W, N] masks, one "
                         "channel per instance (mask[..., np.newaxis] for a single instance).")
    if mask.shape[-1] != class_ids.shape[0]:
        raise ValueError(f"{where} {mask.shape[-1]} masks but {class_ids.shape[0]} class ids. "
                         "Return one class id per mask channel.")
    if class_ids.shape[0] == 0:  # no instances: any (e.g. the base class's 0x0x0) mask will do
        return np.zeros(image.shape[:2] + (0,), bool), class_ids.astype(np.int32)
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"{where} masks of size {mask.shape[:2]} for an image of size "
                         f"{image.shape[:2]}. Return masks the size of the image returned "
                         "by load_image.")
    if mask.dtype.kind not in "biuf" or (mask.dtype.kind == "f" and not np.all(
            (mask == 0) | (mask == 1))):
        what = (f"float masks with values other than 0 and 1 (e.g. {_odd_value(mask)})"
                if mask.dtype.kind == "f" else f"masks of dtype {mask.dtype}")
        raise ValueError(f"{where} {what}. Return bool masks; threshold soft masks yourself, "
                         "e.g. mask >= 0.5.")
    if class_ids.dtype.kind not in "iu" and (
            class_ids.dtype.kind != "f" or not np.array_equal(class_ids, np.round(class_ids))):
        raise ValueError(f"{where} non-integer class ids {class_ids}. Return int32 class ids.")
    bad = (np.abs(class_ids) < 1) | (np.abs(class_ids) >= config.NUM_CLASSES)
    if np.any(bad):  # checked before the cast to int32, which would wrap large ids
        raise ValueError(f"{where} class ids {sorted(set(class_ids[bad].tolist()))} outside "
                         f"1..{config.NUM_CLASSES - 1} (NUM_CLASSES is {config.NUM_CLASSES}; "
                         "0 is the background, negative ids mark COCO crowds). Return ids of "
                         "classes registered with add_class, or raise NUM_CLASSES.")
    return mask.astype(bool), class_ids.astype(np.int32)


def _odd_value(mask):
    """A value of a float mask that is neither 0 nor 1."""
    return mask[(mask != 0) & (mask != 1)].flat[0]


def _augment(image, mask, augmentation, image_id, rng=None):
    """Apply an imgaug augmenter or an `(image, masks)` callable to an image and its masks.

    With `rng` (a np.random.RandomState) the draws are repeatable and may run
    in parallel threads: an imgaug augmenter runs as a deterministic copy
    seeded from rng; a callable runs under a lock with np.random and random
    seeded from rng (it may use either).
    """
    shape, count = image.shape, mask.shape[-1]
    seed = None if rng is None else int(rng.randint(2 ** 31))
    if hasattr(augmentation, "to_deterministic"):
        import imgaug  # optional dependency, already imported by whoever built the augmenter

        def mask_safe(images, augmenter, parents, default):
            """Only geometric augmenters touch the masks."""
            return augmenter.__class__.__name__ in MASK_AUGMENTERS

        det = augmentation.to_deterministic()
        if seed is not None:
            det.seed_(seed, deterministic_too=True)
        image = det.augment_image(image)
        if count:
            mask = det.augment_image(mask.astype(np.uint8),
                                     hooks=imgaug.HooksImages(activator=mask_safe))
    elif callable(augmentation):
        if seed is None:
            image, mask = augmentation(image, mask)
        else:
            with _GLOBAL_RNG:
                np.random.seed(seed)
                random.seed(seed)
                image, mask = augmentation(image, mask)
        image, mask = np.asarray(image), np.asarray(mask)
    else:
        raise ValueError(f"augmentation must be an imgaug augmenter or a callable "
                         f"(image, masks) -> (image, masks), got {type(augmentation).__name__}.")
    if image.shape != shape:
        raise ValueError(f"Image {image_id}: augmentation changed the image shape from {shape} "
                         f"to {image.shape}. Use augmenters that keep the size (e.g. "
                         "CropAndPad(keep_size=True)); resizing is done by the config.")
    if mask.ndim != 3 or mask.shape != shape[:2] + (count,):
        raise ValueError(f"Image {image_id}: augmentation returned masks of shape {mask.shape}, "
                         f"expected {shape[:2] + (count,)}. Return all masks, even emptied ones "
                         "(empty masks are dropped with their class ids).")
    return image, (mask >= 0.5 if mask.dtype.kind == "f" else mask.astype(bool))



############################################################
#  One training sample, and the rules for skipping images
############################################################

class Sample(NamedTuple):
    """One training image's arrays (`_load_sample`), before molding and padding.

    image [H, W, C] as resized (not molded); image_meta (`compose_image_meta`);
    rpn_match [anchors] int32 and rpn_bbox [RPN_TRAIN_ANCHORS_PER_IMAGE, 4]
    (`build_rpn_targets`); gt_class_ids [N] int32, gt_boxes [N, 4] int32,
    gt_masks [h, w, N] bool, N <= MAX_GT_INSTANCES. With random RoIs: rois
    [random_rois, 4] int32 (`generate_random_rois`), and with detection
    targets `build_detection_targets`' target_rois, target_class_ids,
    target_bbox and target_mask; None otherwise.
    """
    image: np.ndarray
    image_meta: np.ndarray
    rpn_match: np.ndarray
    rpn_bbox: np.ndarray
    gt_class_ids: np.ndarray
    gt_boxes: np.ndarray
    gt_masks: np.ndarray
    rois: np.ndarray | None = None
    target_rois: np.ndarray | None = None
    target_class_ids: np.ndarray | None = None
    target_bbox: np.ndarray | None = None
    target_mask: np.ndarray | None = None


def _load_sample(dataset, config, image_id, anchors, augmentation, random_rois,
                 detection_targets, augment=False, rng=None):
    """One image's training `Sample`, or None when it has no (non-crowd) instance.

    An image whose image_info has a true "train_empty" (what the loaders of
    `mrcnn.formats` set for images without annotations when asked) is kept
    as pure background: all its RPN anchors are negatives, and the RoI heads
    get no sample from it (the RoI sampler takes negatives in proportion to
    positives, as matterport's does). Not with `random_rois`, which are
    drawn around GT boxes. detection_targets: also `build_detection_targets`
    for the random RoIs (only with random_rois). rng: see `load_image_gt`.
    """
    image, image_meta, gt_class_ids, gt_boxes, gt_masks = load_image_gt(
        dataset, config, image_id, augmentation=augmentation,
        use_mini_mask=config.USE_MINI_MASK, augment=augment, rng=rng)
    if image.shape[:2] != tuple(config.IMAGE_SHAPE[:2]):
        h, w = config.IMAGE_SHAPE[:2]
        raise TrainingShapeError(
            f"Training image {_describe(dataset, image_id)} is {image.shape[0]}x{image.shape[1]} "
            f"after resizing (IMAGE_RESIZE_MODE {config.IMAGE_RESIZE_MODE!r}), but the training "
            f"graph's anchors and RPN targets are built for IMAGE_SHAPE {h}x{w}. Train with "
            "IMAGE_RESIZE_MODE 'square' (IMAGE_MAX_DIM) or 'crop' (random IMAGE_MIN_DIM crops, as "
            "matterport's nucleus sample), or give every image that size; 'pad64' and 'none' "
            "suit inference configs.")
    if not np.any(gt_class_ids > 0) and (
            random_rois or not dataset.image_info[image_id].get("train_empty")):
        return None
    rpn_match, rpn_bbox = build_rpn_targets(image.shape, anchors, gt_class_ids, gt_boxes, config,
                                            rng=rng)
    extra = {}
    if random_rois:
        extra["rois"] = generate_random_rois(image.shape, random_rois, gt_class_ids, gt_boxes, rng)
        if detection_targets:
            extra.update(zip(("target_rois", "target_class_ids", "target_bbox", "target_mask"),
                             build_detection_targets(extra["rois"], gt_class_ids, gt_boxes,
                                                     gt_masks, config)))
    if gt_boxes.shape[0] > config.MAX_GT_INSTANCES:
        ids = random_source(rng).choice(np.arange(gt_boxes.shape[0]), config.MAX_GT_INSTANCES,
                               replace=False)
        gt_class_ids, gt_boxes, gt_masks = gt_class_ids[ids], gt_boxes[ids], gt_masks[:, :, ids]
    return Sample(image, image_meta, rpn_match, rpn_bbox, gt_class_ids, gt_boxes, gt_masks,
                  **extra)


def pad_instances(class_ids, boxes, masks, max_gt):
    """One image's instances zero padded to `max_gt`: class ids [G] int32, boxes [G, 4] int32,
    masks [h, w, G] bool."""
    count = class_ids.shape[0]
    padded_ids = np.zeros((max_gt,), dtype=np.int32)
    padded_boxes = np.zeros((max_gt, 4), dtype=np.int32)
    padded_masks = np.zeros(masks.shape[:2] + (max_gt,), dtype=bool)
    padded_ids[:count], padded_boxes[:count], padded_masks[:, :, :count] = class_ids, boxes, masks
    return padded_ids, padded_boxes, padded_masks


class SkipRules:
    """The skip and stop rules of every batching loop (`pipeline.data_generator` and
    the tf.data pipeline), around `_load_sample`; safe to call from several threads.

    `load` returns the image's Sample, or None for an image that is skipped:
    one without instances (unless "train_empty", see `_load_sample`; logged
    with the count so far) or one that fails to load (logged with the
    traceback). It raises, and keeps in `error`: a TrainingShapeError at
    once; the last load error after more than MAX_CONSECUTIVE_ERRORS in a
    row (a note says so); a ValueError when 2 * len(image_ids) images in a
    row had no instances (a whole shuffled pass, or more, had none).
    `who` names the loop in those errors. Every skipped image is one log
    record carrying the running totals, which `no_instances` and `failed`
    also hold (images skipped so far without instances, and failing to load).
    """

    def __init__(self, who, dataset, config):
        _check_dataset(dataset, config)
        self.who = who
        self.dataset = dataset
        self.config = config
        self.error = None
        self._lock = threading.Lock()
        self._failures = 0     # images that failed to load in a row
        self._empty = 0        # images without instances in a row
        self.no_instances = 0  # images without instances, in all
        self.failed = 0        # images that failed to load, in all

    def load(self, image_id, anchors, augmentation, random_rois, detection_targets=False,
             augment=False, rng=None):
        """`_load_sample(dataset, config, image_id, ...)` under the rules; None: skipped."""
        try:
            sample = _load_sample(self.dataset, self.config, image_id, anchors, augmentation,
                                  random_rois, detection_targets, augment=augment, rng=rng)
        except TrainingShapeError as e:
            self.error = e
            raise
        except Exception as e:
            with self._lock:
                self._failures += 1
                self.failed += 1
                failures, failed = self._failures, self.failed
            logger.error("Error processing image %s; skipped (%d failed to load so far).",
                         _describe(self.dataset, image_id), failed, exc_info=True)
            if failures > MAX_CONSECUTIVE_ERRORS:
                e.add_note(f"{self.who}: {failures} images in a row failed to load; the last "
                           "error is raised.")
                self.error = e
                raise
            return None
        with self._lock:
            self._failures = 0
            self._empty = 0 if sample is not None else self._empty + 1
            self.no_instances += sample is None
            empty, skipped = self._empty, self.no_instances
        if sample is None:
            logger.warning("Image %s has no instances (crowds aside); skipped (%d skipped so far).",
                           _describe(self.dataset, image_id), skipped)
            if empty >= 2 * len(self.dataset.image_ids):
                self.error = ValueError(f"{self.who}: no image of the dataset has instances "
                                        "(check load_mask and the class ids).")
                raise self.error
        return sample


def _describe(dataset, image_id):
    """Image id with its source, source id and path, for messages."""
    info = dataset.image_info[image_id]
    return f"{image_id} (source {info.get('source')!r}, id {info.get('id')!r}, path {info.get('path')!r})"



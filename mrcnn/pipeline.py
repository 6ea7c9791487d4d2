"""The training input pipeline: a `tf.data.Dataset` of named batches from a `utils.Dataset`.

`training_dataset` maps the image positions of each epoch in parallel
(`workers` threads, order kept) through the numpy loading code of
`mrcnn.data` (`load_image_gt`, the RPN targets), drops images without
instances or that fail to load, batches and prefetches, so the next batches
are ready while a step runs. Each element is a dict keyed by the training
model's input names (`batch_spec`). `dataset_fn` wraps it for
`strategy.distribute_datasets_from_function`, which shards it across input
pipelines.

Epoch e is a function of (seed, e) alone when seeded: its image order is a
concatenation of permutations drawn from (seed, e, pass), and every random
draw of the image at position j (crop, augmentation, RPN anchor sampling,
random RoIs) comes from its own generator seeded by (seed, e, j), whatever
the number of workers and the order they finish in.
"""

import logging
import math
import threading

import numpy as np
import tensorflow as tf

from mrcnn.geometry import compute_anchors
from mrcnn.ground_truth import (MAX_CONSECUTIVE_ERRORS, TrainingShapeError, _check_dataset, _collate,
                                _describe, _load_sample, _pad_instances)
from mrcnn.images import mold_image

logger = logging.getLogger(__name__)

# Batches prepared ahead of the step that consumes them.
PREFETCH_BATCHES = 2


def batch_spec(config, random_rois=0):
    """[(input name, dtype, shape of one image's array)] of the training model's inputs, in order.

    random_rois > 0 adds "input_roi" (the USE_RPN_ROIS False model's RoIs).
    """
    h, w, c = (int(v) for v in config.IMAGE_SHAPE)
    mask_h, mask_w = (int(v) for v in (config.MINI_MASK_SHAPE if config.USE_MINI_MASK
                                       else config.IMAGE_SHAPE[:2]))
    anchors = compute_anchors(config, config.IMAGE_SHAPE).shape[0]
    max_gt = config.MAX_GT_INSTANCES
    spec = [("input_image", tf.float32, (h, w, c)),
            ("input_image_meta", tf.float32, (config.IMAGE_META_SIZE,)),
            ("input_rpn_match", tf.int32, (anchors, 1)),
            ("input_rpn_bbox", tf.float32, (config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4)),
            ("input_gt_class_ids", tf.int32, (max_gt,)),
            ("input_gt_boxes", tf.float32, (max_gt, 4)),
            # uint8, not the input's bool: under tf.distribute Keras sums a batch's fields.
            ("input_gt_masks", tf.uint8, (mask_h, mask_w, max_gt))]
    if random_rois:
        spec.append(("input_roi", tf.int32, (random_rois, 4)))
    return spec


class _Loader:
    """One image's training arrays by (epoch, position); called from tf.data's threads.

    A fatal error (wrong image size, too many failures in a row, no image with
    instances) is kept in `error` and raised, which stops the pipeline.
    """

    def __init__(self, dataset, config, shuffle, augmentation, no_augmentation_sources,
                 random_rois, seed):
        _check_dataset(dataset, config)
        self.dataset = dataset
        self.config = config
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.no_augmentation_sources = set(no_augmentation_sources or [])
        self.random_rois = random_rois
        self.seed = seed
        self.image_ids = np.copy(dataset.image_ids)
        self.anchors = compute_anchors(config, config.IMAGE_SHAPE)
        self.spec = batch_spec(config, random_rois)
        self.error = None
        self._lock = threading.Lock()
        self._orders = {}
        self._failures = 0     # images that failed to load in a row
        self._empty = 0        # images without instances in a row

    def image_id(self, epoch, position):
        """The image at `position` of `epoch`: whole permutations of the dataset, concatenated."""
        count = len(self.image_ids)
        if not self.shuffle:
            return self.image_ids[position % count]
        key = (epoch, position // count)
        with self._lock:
            if key not in self._orders:
                rng = np.random if self.seed is None else np.random.default_rng([self.seed, *key])
                self._orders[key] = rng.permutation(self.image_ids)
                while len(self._orders) > 8:             # only the latest passes are in use
                    del self._orders[next(iter(self._orders))]
            return self._orders[key][position % count]

    def load(self, epoch, position):
        """(ok, *fields): ok False (with zero fields) for an image that is skipped."""
        epoch, position = int(epoch), int(position)
        image_id = self.image_id(epoch, position)
        rng = (None if self.seed is None else np.random.RandomState(
            np.random.SeedSequence([self.seed, epoch, position]).generate_state(4)))
        plain = self.dataset.image_info[image_id]["source"] in self.no_augmentation_sources
        try:
            sample = _load_sample(self.dataset, self.config, image_id, self.anchors,
                                  None if plain else self.augmentation, self.random_rois,
                                  detection_targets=False, rng=rng)
        except TrainingShapeError as e:
            self.error = e
            raise
        except Exception as e:
            logger.error("Error processing image %s; skipped.", _describe(self.dataset, image_id),
                         exc_info=True)
            with self._lock:
                self._failures += 1
                failures = self._failures
            if failures > MAX_CONSECUTIVE_ERRORS:
                e.add_note(f"training_dataset: {failures} images in a row failed to load; the "
                           "last error is raised.")
                self.error = e
                raise
            return self._skipped()
        with self._lock:
            self._failures = 0
            self._empty = 0 if sample is not None else self._empty + 1
            empty = self._empty
        if sample is None:
            logger.warning("Image %s has no instances; skipped.", _describe(self.dataset, image_id))
            if empty >= 2 * len(self.image_ids):           # a whole shuffled pass had none
                self.error = ValueError("training_dataset: no image of the dataset has instances "
                                        "(check load_mask and the class ids).")
                raise self.error
            return self._skipped()
        return (np.bool_(True), *self._fields(sample))

    def _fields(self, sample):
        image, meta, rpn_match, rpn_bbox, class_ids, boxes, masks, *rois = sample
        class_ids, boxes, masks = _pad_instances(class_ids, boxes, masks,
                                                 self.config.MAX_GT_INSTANCES)
        values = [mold_image(image, self.config), meta, rpn_match[:, np.newaxis], rpn_bbox,
                  class_ids, boxes, masks] + rois
        return [np.asarray(v, dtype=dtype.as_numpy_dtype) for v, (_, dtype, _) in
                zip(values, self.spec)]

    def _skipped(self):
        return (np.bool_(False), *(np.zeros(shape, dtype.as_numpy_dtype)
                                   for _, dtype, shape in self.spec))


def _pipeline(dataset, config, *, shuffle=True, augmentation=None, no_augmentation_sources=None,
              random_rois=0, steps=None, batch_size=None, workers=2, seed=None, epoch=0,
              input_context=None):
    """`training_dataset`'s dataset and its `_Loader` (whose `error` train() re-raises)."""
    loader = _Loader(dataset, config, shuffle, augmentation, no_augmentation_sources,
                     random_rois, seed)
    batch_size = batch_size or config.BATCH_SIZE
    steps = steps or math.ceil(len(loader.image_ids) / batch_size)
    first, stride = 0, 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        first, stride = input_context.input_pipeline_id, input_context.num_input_pipelines
    names = [name for name, _, _ in loader.spec]
    dtypes = [tf.bool] + [dtype for _, dtype, _ in loader.spec]

    def load(e, position):
        ok, *fields = tf.numpy_function(loader.load, [e, position], dtypes, stateful=True)
        for field, (_, _, shape) in zip(fields, loader.spec):
            field.set_shape(shape)
        return ok, dict(zip(names, fields))

    parallel = {"num_parallel_calls": workers, "deterministic": True} if workers > 1 else {}

    def one_epoch(e):
        return (tf.data.Dataset.counter(first, stride)
                .map(lambda position: load(e, position), **parallel)
                .filter(lambda ok, fields: ok)
                .map(lambda ok, fields: fields)
                .batch(batch_size, drop_remainder=True)
                .take(steps))

    data = (tf.data.Dataset.counter(epoch).flat_map(one_epoch)
            .prefetch(PREFETCH_BATCHES))
    return data, loader


def training_dataset(dataset, config, *, shuffle=True, augmentation=None,
                     no_augmentation_sources=None, random_rois=0, steps=None, batch_size=None,
                     workers=2, seed=None, epoch=0, input_context=None):
    """An endless `tf.data.Dataset` of training batches for `keras.Model.fit`, `steps` per epoch.

    dataset: a prepared `utils.Dataset`. Each element is a dict of the
    training model's inputs (`batch_spec`), with a leading batch axis of
    `batch_size` (default config.BATCH_SIZE). Epochs start at `epoch`; each
    has `steps` batches (default: enough to cover the dataset once) and is
    shuffled when `shuffle`. augmentation: an imgaug augmenter or a callable
    (image, masks) -> (image, masks), not applied to the sources listed in
    `no_augmentation_sources`. random_rois > 0 adds "input_roi" random RoIs
    (USE_RPN_ROIS False). workers: images loaded in parallel. seed: see the
    module docstring. input_context (a `tf.distribute.InputContext`): this
    pipeline's shard of positions and its per-replica batch size.

    Images without instances (unless their image_info has "train_empty", see
    `ground_truth._load_sample`) and images that fail to load (logged with the
    traceback) are skipped, so every batch is full; more than
    MAX_CONSECUTIVE_ERRORS failures in a row, an image of the wrong size, or a
    dataset with no instances at all stop the pipeline with that error.
    """
    return _pipeline(dataset, config, shuffle=shuffle, augmentation=augmentation,
                     no_augmentation_sources=no_augmentation_sources, random_rois=random_rois,
                     steps=steps, batch_size=batch_size, workers=workers, seed=seed, epoch=epoch,
                     input_context=input_context)[0]


def dataset_fn(dataset, config, **kwargs):
    """`training_dataset(dataset, config, **kwargs)` as a function of a `tf.distribute.InputContext`,
    for `strategy.distribute_datasets_from_function` or `MaskRCNN.train`."""
    return lambda input_context: training_dataset(dataset, config, input_context=input_context,
                                                  **kwargs)


def data_generator(dataset, config, shuffle=True, augment=False, augmentation=None,
                   random_rois=0, batch_size=1, detection_targets=False,
                   no_augmentation_sources=None):
    """Endless generator of training batches `(inputs, outputs)`, as matterport's.

    inputs: images [B, H, W, C] float32 (molded), image_meta [B, IMAGE_META_SIZE]
    float64, rpn_match [B, A, 1] int32, rpn_bbox [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4],
    gt_class_ids [B, MAX_GT_INSTANCES] int32, gt_boxes [B, MAX_GT_INSTANCES, 4]
    int32, gt_masks [B, h, w, MAX_GT_INSTANCES] bool; with random_rois > 0
    also rpn_rois [B, random_rois, 4], and with detection_targets the
    `build_detection_targets` rois as an input and class ids [B, T, 1], deltas
    and masks as outputs (otherwise outputs is []).

    The order is reshuffled after each pass when `shuffle`. Images without
    instances are skipped (the count is logged) unless their image_info has
    "train_empty" (see `_load_sample`). An image that fails to load
    is logged with its traceback and skipped; after more than
    MAX_CONSECUTIVE_ERRORS failures in a row the error is raised (matterport
    counted all failures of the run and raised after six). Sources listed in
    `no_augmentation_sources` get neither `augmentation` nor `augment`.
    """
    _check_dataset(dataset, config)
    image_ids = np.copy(dataset.image_ids)
    no_augmentation_sources = no_augmentation_sources or []
    anchors = compute_anchors(config, config.IMAGE_SHAPE)
    index, errors, skipped, empty_run = -1, 0, 0, 0
    samples = []
    while True:
        index = (index + 1) % len(image_ids)
        if shuffle and index == 0:
            np.random.shuffle(image_ids)
        image_id = image_ids[index]
        plain = dataset.image_info[image_id]["source"] in no_augmentation_sources
        try:
            sample = _load_sample(dataset, config, image_id, anchors,
                                  None if plain else augmentation, random_rois,
                                  detection_targets, augment=augment and not plain)
        except TrainingShapeError:
            raise
        except Exception as e:
            errors += 1
            logger.error("Error processing image %s; skipped.", _describe(dataset, image_id),
                         exc_info=True)
            if errors > MAX_CONSECUTIVE_ERRORS:
                e.add_note(f"data_generator: {errors} images in a row failed to load; "
                           "the last error is raised.")
                raise
            continue
        errors = 0
        if sample is None:
            skipped += 1
            empty_run += 1
            logger.warning("Image %s has no instances; skipped (%d skipped so far).",
                           _describe(dataset, image_id), skipped)
            if empty_run >= 2 * len(image_ids):  # a whole shuffled pass had none
                raise ValueError("data_generator: no image of the dataset has instances "
                                 "(check load_mask and the class ids).")
            continue
        empty_run = 0
        samples.append(sample)
        if len(samples) == batch_size:
            yield _collate(samples, config)
            samples = []

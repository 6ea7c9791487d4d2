"""The training input pipeline: a `tf.data.Dataset` of named batches from a `utils.Dataset`.

`training_dataset` maps the image positions of each epoch in parallel
(`workers` threads, order kept) through the numpy loading code of
`mrcnn.ground_truth` (`load_image_gt`, the RPN targets), drops images
without instances or that fail to load (`ground_truth.SkipRules`), batches
and prefetches, so the next batches are ready while a step runs. Each
element is a dict keyed by the training model's input names: `batch_spec`
owns the batch's names, order, dtypes and shapes, which `_fields` fills for
one image, `_collate` stacks, and matterport's `data_generator` lists. `dataset_fn` wraps it for
`strategy.distribute_datasets_from_function`, which shards it across input
pipelines.

Epoch e is a function of (seed, e) alone when seeded: its image order is a
concatenation of permutations drawn from (seed, e, pass), and every random
draw of the image at position j (crop, augmentation, RPN anchor sampling,
random RoIs) comes from its own generator seeded by (seed, e, j), whatever
the number of workers and the order they finish in.
"""

import math
import threading

import numpy as np
import tensorflow as tf

from mrcnn.geometry import compute_anchors
from mrcnn.ground_truth import SkipRules, pad_instances
from mrcnn.images import mold_image

__all__ = [
    "PREFETCH_BATCHES", "TARGET_OUTPUTS", "batch_spec", "build_pipeline", "training_dataset",
    "dataset_fn", "data_generator",
]

# Batches prepared ahead of the step that consumes them.
PREFETCH_BATCHES = 2


# data_generator(detection_targets=True)'s outputs; the other fields of a batch are its inputs.
TARGET_OUTPUTS = ("target_class_ids", "target_bbox", "target_mask")


def batch_spec(config, random_rois=0, detection_targets=False):
    """[(name, dtype, shape of one image's array)] of a training batch, in the model's input order.

    The names and dtypes are the training model's inputs. random_rois > 0
    adds "input_roi" (the USE_RPN_ROIS False model's RoIs); with it,
    detection_targets adds `build_detection_targets`' "target_rois" (an input
    of data_generator's batches, not of the model) and TARGET_OUTPUTS.
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
        if detection_targets:
            rois, classes = config.TRAIN_ROIS_PER_IMAGE, config.NUM_CLASSES
            spec += [("target_rois", tf.int32, (rois, 4)),
                     ("target_class_ids", tf.int32, (rois, 1)),
                     ("target_bbox", tf.float32, (rois, classes, 4)),
                     ("target_mask", tf.float32, (rois, *config.MASK_SHAPE, classes))]
    return spec


def _fields(sample, config, spec):
    """One `ground_truth.Sample` as `spec`'s fields {name: array}, in its order: the image
    molded, the instances padded to MAX_GT_INSTANCES, in matterport's numpy dtypes."""
    class_ids, boxes, masks = pad_instances(sample.gt_class_ids, sample.gt_boxes,
                                             sample.gt_masks, config.MAX_GT_INSTANCES)
    values = {"input_image": mold_image(sample.image, config).astype(np.float32),
              "input_image_meta": sample.image_meta.astype(np.float64),
              "input_rpn_match": sample.rpn_match[:, np.newaxis],
              "input_rpn_bbox": sample.rpn_bbox,
              "input_gt_class_ids": class_ids, "input_gt_boxes": boxes, "input_gt_masks": masks,
              "input_roi": sample.rois,
              "target_rois": sample.target_rois,
              "target_class_ids": (None if sample.target_class_ids is None
                                   else sample.target_class_ids[:, np.newaxis]),
              "target_bbox": sample.target_bbox, "target_mask": sample.target_mask}
    return {name: values[name] for name, _, _ in spec}


def _collate(samples, config, spec):
    """Samples stacked into a batch {name: array [len(samples), ...]}, in `spec`'s order."""
    fields = [_fields(sample, config, spec) for sample in samples]
    return {name: np.stack([f[name] for f in fields]) for name, _, _ in spec}


class _Loader:
    """One image's training fields by (epoch, position); called from tf.data's threads.

    Images are skipped and the pipeline stopped by `rules` (`ground_truth.SkipRules`),
    whose `error` keeps the error that stopped it.
    """

    def __init__(self, dataset, config, shuffle, augmentation, no_augmentation_sources,
                 random_rois, seed):
        self.rules = SkipRules("training_dataset", dataset, config)
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
        self._lock = threading.Lock()
        self._orders = {}

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
        """(ok, *fields in `spec` order, in its dtypes): ok False, with zeros, for a skipped image."""
        epoch, position = int(epoch), int(position)
        image_id = self.image_id(epoch, position)
        rng = (None if self.seed is None else np.random.RandomState(
            np.random.SeedSequence([self.seed, epoch, position]).generate_state(4)))
        plain = self.dataset.image_info[image_id]["source"] in self.no_augmentation_sources
        sample = self.rules.load(image_id, self.anchors, None if plain else self.augmentation,
                                 self.random_rois, rng=rng)
        if sample is None:
            return (np.bool_(False), *(np.zeros(shape, dtype.as_numpy_dtype)
                                       for _, dtype, shape in self.spec))
        fields = _fields(sample, self.config, self.spec)
        return (np.bool_(True), *(np.asarray(fields[name], dtype.as_numpy_dtype)
                                  for name, dtype, _ in self.spec))


def build_pipeline(dataset, config, *, shuffle=True, augmentation=None, no_augmentation_sources=None,
                   random_rois=0, steps=None, batch_size=None, workers=2, seed=None, epoch=0,
                   input_context=None):
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
    pipeline's shard of positions and its per-replica batch size; `steps`
    then counts global steps.

    Images without instances (unless their image_info has "train_empty", see
    `ground_truth._load_sample`) and images that fail to load (logged with the
    traceback) are skipped, so every batch is full; more than
    MAX_CONSECUTIVE_ERRORS failures in a row, an image of the wrong size, or a
    dataset with no instances at all stop the pipeline with that error.

    Returns the dataset and its `_Loader`, whose `rules.error` train() re-raises.
    """
    loader = _Loader(dataset, config, shuffle, augmentation, no_augmentation_sources,
                     random_rois, seed)
    batch_size = batch_size or config.BATCH_SIZE
    steps = steps or math.ceil(len(loader.image_ids) / batch_size)
    first, stride = 0, 1
    if input_context is not None:
        # This pipeline feeds replicas / pipelines replicas a batch each per global step; its
        # positions p, p + pipelines, ...: together a step's positions are the global batch's.
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        first, stride = input_context.input_pipeline_id, input_context.num_input_pipelines
        steps *= input_context.num_replicas_in_sync // input_context.num_input_pipelines
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


def training_dataset(dataset, config, **kwargs):
    """`build_pipeline(dataset, config, **kwargs)`'s dataset: what `keras.Model.fit` takes."""
    return build_pipeline(dataset, config, **kwargs)[0]


def dataset_fn(dataset, config, **kwargs):
    """`training_dataset(dataset, config, **kwargs)` as a function of a `tf.distribute.InputContext`,
    for `strategy.distribute_datasets_from_function` or `MaskRCNN.train`."""
    return lambda input_context: training_dataset(dataset, config, input_context=input_context,
                                                  **kwargs)


def data_generator(dataset, config, shuffle=True, augment=False, augmentation=None,
                   random_rois=0, batch_size=1, detection_targets=False,
                   no_augmentation_sources=None):
    """Endless generator of training batches `(inputs, outputs)`, as matterport's.

    A positional view of the named batch (`batch_spec`, `_collate`): inputs
    are its fields in `batch_spec` order, outputs the TARGET_OUTPUTS.
    inputs: images [B, H, W, C] float32 (molded), image_meta [B, IMAGE_META_SIZE]
    float64, rpn_match [B, A, 1] int32, rpn_bbox [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4],
    gt_class_ids [B, MAX_GT_INSTANCES] int32, gt_boxes [B, MAX_GT_INSTANCES, 4]
    int32, gt_masks [B, h, w, MAX_GT_INSTANCES] bool; with random_rois > 0
    also rpn_rois [B, random_rois, 4], and with detection_targets the
    `build_detection_targets` rois as an input and class ids [B, T, 1], deltas
    and masks as outputs (otherwise outputs is []).

    The order is reshuffled after each pass when `shuffle`. Images are
    skipped and errors raised by `ground_truth.SkipRules`: images without
    instances are skipped (the count is logged) unless their image_info has
    "train_empty" (see `_load_sample`); an image that fails to load is
    logged with its traceback and skipped; after more than
    MAX_CONSECUTIVE_ERRORS failures in a row the error is raised (matterport
    counted all failures of the run and raised after six). Sources listed in
    `no_augmentation_sources` get neither `augmentation` nor `augment`.
    """
    rules = SkipRules("data_generator", dataset, config)
    spec = batch_spec(config, random_rois, detection_targets)
    inputs = [name for name, _, _ in spec if name not in TARGET_OUTPUTS]
    outputs = [name for name, _, _ in spec if name in TARGET_OUTPUTS]
    image_ids = np.copy(dataset.image_ids)
    no_augmentation_sources = no_augmentation_sources or []
    anchors = compute_anchors(config, config.IMAGE_SHAPE)
    index = -1
    samples = []
    while True:
        index = (index + 1) % len(image_ids)
        if shuffle and index == 0:
            np.random.shuffle(image_ids)
        image_id = image_ids[index]
        plain = dataset.image_info[image_id]["source"] in no_augmentation_sources
        sample = rules.load(image_id, anchors, None if plain else augmentation, random_rois,
                            detection_targets, augment=augment and not plain)
        if sample is None:
            continue
        samples.append(sample)
        if len(samples) == batch_size:
            batch = _collate(samples, config, spec)
            yield [batch[name] for name in inputs], [batch[name] for name in outputs]
            samples = []

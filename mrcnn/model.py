"""Mask R-CNN: the public façade users import (`from mrcnn import model as modellib`).

`MaskRCNN` wraps the Keras training or inference model and offers matterport's
methods (train, detect, load_weights, find_last, ...), and `inference_model`
builds a detector from a training model or a config. The stages live in their
own modules (docs/architecture.md maps them) and are re-exported here under
matterport's names (`__all__`).
"""

import copy
import datetime
import logging
import os
import random
import re

import keras
import numpy as np
import tensorflow as tf

from mrcnn import utils
from mrcnn.backbone import compute_backbone_shapes, resnet_graph
from mrcnn.base_layers import BatchNorm
from mrcnn.config import Config
from mrcnn.distribute import agree, fit_replicas, is_chief, make_strategy, worker_failure
from mrcnn.export import export_saved_model
from mrcnn.geometry import compute_anchors, normalized_anchors, unmold_boxes
from mrcnn.ground_truth import load_image_gt
from mrcnn.image_meta import compose_image_meta, parse_image_meta, parse_image_meta_graph
from mrcnn.imagenet import RESNET50_IMAGENET_URL, RESNET101_IMAGENET_URL, imagenet_weights
from mrcnn.images import mold_image, to_channels, unmold_image
from mrcnn.mask_rcnn import (build_inference_model, build_training_model, inputs_in_order,
                             outputs_by_name)
from mrcnn.pipeline import build_pipeline, data_generator
from mrcnn.roi_heads import (
    DetectionLayer, DetectionTargetLayer, PyramidROIAlign, build_fpn_mask_graph,
    fpn_classifier_graph, mrcnn_bbox_loss_graph, mrcnn_class_loss_graph, mrcnn_mask_loss_graph)
from mrcnn.rpn import (
    ProposalLayer, build_rpn_model, rpn_bbox_loss_graph, rpn_class_loss_graph)
from mrcnn.targets import build_detection_targets, build_rpn_targets, generate_random_rois
from mrcnn.training_state import load_state, restore_optimizer, save_state, state_path
from mrcnn.weights import copy_weights_by_name, keras2_layout, load_weights_by_name, save_weights_by_name
from mrcnn.xla import XlaSplit

__all__ = [
    "compute_backbone_shapes", "resnet_graph", "BatchNorm", "compute_anchors", "load_image_gt",
    "compose_image_meta", "parse_image_meta", "parse_image_meta_graph", "RESNET50_IMAGENET_URL",
    "RESNET101_IMAGENET_URL", "imagenet_weights", "mold_image", "unmold_image",
    "data_generator", "DetectionLayer", "DetectionTargetLayer",
    "PyramidROIAlign", "build_fpn_mask_graph", "fpn_classifier_graph", "mrcnn_bbox_loss_graph",
    "mrcnn_class_loss_graph", "mrcnn_mask_loss_graph", "ProposalLayer", "build_rpn_model",
    "rpn_bbox_loss_graph", "rpn_class_loss_graph", "build_detection_targets",
    "build_rpn_targets", "generate_random_rois", "LAYER_PRESETS", "log", "TrainingDiverged",
    "MaskRCNN", "inference_config", "inference_model", "make_optimizer", "run_name",
    "last_checkpoint",
]

# train(layers=...) presets: regular expressions over layer names.
LAYER_PRESETS = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}


def log(text, array=None):
    """Print a line, with the shape, min, max and dtype of `array` if given."""
    if array is not None:
        text = text.ljust(25)
        text += "shape: {:20}  ".format(str(array.shape))
        if array.size:
            text += "min: {:10.5f}  max: {:10.5f}".format(array.min(), array.max())
        else:
            text += "min: {:10}  max: {:10}".format("", "")
        text += "  {}".format(array.dtype)
    print(text)


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite."""


class _FirstTraceAfterCompile(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning for the first
    trace of the train and test functions that `train()`'s compile() made anew.

    Each `train()` stage recompiles (the trainable layers changed), so Keras builds
    new train/test functions from the same code, and TensorFlow counts their
    first traces together: three short stages pass its threshold (5 traces in 10
    calls). A further trace of the same function (a real retrace, e.g. batches
    of changing shapes) is still reported, and so is everything when Keras'
    functions cannot be inspected.
    """

    def __init__(self, keras_model):
        super().__init__()
        self.keras_model = keras_model

    def _compiled_functions(self):
        """The tf.functions inside Keras' train/test function wrappers (empty if not found)."""
        for wrapper in (self.keras_model.train_function, self.keras_model.test_function):
            for cell in getattr(wrapper, "__closure__", None) or ():
                try:
                    content = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if isinstance(content, tf.types.experimental.PolymorphicFunction):
                    yield content

    def filter(self, record):
        message = record.getMessage()
        if "triggered tf.function retracing" not in message:
            return True
        return not any(f"calls to {function.python_function!r} triggered" in message
                       and function.experimental_get_tracing_count() <= 1
                       for function in self._compiled_functions())


class _StopOnNaN(keras.callbacks.Callback):
    """Stop at the first step whose loss is not finite, before any checkpoint is written."""

    def __init__(self, checkpoint_dir):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise TrainingDiverged(
                f"The training loss became {loss} at epoch {self.epoch + 1}, step {batch + 1}. "
                f"Training stopped; the last complete checkpoint in {self.checkpoint_dir} is intact. "
                "Lower the learning rate or check the data (empty masks, boxes of zero area).")


class _Checkpoint(keras.callbacks.Callback):
    """After every epoch: the training state (`mrcnn.training_state`), then the weights in
    matterport's HDF5 layout, each atomically, so the newest weights have their state."""

    def __init__(self, path_pattern, stage, data_seed):
        super().__init__()
        self.path_pattern = path_pattern
        self.stage = stage
        self.data_seed = data_seed

    def on_epoch_end(self, epoch, logs=None):
        path = self.path_pattern.format(epoch=epoch + 1)
        save_state(state_path(path), self.model.optimizer, epoch + 1, self.stage, self.data_seed)
        save_weights_by_name(self.model, path)


class MaskRCNN:
    """Mask R-CNN in "training" or "inference" mode; the Keras model is `keras_model`."""

    def __init__(self, mode, config, model_dir):
        if mode not in ("training", "inference"):
            raise ValueError(f"mode must be 'training' or 'inference', got {mode!r}.")
        config.validate()
        # Training runs in Config.STRATEGY's strategy (made before any other op), detect() in none.
        self._strategy = (make_strategy(config.STRATEGY) if mode == "training"
                          else tf.distribute.get_strategy())
        config = fit_replicas(config, self._strategy)
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.set_log_dir()
        if config.XLA and config.SEED is not None and mode == "training" \
                and not tf.config.list_physical_devices("GPU"):
            raise ValueError(
                "Config.XLA = True cannot train with Config.SEED set: SEED turns on TensorFlow's "
                "op determinism, and XLA has no deterministic MaxPool gradient (\"MaxPool gradient "
                "ops do not yet have a deterministic XLA implementation\"). Set SEED = None or "
                "XLA = False for training; inference takes both.")
        if config.SEED is not None:
            keras.utils.set_random_seed(config.SEED)  # Python, numpy and TF: the initial weights
            if not tf.config.list_physical_devices("GPU"):
                # Process-wide: without it two processes' CPU runs part after a few steps.
                # Not on GPUs, where crop_and_resize's gradient has no deterministic kernel.
                tf.config.experimental.enable_op_determinism()
        with self._strategy.scope():
            self.keras_model = (build_training_model(config) if mode == "training"
                                else build_inference_model(config))
        self._graph_cache = {}
        self._xla_split = None
        forward = self.keras_model
        if config.XLA:  # the backbone, FPN and RPN head under XLA; see mrcnn.xla
            with self._strategy.scope():
                forward = self._xla_split = XlaSplit(self.keras_model, mode)
            if mode == "training":
                self.keras_model.xla_split = forward
        self._predict = tf.function(lambda inputs: forward(inputs, training=False),
                                    jit_compile=False)

    # ------------------------------------------------------------ checkpoints

    def find_last(self):
        """Path of the newest complete checkpoint of this config under model_dir (see `last_checkpoint`)."""
        return last_checkpoint(self.model_dir, self.config.NAME)

    def set_log_dir(self, model_path=None):
        """Set the run folder and checkpoint path; resume epoch numbering from `model_path`'s name.

        A new run folder is stamped with the time, the chief's on every worker."""
        self.epoch = 0
        m = model_path and re.match(
            r".*[/\\][\w-]+(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})[/\\]mask_rcnn_[\w-]+(\d{4})\.h5",
            str(model_path))
        if m:
            now = datetime.datetime(*map(int, m.groups()[:5]))
            self.epoch = int(m.group(6))  # the next epoch to train, 0-based
            print(f"Re-starting from epoch {self.epoch}")
        else:
            stamp = agree(self._strategy, [int(datetime.datetime.now().strftime("%Y%m%d%H%M"))])[0]
            now = datetime.datetime.strptime(str(stamp), "%Y%m%d%H%M")
        name = run_name(self.config.NAME)
        self.log_dir = os.path.join(self.model_dir, "{}{:%Y%m%dT%H%M}".format(name, now))
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{name}_{{epoch:04d}}.h5")

    def load_weights(self, filepath, by_name=False, exclude=None, verbose=0):
        """Load a Keras-2-layout HDF5 weights file (matterport's or ours) by layer name.

        by_name=False additionally requires the file to cover every layer of
        the model with weights. Returns the load report. Loading a checkpoint
        resumes its run folder and epoch numbering.
        """
        report = load_weights_by_name(self.keras_model, filepath, exclude=exclude, verbose=verbose)
        if not by_name and (report.missing_from_file or report.not_in_model):
            raise ValueError(
                f"{filepath} does not match this model layer for layer: missing from the file "
                f"{report.missing_from_file}, not in the model {report.not_in_model}. "
                "Use by_name=True to load the layers that match.")
        self.set_log_dir(filepath)
        return report

    def get_imagenet_weights(self, backbone=None, url=None):
        """Path of ImageNet weights for `backbone` (default: config.BACKBONE), cached in the Keras cache.

        "resnet50": matterport's file. "resnet101": keras.applications' file,
        converted once to matterport's names (matterport gave ResNet-101
        models the ResNet-50 file; pass backbone="resnet50" for that). See
        mrcnn.imagenet for the mapping and how the features differ.
        """
        backbone = self.config.BACKBONE if backbone is None else backbone
        if callable(backbone):
            raise ValueError("get_imagenet_weights(): config.BACKBONE is a custom callable, which has "
                             "no ImageNet weights; pass backbone='resnet50' or 'resnet101' if it "
                             "uses their layer names, else train it from scratch.")
        return imagenet_weights(backbone, url=url)

    # ------------------------------------------------------------ training

    def ancestor(self, tensor, name, checked=None):
        """The nearest ancestor of a symbolic tensor produced by a layer whose name matches regex `name`."""
        checked = set() if checked is None else checked
        frontier = [tensor]
        while frontier:
            t = frontier.pop(0)
            layer, inputs = _producer(t)
            if id(layer) in checked:
                continue
            checked.add(id(layer))
            if t is not tensor and re.fullmatch(name, layer.name):
                return t
            frontier.extend(inputs)
        return None

    def find_trainable_layer(self, layer):
        """The layer that holds the weights: the inner layer of a wrapper."""
        while isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
        return layer

    def get_trainable_layers(self):
        """Top-level layers that have weights."""
        layers = (self.find_trainable_layer(lay) for lay in self.keras_model.layers)
        return [lay for lay in layers if lay.weights]

    def set_trainable(self, layer_regex, keras_model=None, indent=0, verbose=1):
        """Make layers whose names fully match `layer_regex` trainable and freeze the rest.

        Recurses into nested models (rpn_model). Takes effect at the next compile.
        """
        if verbose > 0 and keras_model is None:
            log("Selecting layers to train")
        keras_model = keras_model or self.keras_model
        for layer in keras_model.layers:
            if isinstance(layer, keras.Model):
                if verbose > 0:
                    print("In model: ", layer.name)
                self.set_trainable(layer_regex, keras_model=layer, indent=indent + 4, verbose=verbose)
                continue
            if not layer.weights:
                continue
            trainable = bool(re.fullmatch(layer_regex, layer.name))
            self.find_trainable_layer(layer).trainable = trainable
            if trainable and verbose > 0:
                log("{}{:20}   ({})".format(" " * indent, layer.name, layer.__class__.__name__))

    def compile(self, learning_rate, momentum):
        """Compile with `make_optimizer(config, learning_rate, momentum)`. The losses live in the model."""
        with self._strategy.scope():
            self.keras_model.compile(optimizer=make_optimizer(self.config, learning_rate, momentum),
                                     jit_compile=False)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
              augmentation=None, custom_callbacks=None, no_augmentation_sources=None, workers=2,
              verbose="auto", resume=False):
        """Train the layers selected by `layers` up to epoch `epochs` (a total, not a count).

        train_dataset, val_dataset: prepared `utils.Dataset`s, fed through
        `mrcnn.pipeline.build_pipeline` (`workers` images loaded in parallel
        while the previous step runs; under a strategy, each worker loads its
        own share of every epoch); or a ready `tf.data.Dataset` of batches
        (dicts keyed by input name, see `pipeline.batch_spec`), or a
        `dataset_fn(input_context)` returning one (see `pipeline.dataset_fn`),
        which the strategy calls once per input pipeline. val_dataset may be None.
        layers: "heads", "3+", "4+", "5+", "all", or a regex over layer names.
        augmentation: an imgaug augmenter or a callable (image, masks) -> (image, masks),
        for a `utils.Dataset` (augment a ready tf.data pipeline inside it).
        verbose: Keras' progress display (0 for none, e.g. when a callback reports).
        resume: continue from the newest complete checkpoint under model_dir
        (`find_last`) if there is one: its weights, epoch and data seed, and
        its optimizer state when it was written by this same stage (epochs,
        layers, learning_rate); without one, train from the current weights.
        Writes TensorBoard logs and one checkpoint (weights, plus its
        `training_state` file) per epoch to `self.log_dir`, on the chief only.
        With USE_RPN_ROIS False the heads train on POST_NMS_ROIS_TRAINING random
        RoIs around the GT boxes (`generate_random_rois`) instead of proposals.
        Each epoch's batches are a function of (data seed, epoch) (see
        mrcnn.pipeline), the data seed being config.SEED or, unset, drawn at
        random (the chief's on every worker) and kept in the checkpoints; with
        SEED set, the whole run on one device is, TensorFlow's random ops being
        seeded when the model is built.
        """
        if self.mode != "training":
            raise ValueError("train() needs a model created with mode='training'.")
        layers = LAYER_PRESETS.get(layers, layers)
        config = self.config
        strategy = self._strategy
        stage = {"epochs": int(epochs), "layers": layers, "learning_rate": float(learning_rate)}
        state = self._resume(stage) if resume else None
        if resume and agree(strategy, [self.epoch])[0] != self.epoch:
            raise ValueError(
                f"resume: this worker found epoch {self.epoch} under {self.model_dir} but the "
                "chief another; model_dir must be storage that every worker reads.")
        data_seed = (config.SEED if config.SEED is not None else
                     state["data_seed"] if state else agree(strategy, [random.randrange(2 ** 31)])[0])
        replicas = strategy.num_replicas_in_sync
        if config.SCALE_LEARNING_RATE and replicas > 1:
            log(f"SCALE_LEARNING_RATE: learning rate {learning_rate} x {replicas} replicas")
            learning_rate = learning_rate * replicas
        random_rois = 0 if config.USE_RPN_ROIS else config.POST_NMS_ROIS_TRAINING
        with strategy.scope():
            distributed = tf.distribute.has_strategy()
        loaders = []

        def feed(data, name, **kwargs):
            """The fit() input for a utils.Dataset, a tf.data.Dataset or a dataset_fn."""
            if isinstance(data, tf.data.Dataset):
                return data
            if hasattr(data, "image_info"):
                def pipeline(input_context=None):
                    dataset, loader = build_pipeline(
                        data, config, shuffle=True, random_rois=random_rois, workers=workers,
                        epoch=self.epoch, input_context=input_context, **kwargs)
                    loaders.append(loader)
                    return dataset
                return strategy.distribute_datasets_from_function(pipeline) if distributed \
                    else pipeline()
            if callable(data):
                return strategy.distribute_datasets_from_function(data)
            raise ValueError(f"train(): {name} is a {type(data).__name__}; pass a prepared "
                             "utils.Dataset, a tf.data.Dataset of batches, or a function "
                             "input_context -> tf.data.Dataset.")

        if (augmentation is not None or no_augmentation_sources) and not hasattr(
                train_dataset, "image_info"):
            raise ValueError("train(): augmentation and no_augmentation_sources apply to a "
                             "utils.Dataset; augment a tf.data pipeline inside it.")
        train_data = feed(train_dataset, "train_dataset", augmentation=augmentation,
                          no_augmentation_sources=no_augmentation_sources,
                          steps=config.STEPS_PER_EPOCH, seed=data_seed)
        val_data = None
        if val_dataset is not None and config.VALIDATION_STEPS > 0:
            val_data = feed(val_dataset, "val_dataset", steps=config.VALIDATION_STEPS,
                            seed=data_seed + 1)

        callbacks = [_StopOnNaN(self.log_dir)]
        if is_chief(strategy):   # the other workers write nothing
            os.makedirs(self.log_dir, exist_ok=True)
            callbacks += [keras.callbacks.TensorBoard(log_dir=self.log_dir, histogram_freq=0,
                                                      write_graph=False),
                          _Checkpoint(self.checkpoint_path, stage, data_seed)]
        callbacks += list(custom_callbacks or [])

        log("\nStarting at epoch {}. LR={}\n".format(self.epoch, learning_rate))
        log("Checkpoint Path: {}".format(self.checkpoint_path))
        self.set_trainable(layers)
        self.compile(learning_rate, self.config.LEARNING_MOMENTUM)
        if epochs <= self.epoch:
            log(f"Already trained up to epoch {self.epoch}; pass epochs > {self.epoch} to train more.")
            return None
        if state and state["stage"] == stage:
            with strategy.scope():
                restore_optimizer(self.keras_model.optimizer, self.keras_model.trainable_variables,
                                  state["optimizer"])
            log(f"Restored the optimizer state of epoch {state['epoch']} "
                f"({int(self.keras_model.optimizer.iterations.numpy())} steps).")
        retrace_filter = _FirstTraceAfterCompile(self.keras_model)
        tf.get_logger().addFilter(retrace_filter)
        try:
            history = self.keras_model.fit(
                train_data, initial_epoch=self.epoch, epochs=epochs,
                steps_per_epoch=self.config.STEPS_PER_EPOCH, callbacks=callbacks,
                validation_data=val_data,
                validation_steps=self.config.VALIDATION_STEPS if val_data else None,
                shuffle=False, verbose=verbose)   # the pipeline shuffles
        except tf.errors.OpError as e:
            # A loading error stops the pipeline inside TensorFlow: raise the user's own error.
            for loader in loaders:
                if loader.rules.error is not None:
                    raise loader.rules.error from None
            failure = worker_failure(e, strategy, self._checkpoint_hint())
            if failure is not None:
                raise failure from None
            raise
        finally:
            tf.get_logger().removeFilter(retrace_filter)
        self.epoch = max(self.epoch, epochs)
        return history

    def _checkpoint_hint(self):
        """Where training would resume from, for error messages."""
        try:
            return f"the newest complete checkpoint is {self.find_last()}"
        except FileNotFoundError:
            return f"no epoch was completed yet (checkpoints go to {self.log_dir})"

    def _resume(self, stage):
        """Load the newest complete checkpoint, if any, and return its training state (or None)."""
        try:
            path = self.find_last()
        except FileNotFoundError:
            log(f"resume: no checkpoint of {self.config.NAME!r} under {self.model_dir}; "
                f"training from the current weights, epoch {self.epoch}.")
            return None
        self.load_weights(path, by_name=True)
        state = load_state(state_path(path))
        if state is None:
            log(f"resume: {path} has no training state beside it; a fresh optimizer.")
        elif state["stage"] != stage:
            log(f"resume: {path} ends an earlier stage ({state['stage']}); a fresh optimizer.")
        return state

    # ------------------------------------------------------------ inference

    def mold_inputs(self, images):
        """Resize and normalise images for the network: molded_images, image_metas, windows."""
        molded_images, image_metas, windows = [], [], []
        for i, image in enumerate(images):
            image = self._check_image(image, i)
            with np.errstate(divide="ignore"):  # skimage's, for a side resized to 0; raised below
                molded, window, scale, _, _ = utils.resize_image(
                    image, min_dim=self.config.IMAGE_MIN_DIM, min_scale=self.config.IMAGE_MIN_SCALE,
                    max_dim=self.config.IMAGE_MAX_DIM, mode=self.config.IMAGE_RESIZE_MODE)
            if window[2] <= window[0] or window[3] <= window[1]:
                raise ValueError(
                    f"detect(): image {i} is {image.shape[0]}x{image.shape[1]} pixels: resized to "
                    f"IMAGE_MAX_DIM {self.config.IMAGE_MAX_DIM} it would be "
                    f"{window[2] - window[0]}x{window[3] - window[1]}. Crop or tile such elongated "
                    "images, or raise IMAGE_MAX_DIM.")
            molded = mold_image(molded, self.config)
            meta = compose_image_meta(0, image.shape, molded.shape, window, scale,
                                      np.zeros([self.config.NUM_CLASSES], dtype=np.int32))
            molded_images.append(molded)
            image_metas.append(meta)
            windows.append(window)
        return np.stack(molded_images), np.stack(image_metas), np.stack(windows)

    def _check_image(self, image, index):
        """Bring a user's image to [H, W, IMAGE_CHANNEL_COUNT] (see `dataset.to_channels`)."""
        what = f"detect(): image {index}"
        if image is None or isinstance(image, (str, bytes, os.PathLike)):
            raise ValueError(f"{what} is {image!r}, not an image array. Read the file first, e.g. "
                             "skimage.io.imread(path) or dataset.load_image(image_id).")
        try:
            image = np.asarray(image)
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"{what} is not an array of pixels ({err}). Pass a numpy array "
                             "[H, W] or [H, W, channels].") from err
        return to_channels(image, self.config.IMAGE_CHANNEL_COUNT, what)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape, window):
        """One image's detections in original-image pixels: boxes, class_ids, scores, full masks.

        detections: [N, (y1, x1, y2, x2, class_id, score)] normalised, zero padded;
        mrcnn_mask: [N, h, w, num_classes]. Boxes of zero area are dropped; NaN
        mask values (broken mask-head weights) count as background.
        """
        zero_ix = np.where(detections[:, 4] == 0)[0]
        n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
        boxes = detections[:n, :4]
        class_ids = detections[:n, 4].astype(np.int32)
        scores = detections[:n, 5].astype(np.float32)
        masks = mrcnn_mask[np.arange(n), :, :, class_ids]

        boxes = unmold_boxes(boxes, window, image_shape, original_image_shape)

        keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
        boxes, class_ids, scores = boxes[keep], class_ids[keep], scores[keep]
        masks = np.nan_to_num(masks[keep], nan=0.0)
        # utils.unmold_mask, written into one [H, W, N] array (stacking N full-size masks
        # along the last axis took 0.3 s for 100 detections at 1024 px).
        full_masks = np.zeros(tuple(original_image_shape[:2]) + (len(boxes),), dtype=bool)
        for i, (y1, x1, y2, x2) in enumerate(boxes):
            full_masks[y1:y2, x1:x2, i] = utils.resize(masks[i], (y2 - y1, x2 - x1)) >= 0.5
        return boxes, class_ids, scores, full_masks

    def get_anchors(self, image_shape):
        """Normalised anchors [N, 4] (float32, read-only) for an image shape: the cached
        `geometry.normalized_anchors`, computed once per anchor settings and shape."""
        return normalized_anchors(self.config, image_shape)

    def _inference_feed(self, molded_images, image_metas):
        """The inference model's inputs {name: array}: the images, metas and their anchors."""
        anchors = self.get_anchors(molded_images[0].shape)
        return {"input_image": molded_images.astype(np.float32),
                "input_image_meta": image_metas.astype(np.float32),
                "input_anchors": np.broadcast_to(anchors, (len(molded_images),) + anchors.shape)}

    def _inference_inputs(self, molded_images, image_metas):
        """`_inference_feed` as the list in the model's input order (what `_predict` takes)."""
        return inputs_in_order(self.keras_model, self._inference_feed(molded_images, image_metas))

    def _check_batch(self, images, what):
        """`images` (a list of BATCH_SIZE images, or an array [BATCH_SIZE, H, W, C]) as a list."""
        if self.mode != "inference":
            raise ValueError(f"{what}() needs a model created with mode='inference'.")
        if images is None or isinstance(images, (str, bytes, os.PathLike)) \
                or not hasattr(images, "__iter__"):
            raise TypeError(f"{what}() takes a list of {self.config.BATCH_SIZE} images (numpy "
                            f"arrays), got {images!r:.60}. Pass [image].")
        if hasattr(images, "shape") and len(images.shape) != 4:
            raise ValueError(f"{what}() got one array of shape {tuple(images.shape)}, but takes a "
                             "list of images: pass [image] (or an array [batch, H, W, channels]).")
        images = list(images)
        if len(images) != self.config.BATCH_SIZE:
            raise ValueError(
                f"{what}() got {len(images)} images but BATCH_SIZE is {self.config.BATCH_SIZE} "
                "(GPU_COUNT * IMAGES_PER_GPU). Pass exactly that many, or set IMAGES_PER_GPU "
                "in the inference config.")
        return images

    def detect(self, images, verbose=0):
        """Detect instances in a list of BATCH_SIZE images of any sizes.

        An image is an array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] of any
        integer, float or bool dtype, converted as `Dataset.load_image`
        converts; one that cannot be used (another shape or dtype, NaN or
        infinite pixels, so elongated that resizing leaves no pixel across)
        raises ValueError naming it and the fix, and anything but a list (or
        an array [batch, H, W, C]) of BATCH_SIZE images raises TypeError or
        ValueError. Returns one dict per image: rois [N, 4] int32 (y1, x1,
        y2, x2) in the image's pixels, class_ids [N] int32, scores [N]
        float32, masks [H, W, N] bool. N may be 0.
        """
        images = self._check_batch(images, "detect")
        molded_images, image_metas, windows = self.mold_inputs(images)
        if verbose:
            log("Processing {} images".format(len(images)))
            for image in images:
                log("image", np.asarray(image))
        if len({m.shape for m in molded_images}) != 1:
            raise ValueError("After resizing, the images have different sizes; use "
                             "IMAGE_RESIZE_MODE 'square' or detect images of one size per call.")
        if verbose:
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        original_shapes = [np.shape(image) for image in images]
        return self._detect(molded_images, image_metas, windows, original_shapes, verbose)

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """Detect on images already molded (e.g. from load_image_gt + mold_image); boxes and masks
        in molded pixels, padding included (as matterport: the whole image is the window)."""
        molded_images = np.asarray(self._check_batch(molded_images, "detect_molded"))
        windows = [(0, 0) + m.shape[:2] for m in molded_images]
        return self._detect(molded_images, np.asarray(image_metas), windows,
                            [m.shape for m in molded_images], verbose)

    def _detect(self, molded_images, image_metas, windows, original_shapes, verbose):
        feed = self._inference_feed(molded_images, image_metas)
        if verbose:
            log("anchors", feed["input_anchors"])
        outputs = outputs_by_name(self.keras_model, self._predict(
            [tf.constant(x) for x in inputs_in_order(self.keras_model, feed)]))
        detections = outputs["mrcnn_detection"].numpy()
        mrcnn_mask = outputs["mrcnn_mask"].numpy()
        results = []
        for i, original_shape in enumerate(original_shapes):
            rois, class_ids, scores, masks = self.unmold_detections(
                detections[i], mrcnn_mask[i], original_shape, molded_images[i].shape, windows[i])
            results.append({"rois": rois, "class_ids": class_ids, "scores": scores, "masks": masks})
        return results

    def run_graph(self, images, outputs, image_metas=None):
        """Run the model on images and return named intermediate outputs.

        outputs: [(name, symbolic tensor of keras_model)], e.g.
        ("proposals", model.keras_model.get_layer("ROI").output).
        Returns a dict name -> numpy array (in the order given).
        """
        if self.mode != "inference":
            raise ValueError("run_graph() runs the inference graph; create the model with mode='inference'.")
        names = tuple(name for name, _ in outputs)
        key = (names, tuple(id(t) for _, t in outputs))
        if key not in self._graph_cache:
            sub = keras.Model(self.keras_model.inputs, [t for _, t in outputs])
            self._graph_cache[key] = tf.function(lambda x: sub(x, training=False), jit_compile=False)
        molded_images, metas, _ = self.mold_inputs(images)
        if image_metas is not None:
            metas = image_metas
        values = self._graph_cache[key]([tf.constant(x) for x in self._inference_inputs(molded_images, metas)])
        values = values if isinstance(values, (list, tuple)) else [values]
        result = {}
        for name, value in zip(names, values):
            result[name] = np.asarray(value)
            log(name, result[name])
        return result

    def export_saved_model(self, path, overwrite=False):
        """Write a SavedModel that takes one image (uint8 [H, W, 3], or encoded bytes) and returns
        detect()'s rois, class_ids, scores and masks, molding and unmolding in the graph; see mrcnn.export."""
        return export_saved_model(self, path, overwrite=overwrite)


def _producer(tensor):
    """The layer that produced a symbolic tensor, and the input tensors of all its calls.

    Keras 3 has no public API from a KerasTensor to the operation that made it
    (keras.Function and Model list operations, not their edges), so this one
    helper reads the private `_keras_history` and `_inbound_nodes`."""
    layer = tensor._keras_history.operation
    return layer, [t for node in layer._inbound_nodes for t in node.input_tensors]


def inference_config(config, images_per_batch=1):
    """A copy of `config` for detection: GPU_COUNT 1, `images_per_batch` images per detect() call."""
    config = copy.copy(config)
    config.GPU_COUNT = 1
    config.IMAGES_PER_GPU = images_per_batch
    config.BATCH_SIZE = images_per_batch
    config.validate()
    return config


def inference_model(source, weights=None, images_per_batch=1, model_dir=None, verbose=0):
    """An inference `MaskRCNN` detecting `images_per_batch` images per detect() call.

    source: a `MaskRCNN` (e.g. the one being trained) or a `Config`; its
        config is copied by `inference_config`.
    weights: a weights file to load by layer name; "last", the newest
        checkpoint of the config under model_dir; or None: for a MaskRCNN
        source its weights, copied by layer name in memory
        (`weights.copy_weights_by_name`; copy again after more training),
        for a Config none (the initial weights).
    model_dir: the run folder of the new model (default: the source model's,
        or "logs").
    """
    if not isinstance(source, (MaskRCNN, Config)):
        raise ValueError(f"inference_model(): source is a {type(source).__name__}; pass a MaskRCNN "
                         "or a Config (and a weights file as weights=).")
    model = source if isinstance(source, MaskRCNN) else None
    config = model.config if model is not None else source
    if model_dir is None:
        model_dir = model.model_dir if model is not None else "logs"
    detector = MaskRCNN("inference", inference_config(config, images_per_batch), model_dir)
    if weights == "last":
        weights = detector.find_last()
    if weights is not None:
        if verbose:
            print(f"Loading weights {weights}", flush=True)
        detector.load_weights(weights, by_name=True, verbose=verbose)
    elif model is not None:
        copy_weights_by_name(model.keras_model, detector.keras_model)
    return detector


class _ClipSummedGradient:
    """A Keras optimizer that clips (global_clipnorm) the gradient of the whole batch.

    Keras 3 clips each replica's gradient before the TensorFlow backend sums
    them across replicas, so under tf.distribute the clipped step was not one
    device's; here the sum is clipped, as one device clips the batch's gradient.
    """

    def _clip_gradients(self, grads):
        return grads      # clipped after the sum, below

    def _all_reduce_sum_gradients(self, grads_and_vars):
        summed = super()._all_reduce_sum_gradients(grads_and_vars)
        clipped = super()._clip_gradients([g for g, _ in summed])
        return [(g, v) for g, (_, v) in zip(clipped, summed)]


@keras.saving.register_keras_serializable("mrcnn")
class SGD(_ClipSummedGradient, keras.optimizers.SGD):
    """keras.optimizers.SGD, clipping the gradient summed over replicas."""


@keras.saving.register_keras_serializable("mrcnn")
class Adam(_ClipSummedGradient, keras.optimizers.Adam):
    """keras.optimizers.Adam, clipping the gradient summed over replicas."""


def make_optimizer(config, learning_rate, momentum):
    """config.OPTIMIZER: SGD with `momentum`, or Adam with beta_1 = `momentum`.

    Gradients are scaled by GRADIENT_CLIP_NORM / global norm when the norm of
    all gradients together exceeds GRADIENT_CLIP_NORM, as matterport's Keras 2
    `clipnorm` did (Keras 3's `clipnorm` clips each variable on its own); under
    tf.distribute, the norm of the gradient summed over replicas.
    """
    clip = {"global_clipnorm": config.GRADIENT_CLIP_NORM} if config.GRADIENT_CLIP_NORM else {}
    if config.OPTIMIZER == "adam":
        return Adam(learning_rate=learning_rate, beta_1=momentum, **clip)
    return SGD(learning_rate=learning_rate, momentum=momentum, **clip)


def run_name(config_name):
    """The lower-case run name used in folder and checkpoint names ("mrcnn" for NAME None)."""
    return (config_name or "mrcnn").lower()


def last_checkpoint(model_dir, config_name):
    """Path of the newest complete checkpoint of config NAME `config_name` under `model_dir`.

    Looks in the newest run folder first, then older ones; skips files
    that are not complete weight files (e.g. cut off mid-write).
    """
    name = run_name(config_name)
    run_dirs = sorted(d for d in (os.listdir(model_dir) if os.path.isdir(model_dir) else [])
                      if d.startswith(name) and os.path.isdir(os.path.join(model_dir, d)))
    pattern = re.compile(r"mask_rcnn_" + re.escape(name) + r"_(\d{4})\.h5$")
    for run_dir in reversed(run_dirs):
        folder = os.path.join(model_dir, run_dir)
        for f in sorted((f for f in os.listdir(folder) if pattern.match(f)), reverse=True):
            path = os.path.join(folder, f)
            if _is_complete_weights_file(path):
                return path
    raise FileNotFoundError(
        f"Could not find a checkpoint of config {config_name!r} under {model_dir!r} "
        f"(looked for {name}*/mask_rcnn_{name}_NNNN.h5). Train first, or pass a weights path.")


def _is_complete_weights_file(path):
    """True if `path` reads as a Keras-2-layout weights file (not cut off mid-write)."""
    try:
        keras2_layout(path)
        return True
    except (OSError, ValueError):
        return False

"""Mask R-CNN configuration.

Subclass `Config` and override class attributes to configure a model, exactly
as with matterport's library::

    class ShapesConfig(Config):
        NAME = "shapes"
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128

Every attribute, default and computed value is matterport's. Unlike the
original, a configuration that cannot work raises a `ValueError` naming the
attribute and the fix when it is constructed (and again when a model is built,
so attributes changed on an instance are checked too).
"""

import math
import numbers

import numpy as np

from mrcnn.image_meta import meta_size

__all__ = [
    "RESIZE_MODES", "BACKBONES", "OPTIMIZERS", "DETECTION_CLASS_MODES", "PRECISIONS",
    "STRATEGIES", "LOSS_NAMES", "INT32_MAX", "Config",
]

RESIZE_MODES = ("none", "square", "pad64", "crop")
BACKBONES = ("resnet50", "resnet101")
OPTIMIZERS = ("sgd", "adam")
DETECTION_CLASS_MODES = ("argmax", "per_class")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "none", "mirrored", "multi-worker")
LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
              "mrcnn_bbox_loss", "mrcnn_mask_loss")
# The largest count a setting may hold: TensorFlow's shapes and indices are int32.
INT32_MAX = 2 ** 31 - 1


class Config:
    """Base configuration. Override attributes in a subclass."""

    # Name of the configuration, used in log-directory and checkpoint names.
    NAME = None

    # Images per replica and number of replicas of the whole job (every GPU of
    # every worker); BATCH_SIZE, their product, is the global batch. Training
    # under a strategy of N replicas sets GPU_COUNT 1 to N (logged) and
    # rejects another value that is not N (see mrcnn.distribute).
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2

    # The tf.distribute strategy train() runs in (not in matterport's Config):
    # "auto" (MultiWorkerMirroredStrategy when TF_CONFIG names a cluster,
    # MirroredStrategy when more than one GPU is visible, else none), "none",
    # "mirrored" or "multi-worker". A strategy scope entered by the user wins.
    STRATEGY = "auto"

    # True multiplies train()'s learning rate by the number of replicas (the
    # linear scaling rule for a global batch N times one replica's); False
    # (default) uses it as given. Not in matterport's Config.
    SCALE_LEARNING_RATE = False

    # Training steps per epoch and validation steps at the end of each epoch.
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    # "resnet50", "resnet101", or a callable building the backbone, in which
    # case COMPUTE_BACKBONE_SHAPE(image_shape) must give the feature shapes.
    BACKBONE = "resnet101"
    COMPUTE_BACKBONE_SHAPE = None

    # Strides of the FPN levels P2..P6 relative to the image.
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]

    # Size of the fully-connected layers of the classification head.
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024

    # Channels of the top-down feature pyramid.
    TOP_DOWN_PYRAMID_SIZE = 256

    # Number of classes, background included.
    NUM_CLASSES = 1

    # Anchor side lengths in pixels, one per pyramid level.
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)

    # Anchor width/height ratios, used at every level.
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]

    # Anchor stride on the feature maps (1: an anchor at every cell).
    RPN_ANCHOR_STRIDE = 1

    # NMS threshold for RPN proposals.
    RPN_NMS_THRESHOLD = 0.7

    # Anchors per image sampled to train the RPN.
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256

    # Top anchors (by RPN score) kept before NMS.
    PRE_NMS_LIMIT = 6000

    # Proposals kept after NMS in training and inference.
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    # Store instance masks cropped to their box and resized to MINI_MASK_SHAPE.
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    # Input resizing: "none", "square", "pad64" or "crop" (see utils.resize_image).
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3

    # Mean pixel (RGB) subtracted from images.
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    # RoIs per image fed to the heads in training, and the share of positives.
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33

    # RoI pooling sizes of the classifier and mask heads.
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14

    # Output size of the mask head (it upsamples MASK_POOL_SIZE by 2).
    MASK_SHAPE = [28, 28]

    # Maximum ground-truth instances used per image.
    MAX_GT_INSTANCES = 100

    # Standard deviations dividing the box-refinement targets.
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    # Detections kept per image, their minimum score and per-class NMS threshold.
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    # Which classes of a RoI can become detections. "argmax" (matterport's):
    # only its most probable class, none if that is the background; with
    # NUM_CLASSES = 2 every score is then above 0.5, whatever
    # DETECTION_MIN_CONFIDENCE says. "per_class" (torchvision's, detectron2's):
    # every foreground class whose probability reaches DETECTION_MIN_CONFIDENCE,
    # with its own box, so one RoI can give several detections; what COCO AP
    # and recall expect (with a low DETECTION_MIN_CONFIDENCE such as 0.05).
    # Not in matterport's Config.
    DETECTION_CLASS_MODE = "argmax"

    # SGD with momentum, L2 weight decay on kernels.
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    # "sgd" (matterport's: SGD with LEARNING_MOMENTUM) or "adam" (Adam with
    # beta_1 = LEARNING_MOMENTUM), which learns several times faster from
    # random weights. Not in matterport's Config.
    OPTIMIZER = "sgd"

    # Weight of each loss in the total.
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.,
        "rpn_bbox_loss": 1.,
        "mrcnn_class_loss": 1.,
        "mrcnn_bbox_loss": 1.,
        "mrcnn_mask_loss": 1.,
    }

    # Train the heads on RPN proposals (True) or on given RoIs (False).
    USE_RPN_ROIS = True

    # BatchNorm: None or True train it (batch statistics in training, moving
    # ones at inference; matterport's None); False freezes the statistics
    # (gamma and beta still train), for small batches on pretrained weights.
    # matterport's True also used batch statistics at inference (a bug).
    TRAIN_BN = False

    # With BatchNorm trained (TRAIN_BN None or True) and several replicas: True
    # computes the batch statistics over the global batch (synchronised across
    # replicas, one all-reduce per BatchNorm layer and step), False per replica.
    SYNC_BATCH_NORM = False

    # Gradients are scaled down when their global norm (all trainable weights
    # together, as matterport's Keras 2 clipnorm) exceeds this.
    GRADIENT_CLIP_NORM = 5.0

    # RoIAlign sample grid of both heads and of the mask targets (not in
    # matterport's Config). False: matterport's crop_and_resize grid; True: the
    # half-pixel grid of detectron2's ROIAlignV2. SAMPLING_RATIO r: r x r
    # bilinear samples averaged per output bin (1: matterport; 2: detectron2,
    # torchvision). See mrcnn.roi_align.
    ROI_ALIGN_ALIGNED = False
    ROI_ALIGN_SAMPLING_RATIO = 1

    # An integer makes runs repeatable (not in matterport's Config): it seeds
    # Python's random, numpy and TensorFlow before the model is built, and
    # every training batch (order, crops, augmentation, RoI sampling) is drawn
    # from (SEED, epoch, batch index), whatever the number of data workers.
    # Without a GPU it also turns on TensorFlow's op determinism for the
    # process (tf.config.experimental.enable_op_determinism).
    SEED = None

    # Keras mixed precision for the model (not in matterport's Config): None
    # (the process's Keras dtype policy, float32 unless changed),
    # "mixed_float16" (GPUs; training uses dynamic loss scaling) or
    # "mixed_bfloat16" (TPUs, recent GPUs, CPUs with bf16 units). Layers compute
    # in half precision and keep float32 weights, so weight files are the same
    # either way; scores, masks, losses and box arithmetic stay float32 (see
    # mrcnn.mask_rcnn). Applied when the model is built.
    MIXED_PRECISION = None

    # True: detect() and training run the backbone, FPN and RPN head (the part
    # with static shapes) as one XLA-compiled function, the rest (NMS,
    # crop_and_resize: no XLA kernels) as before (not in matterport's Config).
    # Same weights, layer names and exports (the SavedModel runs without XLA).
    # Off by default: on a 2-core AMD EPYC CPU it gained nothing in detect()
    # (ResNet-50, 1x1024^2: 3.3-3.6 s vs 3.2 s; 8x128^2: the same within noise;
    # 2-3 s longer first call) and made training slower (2x1024^2 step 21.1 vs
    # 19.3 s, more memory). Training with SEED set is refused (no deterministic
    # XLA MaxPool gradient). benchmarks/README.md has the numbers, mrcnn/xla.py
    # what keeps XLA off the rest of the graph.
    XLA = False

    def __init__(self):
        self._validate_settings()
        self.__dict__.update(self.computed_settings())

    def computed_settings(self):
        """BATCH_SIZE, IMAGE_SHAPE and IMAGE_META_SIZE as the other settings give them.

        They are set when the config is created; `validate` rejects an
        instance whose other settings were changed since (a model built
        from it would get the old values)."""
        side = self.IMAGE_MIN_DIM if self.IMAGE_RESIZE_MODE == "crop" else self.IMAGE_MAX_DIM
        return {"BATCH_SIZE": self.IMAGES_PER_GPU * self.GPU_COUNT,
                "IMAGE_SHAPE": np.array([side, side, self.IMAGE_CHANNEL_COUNT]),
                "IMAGE_META_SIZE": meta_size(self.NUM_CLASSES)}  # layout: mrcnn.image_meta

    def to_dict(self):
        """All upper-case settings (computed ones included) as a dict."""
        return {a: getattr(self, a) for a in sorted(dir(self))
                if not a.startswith("__") and not callable(getattr(self, a))}

    def display(self):
        """Print every setting, one per line."""
        print("\nConfigurations:")
        for key, val in self.to_dict().items():
            print(f"{key:30} {val}")
        print("\n")

    def validate(self):
        """Raise ValueError naming the attribute and the fix if this config cannot work.

        Every public setting is checked for its type and range (a count is an
        int >= 1 below 2**31, a rate a finite number, a flag a bool, ...).
        Runs when the config is created and when a `MaskRCNN` is built from it
        (so attributes changed on an instance are checked too)."""
        self._validate_settings()
        self._validate_computed()

    # ------------------------------------------------------------ validation helpers

    def _validate_settings(self):
        """Every check but `_validate_computed`, types first, so no check meets a wrong type."""
        self._validate_numbers()
        self._validate_choices()
        self._validate_backbone_and_anchors()
        self._validate_image_size()
        self._validate_heads()

    def _fail(self, attr, problem, fix):
        raise ValueError(f"{type(self).__name__}.{attr} {problem}. {fix}")

    def _check_int(self, attr, minimum, value=None, what=""):
        """An int in minimum..INT32_MAX (graph shapes are int32); `value`: an element of attr."""
        value = getattr(self, attr) if value is None else value
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) or \
                not minimum <= value <= INT32_MAX:
            self._fail(attr, f"{what}is {value!r}",
                       f"Set it to an integer from {minimum} to {INT32_MAX}.")

    def _check_real(self, attr, minimum=0.0, maximum=math.inf, *, positive=False, below=False,
                    value=None, what=""):
        """A finite number >= minimum (> 0 when `positive`) and <= maximum (< when `below`)."""
        value = getattr(self, attr) if value is None else value
        ok = (not isinstance(value, bool | np.bool_) and isinstance(value, numbers.Real)
              and math.isfinite(value) and value >= minimum and not (positive and value <= 0)
              and (value < maximum if below else value <= maximum))
        if not ok:
            low = "a positive" if positive else "a" if minimum == -math.inf else f"a >= {minimum:g}"
            high = "" if maximum == math.inf else f" and {'<' if below else '<='} {maximum:g}"
            self._fail(attr, f"{what}is {value!r}", f"Set it to {low} finite number{high}.")

    def _check_numbers(self, attr, length=None, integers=False):
        """A list, tuple or 1-D array of `length` (any when None, at least one) positive
        numbers, integers when `integers`; returns it as a list."""
        value = getattr(self, attr)
        if not (isinstance(value, list | tuple) or (isinstance(value, np.ndarray)
                                                   and value.ndim == 1)) or \
                len(value) != (length or len(value)) or len(value) == 0:
            count = f"{length}" if length else "one or more"
            self._fail(attr, f"is {value!r}", f"Give a list of {count} positive "
                       f"{'integers' if integers else 'numbers'}.")
        for v in value:
            if integers:
                self._check_int(attr, 1, v, f"holds {v!r}: it ")
            else:
                self._check_real(attr, positive=True, value=v, what=f"holds {v!r}: it ")
        return list(value)

    def _validate_numbers(self):
        """Counts, flags, fractions and rates: each of the right kind and range."""
        for attr in ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "NUM_CLASSES",
                     "RPN_ANCHOR_STRIDE", "RPN_TRAIN_ANCHORS_PER_IMAGE", "PRE_NMS_LIMIT",
                     "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE",
                     "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE", "MASK_POOL_SIZE",
                     "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES",
                     "FPN_CLASSIF_FC_LAYERS_SIZE", "TOP_DOWN_PYRAMID_SIZE",
                     "IMAGE_CHANNEL_COUNT", "IMAGE_MAX_DIM", "ROI_ALIGN_SAMPLING_RATIO"):
            self._check_int(attr, 1)
        self._check_int("VALIDATION_STEPS", 0)
        if self.IMAGE_MIN_DIM is not None:
            self._check_int("IMAGE_MIN_DIM", 1)
        if self.SEED is not None and (isinstance(self.SEED, bool | np.bool_) or not isinstance(
                self.SEED, numbers.Integral) or not 0 <= self.SEED < 2 ** 32):
            self._fail("SEED", f"is {self.SEED!r}", "Set it to None or an integer from 0 to "
                       "2**32 - 1 (numpy's seed range).")
        if not (self.NAME is None or isinstance(self.NAME, str) and self.NAME.strip()
                and not set("/\\") & set(self.NAME)):
            self._fail("NAME", f"is {self.NAME!r}", "Set it to a short name without slashes "
                       "(it names the log folder and the checkpoints), or None.")
        for attr, meaning in (("TRAIN_BN", "None or True (train BatchNorm) or False (freeze it)"),
                              ("ROI_ALIGN_ALIGNED", "True or False"),
                              ("SYNC_BATCH_NORM", "True (batch statistics over all replicas) "
                                                  "or False"),
                              ("SCALE_LEARNING_RATE", "True (learning rate x replicas) or False"),
                              ("XLA", "True (compile the backbone, FPN and RPN head with XLA) "
                                      "or False"),
                              ("USE_MINI_MASK", "True (masks cropped to their box) or False"),
                              ("USE_RPN_ROIS", "True (RoIs from the RPN) or False (given RoIs)")):
            value = getattr(self, attr)
            if not (isinstance(value, bool | np.bool_) or (value is None and attr == "TRAIN_BN")):
                self._fail(attr, f"is {value!r}", f"Set it to {meaning}, not a string or number.")
        for attr in ("RPN_NMS_THRESHOLD", "ROI_POSITIVE_RATIO", "DETECTION_MIN_CONFIDENCE",
                     "DETECTION_NMS_THRESHOLD"):
            self._check_real(attr, 0, 1)
        self._check_real("LEARNING_MOMENTUM", 0, 1, below=True)  # 1: Adam divides by 0
        self._check_real("LEARNING_RATE", positive=True)
        for attr in ("WEIGHT_DECAY", "IMAGE_MIN_SCALE"):
            self._check_real(attr)
        if self.GRADIENT_CLIP_NORM is not None:   # None or 0: no clipping
            self._check_real("GRADIENT_CLIP_NORM")

    def _validate_choices(self):
        """OPTIMIZER, DETECTION_CLASS_MODE, STRATEGY, MIXED_PRECISION and IMAGE_RESIZE_MODE:
        one of their names."""
        for attr, choices in (("OPTIMIZER", OPTIMIZERS), ("STRATEGY", STRATEGIES),
                              ("IMAGE_RESIZE_MODE", RESIZE_MODES)):
            value = getattr(self, attr)
            if not isinstance(value, str) or value not in choices:
                hint = (", or enter a tf.distribute strategy's scope before creating the model"
                        if attr == "STRATEGY" else "")
                self._fail(attr, f"is {value!r}",
                           f"Use one of {', '.join(repr(c) for c in choices)}{hint}.")
        mode = self.DETECTION_CLASS_MODE
        if not isinstance(mode, str) or mode not in DETECTION_CLASS_MODES:
            self._fail("DETECTION_CLASS_MODE", f"is {mode!r}",
                       "Use 'argmax' (matterport's: each RoI's top class) or 'per_class' "
                       "(torchvision's: every class above DETECTION_MIN_CONFIDENCE).")
        precision = self.MIXED_PRECISION
        if not (precision is None or isinstance(precision, str)) or precision not in PRECISIONS:
            self._fail("MIXED_PRECISION", f"is {precision!r}",
                       "Use None (no mixed precision), 'mixed_float16' or 'mixed_bfloat16'.")

    def _validate_backbone_and_anchors(self):
        """A known or callable BACKBONE, strides, and one anchor scale per pyramid level."""
        if isinstance(self.BACKBONE, str):
            if self.BACKBONE not in BACKBONES:
                self._fail("BACKBONE", f"is {self.BACKBONE!r}, an unknown backbone",
                           f"Use one of {', '.join(BACKBONES)}, or a callable together with "
                           "COMPUTE_BACKBONE_SHAPE.")
        elif callable(self.BACKBONE):
            if not callable(self.COMPUTE_BACKBONE_SHAPE):
                self._fail("COMPUTE_BACKBONE_SHAPE", "is not set although BACKBONE is a callable",
                           "Set it to a function image_shape -> [[height, width] per level].")
        else:
            self._fail("BACKBONE", f"is {self.BACKBONE!r}",
                       f"Use one of {', '.join(BACKBONES)} or a callable.")
        if not (self.COMPUTE_BACKBONE_SHAPE is None or callable(self.COMPUTE_BACKBONE_SHAPE)):
            self._fail("COMPUTE_BACKBONE_SHAPE", f"is {self.COMPUTE_BACKBONE_SHAPE!r}",
                       "Set it to None or a function image_shape -> [[height, width] per level].")

        strides = self._check_numbers("BACKBONE_STRIDES", integers=True)
        scales = self._check_numbers("RPN_ANCHOR_SCALES")
        if len(scales) != len(strides):
            self._fail("RPN_ANCHOR_SCALES", f"has {len(scales)} entries but "
                       f"BACKBONE_STRIDES has {len(strides)}",
                       "Give one anchor scale per pyramid level.")
        self._check_numbers("RPN_ANCHOR_RATIOS")

    def _validate_image_size(self):
        """Image sizes the pyramid can halve 6 times, one finite MEAN_PIXEL per channel."""
        if self.IMAGE_RESIZE_MODE in ("square", "none") and self.IMAGE_MAX_DIM % 64:
            self._fail("IMAGE_MAX_DIM", f"is {self.IMAGE_MAX_DIM}, not a multiple of 64 "
                       "(the image is halved 6 times through the pyramid)",
                       f"Use {64 * max(1, round(self.IMAGE_MAX_DIM / 64))}.")
        if self.IMAGE_RESIZE_MODE in ("pad64", "crop") and (
                not self.IMAGE_MIN_DIM or self.IMAGE_MIN_DIM % 64):
            self._fail("IMAGE_MIN_DIM", f"is {self.IMAGE_MIN_DIM}, not a multiple of 64 as "
                       f"IMAGE_RESIZE_MODE {self.IMAGE_RESIZE_MODE!r} requires",
                       f"Use {64 * max(1, round((self.IMAGE_MIN_DIM or 0) / 64))}.")
        if self.IMAGE_RESIZE_MODE == "square" and self.IMAGE_MIN_DIM and \
                self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
            self._fail("IMAGE_MIN_DIM", f"({self.IMAGE_MIN_DIM}) is larger than IMAGE_MAX_DIM "
                       f"({self.IMAGE_MAX_DIM})", "Make IMAGE_MIN_DIM <= IMAGE_MAX_DIM.")

        mean = _float_array(self.MEAN_PIXEL)
        if mean is None or mean.size != self.IMAGE_CHANNEL_COUNT or not np.isfinite(mean).all():
            self._fail("MEAN_PIXEL", f"is {self.MEAN_PIXEL!r}, not "
                       f"{self.IMAGE_CHANNEL_COUNT} finite numbers (IMAGE_CHANNEL_COUNT)",
                       "Give one mean value per channel.")

    def _validate_heads(self):
        """Mask shapes, box standard deviations, loss weights and RoI sampling of the heads."""
        mini = self._check_numbers("MINI_MASK_SHAPE", 2, integers=True)
        side = self.computed_settings()["IMAGE_SHAPE"][:2]
        if self.USE_MINI_MASK and max(mini) > min(side):
            self._fail("MINI_MASK_SHAPE", f"{tuple(mini)} is larger than the image "
                       f"{tuple(int(s) for s in side)}",
                       "Use a smaller MINI_MASK_SHAPE or USE_MINI_MASK = False.")
        if self._check_numbers("MASK_SHAPE", 2, integers=True) != [2 * self.MASK_POOL_SIZE] * 2:
            self._fail("MASK_SHAPE", f"is {list(self.MASK_SHAPE)} but the mask head upsamples "
                       f"MASK_POOL_SIZE ({self.MASK_POOL_SIZE}) once by 2",
                       f"Use MASK_SHAPE = [{2 * self.MASK_POOL_SIZE}, {2 * self.MASK_POOL_SIZE}] "
                       "or MASK_POOL_SIZE = MASK_SHAPE[0] // 2.")

        for attr in ("RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
            value = _float_array(getattr(self, attr))
            if value is None or value.shape != (4,) or not np.isfinite(value).all() or \
                    np.any(value <= 0):
                self._fail(attr, f"is {getattr(self, attr)!r}", "Give four positive numbers.")

        weights = self.LOSS_WEIGHTS
        if not isinstance(weights, dict) or set(weights) != set(LOSS_NAMES):
            self._fail("LOSS_WEIGHTS", f"is {weights!r}" if not isinstance(weights, dict) else
                       f"has keys {sorted(weights, key=str)}",
                       f"Give a dict with exactly the keys {', '.join(LOSS_NAMES)}.")
        for name, weight in weights.items():
            self._check_real("LOSS_WEIGHTS", value=weight, what=f"[{name!r}] ")

        if self.TRAIN_ROIS_PER_IMAGE * self.ROI_POSITIVE_RATIO < 1:
            self._fail("TRAIN_ROIS_PER_IMAGE", f"({self.TRAIN_ROIS_PER_IMAGE}) times "
                       f"ROI_POSITIVE_RATIO ({self.ROI_POSITIVE_RATIO}) leaves no positive RoI",
                       "Raise either so that at least one positive RoI is sampled.")

    def _validate_computed(self):
        """BATCH_SIZE, IMAGE_SHAPE and IMAGE_META_SIZE still follow the settings they come from."""
        sources = {"BATCH_SIZE": "GPU_COUNT * IMAGES_PER_GPU",
                   "IMAGE_SHAPE": "IMAGE_RESIZE_MODE, IMAGE_MIN_DIM, IMAGE_MAX_DIM and "
                                  "IMAGE_CHANNEL_COUNT",
                   "IMAGE_META_SIZE": "NUM_CLASSES and the layout of mrcnn.image_meta"}
        for attr, expected in self.computed_settings().items():
            value = getattr(self, attr, None)
            if value is None or not np.array_equal(np.asarray(value), expected):
                self._fail(attr, f"is {value!r} but {sources[attr]} give {expected!r}: those "
                           "settings changed after the config was created",
                           f"Set {attr} = {expected!r} too, or set the settings in a Config "
                           "subclass before creating it.")


def _float_array(value):
    """`value` as a 1-D float array, or None when it is not numbers (strings, None, nesting)."""
    if isinstance(value, str | bytes) or value is None:
        return None
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    return array.reshape(-1) if array.ndim <= 1 else None

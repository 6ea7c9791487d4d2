"""matterport's shapes sample: squares, circles and triangles on a random background.

`ShapesDataset` and `ShapesConfig` are importable (notebooks, tests); the
command line trains, evaluates and runs a model on them::

    python -m samples.shapes.shapes train        # the main job: train from scratch, evaluate,
                                                 # write weights and PNGs, print the mAP
    python -m samples.shapes.shapes evaluate --images 50
    python -m samples.shapes.shapes evaluate --set DETECTION_CLASS_MODE=per_class DETECTION_MIN_CONFIDENCE=0.05
    python -m samples.shapes.shapes detect [--image FILE] --output detections.png

`train` continues from the newest checkpoint under --logs unless --fresh.
Images are drawn with scikit-image from a seed, so every held-out set is
reproducible: training images come from TRAIN_SEED, validation from VAL_SEED,
the evaluation set from TEST_SEED.
"""

import argparse
import csv
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info/warning spam

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.draw  # noqa: E402
import skimage.io  # noqa: E402
from mrcnn import cli  # noqa: E402
from mrcnn import evaluate as evaluation  # noqa: E402
from mrcnn import model as modellib  # noqa: E402
from mrcnn import utils, visualize  # noqa: E402
from mrcnn.base_layers import BatchNorm, bn_training
from mrcnn.config import Config  # noqa: E402

CLASS_NAMES = ("square", "circle", "triangle")
TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


############################################################
#  Dataset
############################################################

class ShapesDataset(utils.Dataset):
    """Synthetic images of up to four squares, circles and triangles (classes 1..3).

    `load_shapes` only records each image's specification (background colour
    and shapes); `load_image` and `load_mask` draw it on demand.
    """

    def load_shapes(self, count, height, width, seed=None):
        """Add `count` random images of `height` x `width`, drawn from `seed` (None: fresh entropy)."""
        for class_id, name in enumerate(CLASS_NAMES, start=1):
            self.add_class("shapes", class_id, name)
        rng = np.random.default_rng(seed)
        for i in range(count):
            bg_color, shapes = self.random_image(height, width, rng)
            self.add_image("shapes", image_id=i, path=None, width=width, height=height,
                           bg_color=bg_color, shapes=shapes)

    def random_shape(self, height, width, rng):
        """A random (shape name, RGB colour, (x, y, size)) that fits the image.

        The centre keeps a 20-px margin from the border; size (half the side of
        a square, the radius of a circle) is 20 px to a quarter of the height.
        """
        shape = CLASS_NAMES[rng.integers(len(CLASS_NAMES))]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        margin = 20
        y = int(rng.integers(margin, height - margin))
        x = int(rng.integers(margin, width - margin))
        size = int(rng.integers(margin, height // 4 + 1))
        return shape, color, (x, y, size)

    def random_image(self, height, width, rng):
        """A random background colour and 1 to 4 shapes, as in matterport.

        Shapes whose boxes overlap an already kept later shape with IoU > 0.3
        are dropped (non-max suppression, later shapes first), so no shape is
        mostly hidden.
        """
        bg_color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shapes = [self.random_shape(height, width, rng) for _ in range(rng.integers(1, 5))]
        boxes = np.array([[y - s, x - s, y + s, x + s] for _, _, (x, y, s) in shapes])
        keep = utils.non_max_suppression(boxes, np.arange(len(shapes)), 0.3)
        return bg_color, [s for i, s in enumerate(shapes) if i in keep]

    @staticmethod
    def draw_shape(image, shape, dims, color):
        """Fill one shape into `image` ([H, W] or [H, W, C]) in place and return it.

        A square spans (x-s, y-s)..(x+s, y+s) inclusive; a circle has radius
        s; a triangle has its apex at (x, y-s) and its base on y+s with
        vertices at x -/+ s/sin(60deg). Parts outside the image are clipped.
        """
        x, y, s = dims
        frame = image.shape[:2]
        if shape == "square":
            rr, cc = skimage.draw.rectangle((y - s, x - s), end=(y + s, x + s), shape=frame)
        elif shape == "circle":
            rr, cc = skimage.draw.disk((y, x), s, shape=frame)
        elif shape == "triangle":
            half_base = s / math.sin(math.radians(60))
            rr, cc = skimage.draw.polygon([y - s, y + s, y + s], [x, x - half_base, x + half_base],
                                          shape=frame)
        else:
            raise ValueError(f"Unknown shape {shape!r}; expected one of {CLASS_NAMES}.")
        image[rr, cc] = color
        return image

    def load_image(self, image_id):
        """The image as [height, width, 3] uint8: the background, then each shape in order."""
        info = self.image_info[image_id]
        image = np.empty([info["height"], info["width"], 3], dtype=np.uint8)
        image[:] = info["bg_color"]
        for shape, color, dims in info["shapes"]:
            self.draw_shape(image, shape, dims, color)
        return image

    def load_mask(self, image_id):
        """Instance masks [H, W, N] bool and class ids [N] int32 of the visible shapes.

        Later shapes occlude earlier ones: a pixel belongs to the last shape
        drawn over it. Shapes hidden entirely are left out (matterport kept
        them as empty masks).
        """
        info = self.image_info[image_id]
        shapes = info["shapes"]
        masks = np.zeros([info["height"], info["width"], len(shapes)], dtype=bool)
        for i, (shape, _, dims) in enumerate(shapes):
            self.draw_shape(masks[:, :, i], shape, dims, True)
        covered = np.zeros(masks.shape[:2], dtype=bool)
        for i in reversed(range(len(shapes))):
            masks[:, :, i] &= ~covered
            covered |= masks[:, :, i]
        class_ids = np.array([CLASS_NAMES.index(shape) + 1 for shape, _, _ in shapes], dtype=np.int32)
        visible = masks.any(axis=(0, 1))
        return masks[:, :, visible], class_ids[visible]

    def image_reference(self, image_id):
        """The image's shapes: [(name, colour, (x, y, size))]."""
        info = self.image_info[image_id]
        if info["source"] == "shapes":
            return info["shapes"]
        return super().image_reference(image_id)


def make_dataset(count, config, seed):
    """A prepared ShapesDataset of `count` images of the config's image size."""
    dataset = ShapesDataset()
    dataset.load_shapes(count, int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1]), seed=seed)
    dataset.prepare()
    return dataset


############################################################
#  Configurations
############################################################

class ShapesConfig(Config):
    """matterport's shapes configuration: 128-px images, 3 classes, ResNet-101.

    Meant for fine-tuning from COCO weights, as in matterport's notebook;
    from random weights its frozen BatchNorm (TRAIN_BN False) learns nothing.
    """
    NAME = "shapes"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 8
    NUM_CLASSES = 1 + len(CLASS_NAMES)
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TRAIN_ROIS_PER_IMAGE = 32
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5


LITE_STAGE_WIDTHS = (32, 64, 128, 192, 256)


def lite_backbone(input_image, stage5=True, train_bn=True):
    """A small residual CNN for training from scratch on a CPU: [C1, C2, C3, C4, C5].

    Stage k halves the resolution with a strided 3x3 conv + BatchNorm + ReLU
    (C1 at stride 2 ... C5 at stride 32, widths LITE_STAGE_WIDTHS); stages
    2..5 add a residual 3x3 conv + BatchNorm. About 0.2 GFLOP per 128-px
    image, a seventh of ResNet-50. Layer names start with "lite_".
    """
    training = bn_training(train_bn)

    def conv_bn(x, filters, strides, name):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                name=f"lite_{name}_conv")(x)
        return BatchNorm(name=f"lite_{name}_bn")(x, training=training)

    x = input_image
    features = []
    for stage, width in enumerate(LITE_STAGE_WIDTHS, start=1):
        if stage == 5 and not stage5:
            features.append(None)
            break
        x = keras.layers.Activation("relu")(conv_bn(x, width, 2, f"c{stage}a"))
        if stage > 1:
            residual = conv_bn(x, width, 1, f"c{stage}b")
            x = keras.layers.Activation("relu")(keras.layers.Add()([x, residual]))
        features.append(x)
    return features


def lite_backbone_shapes(image_shape):
    """Feature-map [height, width] of lite_backbone at strides 4, 8, 16, 32 and 64 (P6)."""
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in (4, 8, 16, 32, 64)])


class FastShapesConfig(ShapesConfig):
    """Trains the shapes model from random weights in minutes on two CPU cores.

    The small `lite_backbone` with trained BatchNorm (nothing is
    pretrained), a 64-channel pyramid, small heads (7x7 mask pooling, 14x14
    masks), fewer proposals, Adam (OPTIMIZER = "adam"; from random weights
    it learns several times faster than SGD) and the aligned RoIAlign grid.
    The schedule in `train_main` warms the learning rate up and decays it.
    """
    NAME = "shapes_fast"
    BACKBONE = staticmethod(lite_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(lite_backbone_shapes)
    BACKBONE_NAME = "lite (samples.shapes.shapes.lite_backbone)"
    TRAIN_BN = True
    IMAGES_PER_GPU = 8
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    MASK_POOL_SIZE = 7
    MASK_SHAPE = [14, 14]
    MINI_MASK_SHAPE = (28, 28)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 128
    PRE_NMS_LIMIT = 1000          # of 4092 anchors; 6000 made NMS ~40% of a training step
    POST_NMS_ROIS_TRAINING = 500
    POST_NMS_ROIS_INFERENCE = 250
    TRAIN_ROIS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 8
    DETECTION_MAX_INSTANCES = 16
    OPTIMIZER = "adam"
    LEARNING_RATE = 0.001
    # The aligned grid with 2x2 samples: over two seeds of 400 steps, COCO segm AP
    # 0.677 against 0.613 for matterport's grid (bbox AP equal), at the same speed.
    ROI_ALIGN_ALIGNED = True
    ROI_ALIGN_SAMPLING_RATIO = 2
    STEPS_PER_EPOCH = 25
    VALIDATION_STEPS = 0


CONFIGS = {"fast": FastShapesConfig, "matterport": ShapesConfig}


ROI_ALIGN_CHOICES = {"matterport": (False, 1), "aligned": (True, 2)}


def config_class_from(args):
    """The config class named by --config, with --roi-align's ROI_ALIGN_* settings if given."""
    base = CONFIGS[args.config]
    if getattr(args, "roi_align", None) is None:
        return base
    aligned, ratio = ROI_ALIGN_CHOICES[args.roi_align]
    return type(base.__name__, (base,), {"ROI_ALIGN_ALIGNED": aligned,
                                         "ROI_ALIGN_SAMPLING_RATIO": ratio})


def optimizer_name(config):
    """The optimizer MaskRCNN trains `config` with (config.OPTIMIZER), as a readable name."""
    if config.OPTIMIZER == "adam":
        return "Adam"
    return f"SGD momentum {config.LEARNING_MOMENTUM}"


def inference_config(config_class, images_per_batch=1, overrides=None):
    """An instance of `config_class` for detection, `images_per_batch` images at a time,
    with the settings in `overrides` ({KEY: value}, as `--set` gives) replaced."""
    if overrides:
        config_class = type(config_class.__name__, (config_class,), dict(overrides))
    return modellib.inference_config(config_class(), images_per_batch)


def backbone_name(config):
    """The backbone as a readable name."""
    return getattr(config, "BACKBONE_NAME", None) or str(config.BACKBONE)


############################################################
#  Evaluation
############################################################

def evaluate(model, dataset):
    """Detect on the dataset's images and score them with mrcnn.evaluate: (metrics, predictions).

    metrics: `mrcnn.evaluate.score_detections`' dict (COCO AP for bbox and
    segm, mAP@0.5 and mAP@[.5:.95] of utils.compute_ap) with the model's
    detection settings (`mrcnn.evaluate.detection_settings`).
    """
    predictions = evaluation.detect_dataset(model, dataset, verbose=0)
    metrics = evaluation.score_detections(dataset, predictions)
    return {**metrics, **evaluation.detection_settings(model.config)}, predictions


############################################################
#  Training schedule, plots
############################################################

class TimeBudget(keras.callbacks.Callback):
    """Learning rate by progress, and a hard stop at the end of the budget.

    Progress runs from 0 at `start` (a time.time() value) to 1 at `deadline`
    or after `max_steps` steps, whichever comes first. The rate rises
    linearly over the first `warmup_steps` steps and follows a cosine from
    `base_lr` down to `final_fraction * base_lr` at progress 1, where
    training stops (the checkpoint of that partial epoch is still written).
    Adds "lr" and "elapsed_s" (since `start`) to each epoch's logs and
    prints one line per epoch: time used of the budget, steps, loss, rate.
    """

    def __init__(self, base_lr, start, deadline, max_steps=None, warmup_steps=50, final_fraction=0.02):
        super().__init__()
        self.base_lr = base_lr
        self.start = start
        self.deadline = deadline
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.final_fraction = final_fraction
        self.steps = 0
        self.lr = base_lr

    def progress(self):
        by_time = (time.time() - self.start) / max(1e-6, self.deadline - self.start)
        by_steps = self.steps / self.max_steps if self.max_steps else 0.0
        return min(1.0, max(by_time, by_steps))

    def on_train_batch_begin(self, batch, logs=None):
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress()))
        rate = self.final_fraction + (1 - self.final_fraction) * cosine
        self.lr = self.base_lr * rate * min(1.0, (self.steps + 1) / self.warmup_steps)
        self.model.optimizer.learning_rate = self.lr

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.progress() >= 1.0:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.time() - self.start
        logs = logs if logs is not None else {}
        logs["lr"] = self.lr
        logs["elapsed_s"] = round(elapsed, 1)
        steps = f"step {self.steps}" + (f"/{self.max_steps}" if self.max_steps else "")
        print(f"{_minutes(elapsed)} of {_minutes(self.deadline - self.start)} "
              f"({100 * self.progress():3.0f}%)  epoch {epoch + 1}, {steps}  "
              f"loss {logs.get('loss', float('nan')):.3f}  lr {self.lr:.2e}  "
              f"{elapsed / max(self.steps, 1):.2f} s/step", flush=True)


def _minutes(seconds):
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def plot_losses(csv_path, png_path, steps_per_epoch=None):
    """Plot the per-epoch losses of a training CSV (keras CSVLogger) to a PNG, log scale."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in ("loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
                "mrcnn_bbox_loss", "mrcnn_mask_loss"):
        if rows and key in rows[0]:
            ax.plot(epochs, [float(r[key]) for r in rows], label=key,
                    linewidth=2.5 if key == "loss" else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel(f"epoch ({steps_per_epoch} steps)" if steps_per_epoch else "epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title(f"Training losses ({os.path.basename(os.path.dirname(csv_path))})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def save_detections(images, results, path, titles=None):
    """Draw detections (masks, boxes, labels, scores) on images, two per row, into one PNG."""
    cols = min(len(images), 2)
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 6 * rows), squeeze=False)
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for i, (image, result, ax) in enumerate(zip(images, results, axes.flat)):
        visualize.display_instances(image, result["rois"], result["masks"], result["class_ids"],
                                    ("BG",) + CLASS_NAMES, result["scores"],
                                    title=titles[i] if titles else "", ax=ax,
                                    save_path=path if i == len(images) - 1 else None)
    plt.close(fig)


############################################################
#  Command line
############################################################

def _phase(text):
    print(f"\n=== {text}", flush=True)


def load_detector(config_class, logs, weights, images_per_batch, overrides=None):
    """An inference model of `inference_config(config_class, ...)` with `weights` (default:
    the newest checkpoint under `logs`) loaded."""
    return modellib.inference_model(inference_config(config_class, images_per_batch, overrides),
                                    weights=weights or "last", model_dir=logs, verbose=1)


def train_main(args):
    """The main job: build, train for --minutes, evaluate, write weights and PNGs, print mAP."""
    t0 = time.time()
    config_class = config_class_from(args)
    config = config_class()
    config.SEED = args.seed
    _phase(f"Build: config {config.NAME!r} ({config_class.__name__}), backbone {backbone_name(config)}, "
           f"TRAIN_BN {config.TRAIN_BN}, {config.IMAGES_PER_GPU} images/step, RoIAlign "
           f"{'aligned' if config.ROI_ALIGN_ALIGNED else 'matterport'} "
           f"x{config.ROI_ALIGN_SAMPLING_RATIO} samples, seed {config.SEED}")
    train_set = make_dataset(args.train_images, config, TRAIN_SEED)
    val_set = (make_dataset(config.VALIDATION_STEPS * config.BATCH_SIZE, config, VAL_SEED)
               if config.VALIDATION_STEPS else None)
    model = modellib.MaskRCNN("training", config, args.logs)
    if not args.fresh:
        try:
            last = model.find_last()
        except FileNotFoundError:
            print("No checkpoint yet: training from random weights.")
        else:
            print(f"Continuing from {last} (pass --fresh to start from random weights)")
            model.load_weights(last, by_name=True)
    lr = args.lr or config.LEARNING_RATE
    budget_s = args.minutes * 60
    print(f"Build took {time.time() - t0:.1f} s")

    limit = f"{args.minutes:g} min" + (f" or {args.steps} steps" if args.steps else "")
    _phase(f"Train: layers 'all', {optimizer_name(config)}, global clipnorm {config.GRADIENT_CLIP_NORM}, "
           f"lr {lr} (warm-up {args.warmup} steps, then cosine decay) for {limit}, "
           f"{config.STEPS_PER_EPOCH} steps/epoch, {args.train_images} training images")
    start = time.time()
    budget = TimeBudget(lr, start, start + budget_s, max_steps=args.steps, warmup_steps=args.warmup)
    os.makedirs(model.log_dir, exist_ok=True)
    csv_path = os.path.join(model.log_dir, "losses.csv")
    history = model.train(train_set, val_set, learning_rate=lr, epochs=model.epoch + 10 ** 6,
                          layers="all", workers=args.workers, verbose=0,
                          custom_callbacks=[budget, keras.callbacks.CSVLogger(csv_path, append=True)])
    steps = budget.steps
    print(f"Trained {steps} steps in {time.time() - start:.0f} s "
          f"({(time.time() - start) / max(steps, 1):.2f} s/step); "
          f"last epoch's loss {history.history['loss'][-1]:.3f}")

    _phase(f"Evaluate on {args.images} held-out images (seed {TEST_SEED})")
    t_eval = time.time()
    weights = model.find_last()
    detector = load_detector(config_class, args.logs, weights, args.eval_batch)
    test_set = make_dataset(args.images, config, TEST_SEED)
    metrics, predictions = evaluate(detector, test_set)
    print(evaluation.format_metrics(metrics))
    print(f"Evaluation took {time.time() - t_eval:.1f} s")

    _phase("Write PNGs")
    detections_png = os.path.join(model.log_dir, "detections.png")
    shown = range(min(4, args.images))
    save_detections([test_set.load_image(i) for i in shown], [predictions[i] for i in shown],
                    detections_png, [f"held-out image {i} (seed {TEST_SEED})" for i in shown])
    curve_png = os.path.join(model.log_dir, "loss_curve.png")
    plot_losses(csv_path, curve_png, config.STEPS_PER_EPOCH)

    _phase("Done")
    print(f"config:      {config.NAME} (backbone {backbone_name(config)})")
    print(f"weights:     {weights}")
    print(f"detections:  {detections_png}")
    print(f"loss curve:  {curve_png}")
    print(f"mAP@0.5:     {metrics['mAP50']:.4f}   COCO segm AP {metrics['segm']['AP']:.4f}, "
          f"bbox AP {metrics['bbox']['AP']:.4f}")
    print(f"total time:  {time.time() - t0:.0f} s after start-up")
    return metrics


def evaluate_main(args):
    """Score a trained model on --images held-out images."""
    config_class = config_class_from(args)
    model = load_detector(config_class, args.logs, args.weights, args.eval_batch, args.overrides)
    dataset = make_dataset(args.images, model.config, args.seed)
    metrics, _ = evaluate(model, dataset)
    print(evaluation.format_metrics(metrics))
    return metrics


def detect_main(args):
    """Detect on an image file, or a generated one, and write a PNG with the detections."""
    config_class = config_class_from(args)
    model = load_detector(config_class, args.logs, args.weights, 1, args.overrides)
    if args.image:
        image = skimage.io.imread(args.image)
        title = os.path.basename(args.image)
    else:
        image = make_dataset(1, model.config, args.seed).load_image(0)
        title = f"generated image (seed {args.seed})"
    result = model.detect([image])[0]
    for roi, class_id, score in zip(result["rois"], result["class_ids"], result["scores"]):
        print(f"{CLASS_NAMES[class_id - 1]:8} score {score:.3f} box {roi.tolist()}")
    save_detections([image], [result], args.output, [title])
    print(f"Wrote {args.output}")
    return result


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m samples.shapes.shapes",
        description="Train, evaluate and run Mask R-CNN on matterport's synthetic shapes.")
    sub = parser.add_subparsers(dest="command")

    def common(p):
        p.add_argument("--logs", default="logs", help="folder of runs and checkpoints (default: logs)")
        p.add_argument("--config", choices=sorted(CONFIGS), default="fast",
                       help="fast: FastShapesConfig, trains from scratch on a CPU (default); "
                            "matterport: ShapesConfig (ResNet-101, for fine-tuning COCO weights)")
        p.add_argument("--eval-batch", type=int, default=10, help="images per detect() call")
        p.add_argument("--roi-align", choices=sorted(ROI_ALIGN_CHOICES), default=None,
                       help="RoIAlign grid: matterport (crop_and_resize, 1 sample per bin) or "
                            "aligned (detectron2's half-pixel grid, 2x2 samples); default: the config's")

    def overrides(p):
        p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", default=[],
                       help="override settings of the inference config, e.g. --set "
                            "DETECTION_CLASS_MODE=per_class DETECTION_MIN_CONFIDENCE=0.05 "
                            "(values are Python literals, else text, as mrcnn --config)")

    p = sub.add_parser("train", help="the main job: train from scratch (or continue), evaluate, "
                                     "write weights, detections.png and loss_curve.png")
    common(p)
    p.add_argument("--fresh", action="store_true", help="start from random weights, ignoring checkpoints")
    p.add_argument("--minutes", type=float, default=8.5, help="training time budget (default: 8.5)")
    p.add_argument("--steps", type=int, default=None,
                   help="stop after this many steps if the time budget lasts longer")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the config's)")
    p.add_argument("--warmup", type=int, default=50, help="learning-rate warm-up steps (default: 50)")
    p.add_argument("--train-images", type=int, default=2000, help="training set size (default: 2000)")
    p.add_argument("--images", type=int, default=50, help="held-out images to evaluate (default: 50)")
    p.add_argument("--workers", type=int, default=1, help="data-loading threads (default: 1)")
    p.add_argument("--seed", type=int, default=None, help="config.SEED: a repeatable run (weights and batches)")
    p.set_defaults(func=train_main)

    p = sub.add_parser("evaluate", help="mAP@0.5 and COCO AP of a trained model on held-out images")
    common(p)
    p.add_argument("--weights", help="weights file (default: the newest checkpoint under --logs)")
    p.add_argument("--images", type=int, default=50, help="held-out images (default: 50)")
    p.add_argument("--seed", type=int, default=TEST_SEED, help=f"seed of the images (default: {TEST_SEED})")
    overrides(p)
    p.set_defaults(func=evaluate_main)

    p = sub.add_parser("detect", help="detect on an image and write a PNG with masks, boxes, labels, scores")
    common(p)
    p.add_argument("--weights", help="weights file (default: the newest checkpoint under --logs)")
    p.add_argument("--image", help="image file (default: a generated shapes image)")
    p.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the generated image")
    p.add_argument("--output", default="detections.png", help="PNG to write (default: detections.png)")
    overrides(p)
    p.set_defaults(func=detect_main)
    return parser


def parse_args(argv=None):
    """Parse the command line; with no command (or only options) the command is `train`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["train"] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.overrides = cli.parse_overrides(getattr(args, "set", None), CONFIGS[args.config], "--set")
        if args.overrides:
            inference_config(CONFIGS[args.config], 1, args.overrides)   # a bad value fails here
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()

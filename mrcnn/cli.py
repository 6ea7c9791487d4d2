"""The `mrcnn` command line: train, evaluate, detect and export, over any dataset format.

    mrcnn train    --dataset instances_train.json --image-dir images/ --format coco --weights coco
    mrcnn evaluate --dataset instances_val.json --image-dir images/ --format coco --weights last
    mrcnn detect   --images photos/ --weights last --output detections/
    mrcnn export   --weights last --output exported_model/

Every command builds its Config from `Config` (or --config-class
MODULE:CLASS) with --config KEY=VALUE overrides; NUM_CLASSES comes from the
dataset, or for detect/export without one from the weights file. Errors
print one `mrcnn: error: ...` message and exit with status 1 (2 for bad
arguments); --debug shows the traceback instead. Also `python -m mrcnn`.
"""

import argparse
import ast
import dataclasses
import difflib
import importlib
import numbers
import os
import sys
import time

import numpy as np
import skimage.io

from mrcnn.config import STRATEGIES
from mrcnn.dataset import Dataset

__all__ = [
    "FORMATS", "IMAGE_EXTENSIONS", "COMPUTED", "WEIGHTS_HELP", "UsageError", "config_class",
    "parse_overrides", "ConfigSettings", "config_settings", "make_config", "load_dataset",
    "coco_weights_path", "trained_weights", "classes_in_weights", "load_detector",
    "train_command", "evaluate_command", "ImageFiles", "detect_command", "export_command",
    "positive_int", "build_parser", "main",
]

FORMATS = ("coco", "via", "labelme", "masks")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
COMPUTED = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")
WEIGHTS_HELP = ("last (the newest checkpoint of this config under --logs), coco (matterport's "
                "COCO weights, downloaded once to $KERAS_HOME/models) or a .h5 path")


class UsageError(ValueError):
    """A bad command-line argument: reported like argparse's own errors (exit status 2)."""


############################################################
#  Config
############################################################

def config_class(spec):
    """The Config subclass named by "MODULE:CLASS" (the current folder is importable); Config if None."""
    from mrcnn.config import Config

    if spec is None:
        return Config
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise UsageError(f"--config-class {spec!r}: expected MODULE:CLASS, e.g. "
                         "samples.shapes.shapes:FastShapesConfig.")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--config-class {spec!r}: cannot import {module_name!r} ({e}).") from e
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Config)):
        raise UsageError(f"--config-class {spec!r}: {module_name} has no Config subclass "
                         f"named {class_name!r}.")
    return cls


def parse_overrides(items, base, option="--config"):
    """--config KEY=VALUE items as {KEY: value} for attributes of Config class `base`.

    Values are Python literals (512, 0.5, True, [0.5, 1, 2], (56, 56)); any
    other text is a string (BACKBONE=resnet50). Lists become numpy arrays
    where the default is one. Unknown keys and values of the wrong kind are
    UsageErrors naming the key (and `option`, the command-line option they came from).
    """
    known = sorted(a for a in dir(base) if a.isupper() and not a.startswith("_"))
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE, e.g. IMAGE_MAX_DIM=512.")
        if key in COMPUTED:
            raise UsageError(f"{option} {key}: computed from other settings "
                             "(BATCH_SIZE = GPU_COUNT * IMAGES_PER_GPU, IMAGE_SHAPE from the "
                             "IMAGE_* sizes, IMAGE_META_SIZE from NUM_CLASSES); set those instead.")
        if key not in known:
            close = difflib.get_close_matches(key.upper(), known, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(f"{option} {key}: {base.__name__} has no such setting.{hint}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        overrides[key] = _checked_value(key, getattr(base, key), value, option)
    return overrides


def _checked_value(key, default, value, option):
    def wrong(kind):
        return UsageError(f"{option} {key}={value!r}: expected {kind} (the default is {default!r}).")

    if isinstance(default, bool):
        if not isinstance(value, bool) and not (key == "TRAIN_BN" and value is None):
            raise wrong("None or True (train BatchNorm) or False" if key == "TRAIN_BN"
                        else "True or False")
    elif isinstance(default, numbers.Real):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise wrong("a number")
    elif isinstance(default, (list, tuple, np.ndarray)):
        if not isinstance(value, (list, tuple)):
            raise wrong("a list, e.g. [0.5, 1, 2]")
        return np.array(value) if isinstance(default, np.ndarray) else value
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise wrong("a dict")
    return value


@dataclasses.dataclass(frozen=True)
class ConfigSettings:
    """A command line's Config: the --config-class and its parsed --config overrides."""

    base: type
    overrides: dict

    @property
    def name(self):
        """The config's NAME: --config NAME=..., else the class's, else "mrcnn"."""
        return self.overrides.get("NAME") or self.base.NAME or "mrcnn"

    def build(self, num_classes=None):
        """The Config instance: NAME "mrcnn" if unset, NUM_CLASSES if given, then the overrides."""
        attrs = {"NAME": self.base.NAME or "mrcnn"}
        if num_classes is not None:
            attrs["NUM_CLASSES"] = num_classes
        attrs.update(self.overrides)
        return type(self.base.__name__, (self.base,), attrs)()


def config_settings(args):
    """The command's `ConfigSettings`, parsed from args once and kept on `args`."""
    if getattr(args, "config_settings", None) is None:
        base = config_class(args.config_class)
        overrides = parse_overrides(args.config, base)
        if getattr(args, "strategy", None):
            overrides["STRATEGY"] = args.strategy
        args.config_settings = ConfigSettings(base, overrides)
    return args.config_settings


def make_config(args, num_classes=None):
    """The command's Config instance (see `ConfigSettings.build`)."""
    return config_settings(args).build(num_classes)


############################################################
#  Datasets and weights
############################################################

def load_dataset(args, path, subset, image_dir):
    """A prepared dataset of --format at `path`."""
    from mrcnn import formats

    if args.format is None:
        raise UsageError(f"--format is needed with --dataset: one of {', '.join(FORMATS)}.")
    t0 = time.time()
    print(f"Loading the {args.format} dataset {path}" + (f" (subset {subset})" if subset else ""),
          flush=True)
    dataset = formats.load_dataset(args.format, path, subset=subset, image_dir=image_dir)
    print(f"  {len(dataset.image_ids)} images, {dataset.num_classes - 1} classes "
          f"({', '.join(dataset.class_names[1:])}) in {time.time() - t0:.1f} s")
    return dataset


def coco_weights_path():
    """matterport's COCO weights in the Keras cache, downloaded there the first time."""
    from mrcnn import utils

    path = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models",
                        "mask_rcnn_coco.h5")
    if not os.path.exists(path):
        utils.download_trained_weights(path)
    return path


def trained_weights(args):
    """The --weights file of an inference command (last, coco or a path)."""
    from mrcnn.model import last_checkpoint

    if args.weights in ("none", "imagenet"):
        raise UsageError(f"--weights {args.weights} has no trained heads; pass last, coco or a "
                         "checkpoint path.")
    if args.weights == "last":
        return last_checkpoint(args.logs, config_settings(args).name)
    if args.weights == "coco":
        return coco_weights_path()
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights {args.weights!r}: no such file. Use {WEIGHTS_HELP}.")
    return args.weights


def classes_in_weights(path):
    """NUM_CLASSES of a weights file: the width of its mrcnn_class_logits layer."""
    from mrcnn.weights import keras2_layout

    for layer, weights in keras2_layout(path):
        if layer == "mrcnn_class_logits" and weights:
            return int(weights[-1][1][-1])
    raise ValueError(f"{path} has no mrcnn_class_logits layer to read NUM_CLASSES from; "
                     "pass --config NUM_CLASSES=N or --dataset.")


def load_detector(args, weights, num_classes=None):
    """An inference MaskRCNN (`model.inference_model`) for --batch images per call with
    `weights` loaded; NUM_CLASSES from the dataset, --config or the weights file."""
    from mrcnn import model as modellib

    if num_classes is None and "NUM_CLASSES" not in config_settings(args).overrides:
        num_classes = classes_in_weights(weights)
    return modellib.inference_model(make_config(args, num_classes=num_classes), weights=weights,
                                    images_per_batch=args.batch, model_dir=args.logs, verbose=1)


############################################################
#  Commands
############################################################

def train_command(args):
    """Train on --dataset, validating on --val-dataset/--val-subset, checkpoints under --logs."""
    from mrcnn import evaluate
    from mrcnn import model as modellib
    from mrcnn.distribute import make_strategy

    settings = config_settings(args)
    make_strategy(settings.overrides.get("STRATEGY", settings.base.STRATEGY))  # before any op
    train_set = load_dataset(args, args.dataset, args.subset, args.image_dir)
    val_set = (load_dataset(args, args.val_dataset or args.dataset, args.val_subset,
                            args.val_image_dir or args.image_dir)
               if args.val_dataset or args.val_subset else None)
    if args.eval_every and val_set is None:
        raise UsageError("--eval-every needs a validation set: pass --val-dataset or --val-subset.")
    config = make_config(args, num_classes=train_set.num_classes)
    model = modellib.MaskRCNN("training", config, args.logs)
    exclude = [name for name in (args.exclude or "").split(",") if name]
    resuming = False
    if args.resume:
        try:
            resuming = bool(model.find_last())
        except FileNotFoundError:
            print(f"--resume: no checkpoint under {args.logs} yet; starting from --weights "
                  f"{args.weights}", flush=True)
    if args.weights != "none" and not resuming:
        if args.weights == "last":
            path = model.find_last()
        elif args.weights == "imagenet":
            path = model.get_imagenet_weights()
        elif args.weights == "coco":
            path = coco_weights_path()
            if config.NUM_CLASSES != 81:
                exclude.append("heads_for_new_classes")
        else:
            path = args.weights
        print(f"Loading weights {path}" + (f" (excluding {', '.join(exclude)})" if exclude else ""),
              flush=True)
        model.load_weights(path, by_name=True, exclude=exclude or None, verbose=1)
    callbacks = ([evaluate.EvaluationCallback(model, val_set, every=args.eval_every,
                                              limit=args.eval_limit, verbose=1)]
                 if args.eval_every else [])
    model.train(train_set, val_set, learning_rate=args.learning_rate or config.LEARNING_RATE,
                epochs=args.epochs, layers=args.layers, custom_callbacks=callbacks,
                workers=args.workers, resume=args.resume)
    print(f"Checkpoints in {model.log_dir}; the newest is {model.find_last()}")


def evaluate_command(args):
    """COCO AP (bbox and segm) and mAP of --weights on --dataset."""
    from mrcnn import evaluate

    weights = trained_weights(args)
    dataset = load_dataset(args, args.dataset, args.subset, args.image_dir)
    model = load_detector(args, weights, num_classes=dataset.num_classes)
    metrics = evaluate.evaluate(model, dataset, limit=args.limit, results_path=args.results)
    print(evaluate.format_metrics(metrics))
    if args.results:
        print(f"Wrote the detections to {args.results}")
    if args.output:
        evaluate.save_results(args.output, metrics)
        print(f"Wrote the metrics to {args.output}")
    return metrics


class ImageFiles(Dataset):
    """Image files to detect on, as a dataset; images are read as stored (detect() converts them)."""

    def load_files(self, path, class_names):
        """Add the image file `path`, or the image files of the folder `path`, and `class_names` [BG, ...]."""
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise FileNotFoundError(f"--images {path!r}: no image files "
                                        f"({', '.join(IMAGE_EXTENSIONS)}) in the folder.")
        elif os.path.isfile(path):
            files = [path]
        else:
            raise FileNotFoundError(f"--images {path!r}: no such file or folder.")
        for class_id, name in enumerate(class_names[1:], start=1):
            self.add_class("files", class_id, name)
        for i, file in enumerate(files):
            self.add_image("files", image_id=i, path=file)

    def load_image(self, image_id):
        path = self.image_info[image_id]["path"]
        try:
            return skimage.io.imread(path)
        except Exception as e:
            raise ValueError(f"{path}: cannot read it as an image ({e}).") from e


def detect_command(args):
    """Detect on --images or --dataset; write PNGs to --output and/or a COCO results JSON."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm import tqdm

    from mrcnn import evaluate, visualize

    if bool(args.images) == bool(args.dataset):
        raise UsageError("detect needs either --images FILE_OR_FOLDER or --dataset PATH.")
    if args.no_png and not args.results:
        raise UsageError("--no-png without --results would write nothing.")
    weights = trained_weights(args)
    if args.dataset:
        dataset = load_dataset(args, args.dataset, args.subset, args.image_dir)
        model = load_detector(args, weights, num_classes=dataset.num_classes)
    else:
        model = load_detector(args, weights)
        dataset = ImageFiles()
        dataset.load_files(args.images, ["BG"] + [f"class {i}" for i in range(1, model.config.NUM_CLASSES)])
        dataset.prepare()
    image_ids = list(dataset.image_ids[:args.limit])
    detections = evaluate.detect_dataset(model, dataset, image_ids)
    for image_id, d in zip(image_ids, detections):
        print(f"{_image_name(dataset, image_id)}: {len(d['class_ids'])} instances "
              f"({', '.join(f'{dataset.class_names[c]} {s:.2f}' for c, s in zip(d['class_ids'], d['scores']))})")
    if not args.no_png:
        os.makedirs(args.output, exist_ok=True)
        names = set()
        for image_id, d in tqdm(list(zip(image_ids, detections)), desc="PNGs", unit="image"):
            name = _image_name(dataset, image_id)
            name = name if name not in names else f"{name}_{image_id}"
            names.add(name)
            visualize.display_instances(_displayable(dataset.load_image(image_id)),
                                        d["rois"], d["masks"], d["class_ids"], dataset.class_names,
                                        d["scores"], title=name, figsize=(8, 8),
                                        save_path=os.path.join(args.output, name + ".png"))
        print(f"Wrote {len(image_ids)} PNGs to {args.output}")
    if args.results:
        records = evaluate.to_coco_results(dataset, detections, image_ids)
        if args.images:
            for record in records:
                record["file_name"] = dataset.image_info[record["image_id"]]["path"]
        evaluate.save_results(args.results, records)
        print(f"Wrote {len(records)} detections to {args.results}")
    return detections


def _displayable(image):
    """An image of any channel count as one display_instances shows: its first channel or first three."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 2:
        return image[..., :1]
    return image[..., :3] if image.ndim == 3 and image.shape[-1] > 4 else image


def _image_name(dataset, image_id):
    path = dataset.image_info[image_id].get("path")
    return os.path.splitext(os.path.basename(str(path)))[0] if path else f"image_{image_id}"


def export_command(args):
    """Export --weights as a TensorFlow SavedModel to --output."""
    model = load_detector(args, trained_weights(args))
    print(f"Exporting a SavedModel to {args.output}", flush=True)
    t0 = time.time()
    model.export_saved_model(args.output, overwrite=args.overwrite)
    print(f"Exported {args.output} in {time.time() - t0:.0f} s")


############################################################
#  Parser and main
############################################################

def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _command(sub, name, func, help_text):
    """A subcommand's parser with the options every command has."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(func=func)
    p.add_argument("--logs", default="logs",
                   help="folder of training runs and checkpoints (default: logs)")
    p.add_argument("--config", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="override Config settings, e.g. --config IMAGE_MAX_DIM=512 "
                        "DETECTION_MIN_CONFIDENCE=0.5 (values are Python literals, else text)")
    p.add_argument("--config-class", metavar="MODULE:CLASS",
                   help="start from this Config subclass instead of mrcnn.config.Config")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def _dataset_options(p, required):
    p.add_argument("--dataset", required=required, metavar="PATH",
                   help="annotation file or dataset folder")
    p.add_argument("--format", choices=FORMATS, help="the dataset's format")
    p.add_argument("--subset", help="subset to load (e.g. train, val), as the format defines")
    p.add_argument("--image-dir", help="folder of the images (coco without --subset, via; "
                                       "default: the annotation file's folder)")


def _inference_options(p, batch=True):
    p.add_argument("--weights", default="last", help=f"{WEIGHTS_HELP} (default: last)")
    if batch:
        p.add_argument("--batch", type=positive_int, default=1,
                       help="images per detect() call (default: 1)")


def _add_train(sub):
    p = _command(sub, "train", train_command, "train a model on a dataset")
    _dataset_options(p, required=True)
    p.add_argument("--val-dataset", metavar="PATH",
                   help="validation annotation file or folder (default: --dataset with --val-subset)")
    p.add_argument("--val-subset", help="validation subset")
    p.add_argument("--val-image-dir", help="folder of the validation images (default: --image-dir)")
    p.add_argument("--weights", required=True,
                   help=f"initial weights: {WEIGHTS_HELP}, imagenet (the backbone's ImageNet "
                        "weights) or none (random)")
    p.add_argument("--exclude", metavar="LAYERS",
                   help="comma-separated layers not to load, or heads_for_new_classes")
    p.add_argument("--layers", default="heads",
                   help="layers to train: heads, 3+, 4+, 5+, all or a regex (default: heads)")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="train up to this epoch, counting a resumed run's epochs (default: 10)")
    p.add_argument("--learning-rate", type=float, help="default: the config's LEARNING_RATE")
    p.add_argument("--eval-every", type=positive_int, metavar="N",
                   help="every N epochs, COCO AP on the validation set (logged and in TensorBoard)")
    p.add_argument("--eval-limit", type=positive_int, metavar="IMAGES",
                   help="validation images scored by --eval-every (default: all)")
    p.add_argument("--workers", type=positive_int, default=2, help="data-loading threads (default: 2)")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="tf.distribute strategy (default: the config's STRATEGY, auto: "
                        "multi-worker when TF_CONFIG names a cluster, mirrored with several GPUs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint under --logs (weights, epoch, "
                        "optimizer state); --weights is loaded only when there is none yet")


def _add_evaluate(sub):
    p = _command(sub, "evaluate", evaluate_command,
                 "COCO AP (bbox, segm: the 12 COCOeval numbers) and mAP of a model on a dataset")
    _dataset_options(p, required=True)
    _inference_options(p)
    p.add_argument("--limit", type=positive_int, metavar="IMAGES",
                   help="score only the first IMAGES images")
    p.add_argument("--output", metavar="FILE", help="write the metrics to this JSON file")
    p.add_argument("--results", metavar="FILE", help="write the detections as COCO results JSON")


def _add_detect(sub):
    p = _command(sub, "detect", detect_command,
                 "detect on image files or a dataset; write PNGs and/or COCO results JSON")
    p.add_argument("--images", metavar="PATH", help="an image file or a folder of images")
    _dataset_options(p, required=False)
    _inference_options(p)
    p.add_argument("--limit", type=positive_int, metavar="IMAGES", help="only the first IMAGES images")
    p.add_argument("--output", default="detections",
                   help="folder for the PNGs with masks, boxes and scores (default: detections)")
    p.add_argument("--no-png", action="store_true", help="write no PNGs (with --results)")
    p.add_argument("--results", metavar="FILE", help="write the detections as COCO results JSON")


def _add_export(sub):
    p = _command(sub, "export", export_command,
                 "export a model as a TensorFlow SavedModel for serving")
    _inference_options(p, batch=False)
    p.set_defaults(batch=1)
    p.add_argument("--output", required=True, metavar="FOLDER", help="SavedModel folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def build_parser():
    """The `mrcnn` argument parser: one subcommand per command."""
    parser = argparse.ArgumentParser(
        prog="mrcnn", description="Mask R-CNN: train, evaluate, detect and export on COCO, VIA, "
                                  "labelme or mask-folder datasets.",
        epilog="Run `mrcnn COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_detect, _add_export):
        add(sub)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (mrcnn/__init__ quiets TensorFlow's C++ log)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        config_settings(args)   # fail fast on a typo
        args.func(args)
    except KeyboardInterrupt:
        print("mrcnn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, UsageError):
            print(f"usage: mrcnn {args.command} ... (see mrcnn {args.command} --help)\n"
                  f"mrcnn {args.command}: error: {e}", file=sys.stderr)
            return 2
        known = isinstance(e, (ValueError, OSError, RuntimeError, KeyError))
        message = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)) if known \
            else f"{type(e).__name__}: {e}"
        print(f"mrcnn: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0

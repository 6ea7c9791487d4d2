"""Weight files in the Keras 2 HDF5 layout, read and written by layer name.

matterport's weights (``mask_rcnn_coco.h5``, ImageNet ResNet files, its
training checkpoints) use the Keras 2 layout: root attribute ``layer_names``;
one group per layer whose attribute ``weight_names`` lists datasets such as
``conv1/kernel:0`` (stored at ``conv1/conv1/kernel:0``); the nested
``rpn_model`` is one group whose names point into its sub-layers
(``rpn_conv_shared/kernel:0``). Keras 3 cannot load such files by name
reliably (its own ``.weights.h5`` files are keyed by layer class and order),
so this module reads and writes the layout with h5py.

Matching is by layer name, descending into nested models, and within a layer
by the layer's own variables (by short name, else by order). It never uses
``model.weights`` order, which Keras changes when layers are frozen.
"""

import contextlib
import dataclasses
import logging
import os
import re
import warnings

import h5py
import keras
import numpy as np

from mrcnn import files

__all__ = [
    "EXCLUDE_PRESETS", "KERAS2_VERSION", "HDF5_ATTR_LIMIT", "LAYOUT_HELP", "LoadReport",
    "Keras2File", "keras2_layout", "model_layers", "adapt_input_kernel", "load_weights_by_name",
    "copy_weights_by_name", "save_weights_by_name",
]

# `exclude` presets: "heads_for_new_classes" drops the layers whose shapes
# depend on NUM_CLASSES, as matterport's README does for fine-tuning.
EXCLUDE_PRESETS = {
    "heads_for_new_classes": ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"),
}

# Written as the file's `keras_version`. Keras 2 readers only look for "1"
# (to convert Keras 1 weights); matterport's files carry 2.x versions.
KERAS2_VERSION = "2.2.4"

# HDF5 object headers hold at most 64 KiB; Keras 2 splits longer name lists
# into attributes `<name>0`, `<name>1`, ... and so do we.
HDF5_ATTR_LIMIT = 64512

LAYOUT_HELP = ("A Keras-2-layout weights file (as matterport's Mask_RCNN and Keras 2's "
               "`save_weights('*.h5')` write) is an HDF5 file with a root "
               "attribute `layer_names` (or a `model_weights` group holding it) and one group "
               "per layer with a `weight_names` attribute.")

logger = logging.getLogger(__name__)

_RES4_BLOCK = re.compile(r"res4([a-z]+)_branch2a")
_BACKBONE_NAMES = {6: "ResNet-50", 23: "ResNet-101"}
_REPR_NAMES = 3       # names of each kind shown in a LoadReport's repr
# What h5py raises on a damaged file: OSError mostly, and (measured, flipping bytes of a
# file) KeyError, RuntimeError, ValueError, TypeError, UnicodeDecodeError from names.
_HDF5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


@dataclasses.dataclass(repr=False)
class LoadReport:
    """What `load_weights_by_name` did, by layer name.

    Names inside nested models (``rpn_conv_shared``) appear unqualified. The
    repr is one short line (counts and the first few names), so a notebook
    cell ending with `model.load_weights(...)` does not print every layer;
    the full lists are the attributes.
    """

    filepath: str
    loaded: list          # model layers whose weights were set from the file
    excluded: list        # file layers skipped because of `exclude`
    not_in_model: list    # file layers with weights that match no model layer
    missing_from_file: list  # model layers with weights the file did not set (excluded ones aside)
    adapted: list = dataclasses.field(default_factory=list)  # RGB input kernels adapted (adapt_input_kernel)

    def __repr__(self):
        parts = [f"{len(self.loaded)} loaded"]
        for label, names in (("excluded", self.excluded), ("not in model", self.not_in_model),
                             ("missing from file", self.missing_from_file), ("adapted", self.adapted)):
            if names:
                shown = ", ".join(names[:_REPR_NAMES]) + (", ..." if len(names) > _REPR_NAMES else "")
                parts.append(f"{len(names)} {label} [{shown}]")
        return f"LoadReport({os.path.basename(self.filepath)!r}: {'; '.join(parts)})"


# --------------------------------------------------------------------------- reading

def _read_names(group, key):
    """A Keras 2 name-list attribute as a list of str (None when absent)."""
    if key in group.attrs:
        values = np.asarray(group.attrs[key]).ravel()
    elif f"{key}0" in group.attrs:
        chunks, i = [], 0
        while f"{key}{i}" in group.attrs:
            chunks.append(np.asarray(group.attrs[f"{key}{i}"]).ravel())
            i += 1
        values = np.concatenate(chunks)
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


class Keras2File:
    """An open Keras-2-layout file; every failure to read it is a clear ValueError."""

    def __init__(self, filepath):
        self.path = os.fspath(filepath)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"Weights file not found: {self.path!r}.")
        if os.path.isdir(self.path):
            raise ValueError(f"{self.path!r} is a directory, not a weights file. {LAYOUT_HELP}")
        size = os.path.getsize(self.path)
        if not h5py.is_hdf5(self.path):
            with open(self.path, "rb") as fh:
                head = fh.read(4)
            what = ("an empty file" if size == 0 else
                    "a zip archive (a Keras 3 `.keras` model file?)" if head == b"PK\x03\x04" else
                    f"not an HDF5 file ({size} bytes; an interrupted download or a file of another format)")
            raise ValueError(f"Cannot load weights from {self.path!r}: it is {what}. {LAYOUT_HELP}")
        self._size = size
        with self._damaged("opening it"):
            self._file = h5py.File(self.path, "r")
        with self._damaged("reading `layer_names`"):
            root = self._file
            if "layer_names" not in root.attrs and "layer_names0" not in root.attrs \
                    and "model_weights" in root:
                root = root["model_weights"]
            self.layer_names = _read_names(root, "layer_names")
            keras3 = "layers" in self._file and "vars" in self._file
        if self.layer_names is None:
            self.close()
            hint = (" It looks like a Keras 3 `.weights.h5` file, which is keyed by layer class and "
                    "order, not by layer name; load it with `keras_model.load_weights()` into the "
                    "same architecture, then write it with mrcnn's `save_weights_by_name`."
                    if keras3 else "")
            raise ValueError(f"Cannot load weights from {self.path!r}: it is an HDF5 file without a "
                             f"`layer_names` attribute, so not a Keras-2-layout weights file.{hint} "
                             f"{LAYOUT_HELP}")
        self.root = root

    def close(self):
        self._file.close()

    @contextlib.contextmanager
    def _damaged(self, what):
        """Any error h5py raises inside as a ValueError naming the file: a damaged or
        truncated file fails in many places (at open, in a group's header, a dataset's type)."""
        try:
            yield
        except _HDF5_ERRORS as err:
            if getattr(self, "_file", None) is not None:
                self.close()
            raise ValueError(
                f"Cannot load weights from {self.path!r}: the HDF5 file is damaged or truncated "
                f"({self._size} bytes; an interrupted download or save?); it failed {what}. "
                f"HDF5 says: {type(err).__name__}: {err}") from err

    def groups(self):
        """[(layer_name, [(weight_name, dataset)])] in file order.

        Every dataset holds numbers (float, integer or bool): weights are read as
        HDF5 data, never unpickled, and an object, string or opaque dataset is refused.
        """
        out = []
        for name in self.layer_names:
            with self._damaged(f"reading layer {name!r}"):
                group = self.root.get(name)
                is_group = isinstance(group, h5py.Group)
                weight_names = (_read_names(group, "weight_names") or []) if is_group else []
                datasets = [(w, group.get(w)) for w in weight_names]
                # Each dataset's header (type and shape) is read here, under the guard.
                headers = {w: (ds.dtype, ds.shape) for w, ds in datasets
                           if isinstance(ds, h5py.Dataset)}
            if not is_group:
                raise ValueError(f"{self.path!r} lists layer {name!r} in `layer_names` but has no "
                                 f"group for it: the file is damaged or not a Keras-2-layout "
                                 f"weights file. {LAYOUT_HELP}")
            if len(headers) < len(datasets):
                raise ValueError(f"{self.path!r}: layer {name!r} lists weights {weight_names} but "
                                 f"some are missing from the file (damaged file?).")
            odd = {w: str(dtype) for w, (dtype, _) in headers.items() if dtype.kind not in "biuf"}
            if odd:
                raise ValueError(f"{self.path!r}: layer {name!r} holds weights that are not numbers "
                                 f"({odd}): not a weights file, or a damaged one. Weights are "
                                 "read as numeric HDF5 data only (never unpickled).")
            out.append((name, datasets))
        return out

    def read(self, dataset):
        with self._damaged(f"reading {dataset.name!r}"):
            return dataset[()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def keras2_layout(filepath):
    """List a Keras-2-layout weights file: [(layer_name, [(weight_name, shape)])] in file order.

    Layers without weights are included with an empty list. Raises the same
    clear errors as `load_weights_by_name` for missing or unreadable files.
    """
    with Keras2File(filepath) as f:
        return [(layer, [(w, tuple(ds.shape)) for w, ds in weights]) for layer, weights in f.groups()]


# --------------------------------------------------------------------------- model side

def model_layers(model):
    """Weight-carrying layers by name, descending into nested models.

    Returns ({name: (layer, ancestors)}, {nested model name: model}); a layer
    that is not a `keras.Model` is one unit however it stores its variables.
    """
    leaves, nested = {}, {}

    def walk(container, ancestors):
        for layer in container.layers:
            if layer.name in leaves or layer.name in nested:
                raise ValueError(f"Two layers of the model are named {layer.name!r}; loading and "
                                 f"saving by name needs unique layer names.")
            if isinstance(layer, keras.Model):
                nested[layer.name] = layer
                walk(layer, ancestors + (layer.name,))
            elif layer.weights:
                leaves[layer.name] = (layer, ancestors)

    walk(model, ())
    return leaves, nested


def _short_name(weight_name):
    """`rpn_model/rpn_conv_shared/kernel:0` -> `kernel`."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _pair(file_weights, variables):
    """Pair file weights with a layer's variables: by short name when both sides
    name the same unique set, else by order (Keras 2's rule)."""
    file_short = [_short_name(w) for w, _ in file_weights]
    var_short = [v.name for v in variables]
    if len(set(file_short)) == len(file_short) and sorted(file_short) == sorted(var_short):
        by_name = dict(zip(file_short, file_weights))
        return [(by_name[v.name], v) for v in variables]
    return list(zip(file_weights, variables))


def _split_nested(group_name, file_weights, leaves):
    """Split a nested-model group (`rpn_model`) into its sub-layers, by the
    layer name inside each weight name (`rpn_conv_shared/kernel:0`)."""
    inside = {name for name, (_, anc) in leaves.items() if group_name in anc}
    parts = {}
    for w, ds in file_weights:
        components = w.split("/")[:-1]
        leaf = next((c for c in components if c in inside), components[-1] if components else w)
        parts.setdefault(leaf, []).append((w, ds))
    return list(parts.items())


def adapt_input_kernel(kernel, channels):
    """An RGB convolution kernel [kh, kw, 3, n] adapted to images of `channels` channels.

    1 channel: the sum over the RGB axis, so a gray image gives exactly the
    response the original kernel gives to that image repeated as RGB.
    More than 3: the RGB kernels, then zeros for the extra channels, so the
    model starts out as the pretrained RGB model on the first three channels
    (the frozen BatchNorm statistics after it still fit) and training learns
    the extra channels (their gradients do not depend on their weights).
    Other counts (2) have no such rule and raise ValueError.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"adapt_input_kernel: expected an RGB kernel [kh, kw, 3, n], got {kernel.shape}.")
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    if channels > 3:
        extra = np.zeros(kernel.shape[:2] + (channels - 3, kernel.shape[3]), kernel.dtype)
        return np.concatenate([kernel, extra], axis=2)
    raise ValueError(f"adapt_input_kernel: no rule for {channels} channels (1 or more than 3 are "
                     "adapted); exclude the layer to train it from scratch.")


def _image_channels(model):
    """Channels of the model's `input_image` (None without one)."""
    return next((t.shape[-1] for t in getattr(model, "inputs", None) or [] if t.name == "input_image"),
                None)


def _adaptable(file_shape, model_shape, image_channels):
    """True for an RGB input kernel in the file and the same kernel for the model's image channels."""
    return (len(file_shape) == len(model_shape) == 4 and file_shape[2] == 3
            and image_channels is not None and (image_channels == 1 or image_channels > 3)
            and tuple(model_shape) == tuple(file_shape[:2]) + (image_channels, file_shape[3]))


def _res4_blocks(names):
    return {m.group(1) for n in names if (m := _RES4_BLOCK.fullmatch(n))}


def _check_backbone(path, file_names, model_names):
    """Name a ResNet-50 / ResNet-101 mix-up instead of loading half a backbone.

    A full Mask R-CNN file raises; a backbone-only file (matterport loads the
    ResNet-50 ImageNet weights even into ResNet-101 models) only warns.
    """
    in_file, in_model = _res4_blocks(file_names), _res4_blocks(model_names)
    if not in_file or not in_model or len(in_file) == len(in_model):
        return

    def describe(blocks):
        n = len(blocks)
        return (f"{_BACKBONE_NAMES.get(n, 'a ResNet')} (res4{min(blocks)}..res4{max(blocks)}, "
                f"{n} res4 blocks)")

    extra = sorted(in_file ^ in_model)[-1]
    where = "is missing from the file" if len(in_file) < len(in_model) else "is not in the model"
    message = (f"{path!r} holds a {describe(in_file)} backbone but the model is "
               f"{describe(in_model)}: e.g. layer res4{extra}_branch2a {where}.")
    full_model = any(n.startswith(("fpn_", "rpn_", "mrcnn_")) for n in file_names)
    if full_model:
        wanted = {6: "resnet50", 23: "resnet101"}.get(len(in_file))
        fix = (f' Build the model with config BACKBONE = "{wanted}" to use this file.' if wanted
               else " Build the model with the backbone the file was trained with.")
        raise ValueError(message + fix)
    warnings.warn(message + " The model's other backbone layers keep their initial values.",
                  stacklevel=3)


# --------------------------------------------------------------------------- loading

def _expand_exclude(exclude):
    if exclude is None:
        return []
    if isinstance(exclude, str):
        exclude = [exclude]
    names = []
    for item in exclude:
        names.extend(EXCLUDE_PRESETS.get(item, (item,)))
    return list(dict.fromkeys(names))


def _all_layer_names(model):
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names |= _all_layer_names(layer)
    return names


def load_weights_by_name(model, filepath, exclude=None, verbose=0):
    """Set `model`'s weights from a Keras-2-layout HDF5 file, matching layers by name.

    Loads matterport's files (``mask_rcnn_coco.h5``, ImageNet ResNet weights,
    its checkpoints) and those of `save_weights_by_name`. Layers are matched
    by name, also inside nested models such as ``rpn_model``, whatever layers
    are frozen. `exclude` is a list of layer names (also inside ``rpn_model``)
    or the preset ``"heads_for_new_classes"`` (mrcnn_class_logits,
    mrcnn_bbox_fc, mrcnn_bbox, mrcnn_mask). All shape mismatches are reported
    in one ValueError that names the ``exclude=[...]`` fixing them; nothing is
    assigned unless everything fits. A 3-channel input kernel (conv1 of
    ImageNet or COCO weights) loaded into a model for 1 or more than 3 image
    channels (IMAGE_CHANNEL_COUNT) is adapted by `adapt_input_kernel` and
    listed in the report's `adapted`. A file that is not HDF5, is damaged or
    truncated, holds datasets that are not numbers, or NaN or infinite weights
    raises ValueError naming the file, and nothing is assigned. (A flipped
    bit inside float data that leaves it finite cannot be detected: HDF5
    stores no checksums by default.) Returns a `LoadReport`.
    """
    exclude_names = _expand_exclude(exclude)
    leaves, nested = model_layers(model)
    with Keras2File(filepath) as f:
        path = f.path
        entries = _file_entries(f, leaves, nested)
        excluded = set(exclude_names)
        known = _all_layer_names(model) | {name for e in entries for name in e[:2]}
        unknown = [n for n in exclude_names if n not in known]
        if unknown:
            warnings.warn(f"exclude names no layer of the model or the file: {unknown}",
                          stacklevel=2)

        def is_excluded(leaf, group=None):       # by its own, its file group's or a parent's name
            return bool(excluded.intersection({leaf, group, *leaves.get(leaf, (None, ()))[1]}))

        kept = [e for e in entries if not is_excluded(*e[:2])]
        skipped = list(dict.fromkeys(e[0] for e in entries if is_excluded(*e[:2])))
        _check_backbone(path, [e[0] for e in kept], list(leaves))

        matched = [e for e in kept if e[0] in leaves]
        not_in_model = [e[0] for e in kept if e[0] not in leaves]
        if not matched and not skipped:
            raise ValueError(
                f"No layer of {path!r} matches a layer of the model by name: the file has e.g. "
                f"{not_in_model[:5]}, the model {list(leaves)[:5]}. Is it a weights file for "
                f"this network (Keras applications' newer ResNet files use other names)?")

        image_channels = _image_channels(model)
        assignments, adapted, mismatches = _pair_layers(matched, leaves, image_channels)
        if mismatches:
            raise ValueError(_mismatch_message(path, mismatches, exclude_names))
        values = [(ds, v, f.read(ds)) for (_, ds), v in assignments]
        _check_finite(path, matched, values, exclude_names)
    for _, variable, value in values:
        if value.shape != tuple(variable.shape):
            value = adapt_input_kernel(value, image_channels)
        variable.assign(np.asarray(value, dtype=variable.dtype))

    loaded = [e[0] for e in matched]
    missing = [name for name in leaves if name not in loaded and not is_excluded(name)]
    report = LoadReport(path, loaded, skipped, not_in_model, missing, adapted)
    for name in adapted:
        logger.info("%s: adapted %s's RGB kernel to %s image channels (adapt_input_kernel)",
                    path, name, image_channels)
    if verbose:
        _print_report(report, image_channels, verbose)
    return report


def _file_entries(f, leaves, nested):
    """The file's layers with weights as (layer name, containing file group or None,
    [(weight_name, dataset)]); a nested model's group (rpn_model) split into its layers."""
    entries = []
    for group_name, file_weights in f.groups():
        if not file_weights:
            continue
        if group_name in nested:
            entries.extend((leaf, group_name, ws)
                           for leaf, ws in _split_nested(group_name, file_weights, leaves))
        else:
            entries.append((group_name, None, file_weights))
    if not entries:
        raise ValueError(f"{f.path!r} is a Keras-2-layout file but holds no weights.")
    return entries


def _pair_layers(matched, leaves, image_channels):
    """The file entries `matched` to model layers, paired weight by weight:
    (assignments [((weight_name, dataset), variable)], adapted layer names,
    mismatches [(layer name, what differs)])."""
    assignments, adapted, mismatches = [], [], []
    for leaf, _, file_weights in matched:
        variables = leaves[leaf][0].weights
        if len(file_weights) != len(variables):
            mismatches.append((leaf, f"the file has {len(file_weights)} weights "
                               f"{[tuple(ds.shape) for _, ds in file_weights]}, the model layer "
                               f"{len(variables)} {[tuple(v.shape) for v in variables]}"))
            continue
        pairs = _pair(file_weights, variables)
        bad = [f"{w}: file {tuple(ds.shape)} vs model {tuple(v.shape)}"
               for (w, ds), v in pairs if tuple(ds.shape) != tuple(v.shape)
               and not _adaptable(ds.shape, v.shape, image_channels)]
        if not bad and any(tuple(ds.shape) != tuple(v.shape) for (_, ds), v in pairs):
            adapted.append(leaf)
        if bad:
            mismatches.append((leaf, "; ".join(bad)))
        assignments.extend(pairs)
    return assignments, adapted, mismatches


def _check_finite(path, matched, read, exclude_names):
    """Refuse NaN or infinite weights (a damaged file, or saved from a diverged run) before
    any is assigned: they would make every detection NaN, or the RPN's boxes non-finite."""
    layer_of = {ds.name: leaf for leaf, _, file_weights in matched for _, ds in file_weights}
    bad = [ds.name for ds, _, value in read
           if value.dtype.kind == "f" and not np.all(np.isfinite(value))]
    if bad:
        layers = list(dict.fromkeys(layer_of[name] for name in bad))
        fix = list(dict.fromkeys(exclude_names + layers))
        raise ValueError(
            f"{path!r} holds NaN or infinite values in {len(bad)} weight(s) of layer(s) {layers} "
            f"(e.g. {bad[0]}); nothing was loaded. The file is damaged or was saved from a "
            f"training run that diverged: use an earlier checkpoint or a fresh download, or "
            f"load with exclude={fix!r} to keep the model's own values for those layers.")


def _print_report(report, image_channels, verbose):
    """What `load_weights_by_name` did, for verbose >= 1 (and every loaded layer for > 1)."""
    print(f"Loaded {len(report.loaded)} layers from {report.filepath}")
    if report.adapted:
        print(f"  Adapted from RGB to {image_channels} image channels: {', '.join(report.adapted)}")
    for label, names in (("Excluded", report.excluded),
                         ("In the file, not in the model", report.not_in_model),
                         ("Not set by the file", report.missing_from_file)):
        if names:
            print(f"  {label} ({len(names)}): {', '.join(names)}")
    if verbose > 1:
        print(f"  Loaded: {', '.join(report.loaded)}")


def _mismatch_message(path, mismatches, exclude_names):
    names = [leaf for leaf, _ in mismatches]
    fix = list(dict.fromkeys(exclude_names + names))
    lines = [f"{path!r} does not fit the model in {len(names)} layer(s); nothing was loaded:"]
    lines += [f"  {leaf}: {detail}" for leaf, detail in mismatches]
    lines.append(f"To keep the model's own initial values for them, load with exclude={fix!r}")
    if set(names) <= set(EXCLUDE_PRESETS["heads_for_new_classes"]):
        lines.append('(For a different NUM_CLASSES, exclude="heads_for_new_classes" covers these layers.)')
    return "\n".join(lines)


def copy_weights_by_name(source, target):
    """Assign `target`'s layers the weights of `source`'s layers of the same name (nested
    models too), in memory: e.g. a training model's into its inference twin. Returns the
    names of the layers copied."""
    source_layers, _ = model_layers(source)
    copied = []
    for name, (layer, _) in model_layers(target)[0].items():
        if name in source_layers:
            for variable, value in zip(layer.weights, source_layers[name][0].weights):
                variable.assign(value)
            copied.append(name)
    return copied


# --------------------------------------------------------------------------- saving

def _write_names(group, key, names):
    """Write a name list like Keras 2, split into `<key>0..` past the header limit."""
    encoded = [n.encode("utf8") for n in names]
    data = np.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}")
    chunks = 1
    while any(c.nbytes > HDF5_ATTR_LIMIT for c in np.array_split(data, chunks)):
        chunks += 1
    if chunks == 1:
        group.attrs[key] = data
    else:
        for i, chunk in enumerate(np.array_split(data, chunks)):
            group.attrs[f"{key}{i}"] = chunk


def _layer_weights(layer):
    """[(weight name as matterport writes it, variable)] for one top-level layer."""
    if isinstance(layer, keras.Model):
        leaves, _ = model_layers(layer)
        units = [(name, leaf) for name, (leaf, _) in leaves.items()]
    else:
        units = [(layer.name, layer)]
    out = []
    for name, unit in units:
        short = [v.name for v in unit.weights]
        for v in unit.weights:
            # Short names are unique in matterport's layers; a custom layer with
            # two `kernel`s falls back to the variable's path inside the layer.
            tail = v.name if short.count(v.name) == 1 else v.path.split("/", 1)[-1]
            out.append((f"{name}/{tail}:0", v))
    return out


def save_weights_by_name(model, filepath):
    """Write `model`'s weights in the Keras 2 layout matterport writes, atomically.

    Every top-level layer is listed in ``layer_names`` (those without weights
    with an empty ``weight_names``); a nested model such as ``rpn_model`` is
    one group with names like ``rpn_conv_shared/kernel:0``. The file is
    written to a temporary name in the same folder, synced, then renamed, so
    a crash never leaves a partial file under `filepath`.
    """
    def write(path):
        with h5py.File(path, "w") as f:
            _write_names(f, "layer_names", [layer.name for layer in model.layers])
            # Fixed-length bytes, as Keras 2 under h5py 2 wrote them: readers call `.decode()`.
            f.attrs["backend"] = np.bytes_(b"tensorflow")
            f.attrs["keras_version"] = np.bytes_(KERAS2_VERSION.encode())
            for layer in model.layers:
                group = f.create_group(layer.name)
                weights = _layer_weights(layer)
                _write_names(group, "weight_names", [name for name, _ in weights])
                for name, variable in weights:
                    group.create_dataset(name, data=keras.ops.convert_to_numpy(variable))

    files.write_atomically(filepath, write)

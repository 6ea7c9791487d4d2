"""Weight files in matterport's Keras 2 layout: round trips, frozen layers,
exclude, clear errors for bad files, and the exact layouts matterport writes."""

import ast
import json
import os
import re
import string
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from mrcnn import weights as W

# Listings of the files matterport's library writes: layer names, weight names, shapes, file order.
REFERENCE = Path(__file__).resolve().parent / "data"
SHAPES_R50 = REFERENCE / "matterport_layout_shapes_resnet50.json"
COCO_R101 = REFERENCE / "matterport_layout_coco_resnet101.json"


# --------------------------------------------------------------------------- stand-in models

class InnerConv(keras.layers.Layer):
    """A wrapper whose variables live in an inner layer (paths like `x/conv2d/kernel`)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Conv2D(filters, 3, padding="same")

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, x):
        return self.inner(x)


class InnerBN(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.BatchNormalization()

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, x):
        return self.inner(x, training=False)


def standin(num_classes=4, res4_blocks=6, heads=True, seed=0):
    """A tiny model with the contract's layer names: ResNet-like res4 blocks,
    a nested `rpn_model` with a frozen layer, wrapper layers, weightless layers."""
    inp = keras.Input((16, 16, 3), name="input_image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn_conv1")(x)
    x = keras.layers.Activation("relu")(x)
    for letter in string.ascii_lowercase[:res4_blocks]:
        x = keras.layers.Conv2D(4, 1, name=f"res4{letter}_branch2a")(x)
        x = keras.layers.BatchNormalization(name=f"bn4{letter}_branch2a")(x)
    outputs = [x]
    if heads:
        p = keras.layers.Conv2D(8, 1, name="fpn_c5p5")(x)
        rin = keras.Input((None, None, 8), name="input_rpn_feature_map")
        shared = keras.layers.Conv2D(6, 3, padding="same", name="rpn_conv_shared")(rin)
        rpn = keras.Model(rin, [keras.layers.Conv2D(6, 1, name="rpn_class_raw")(shared),
                                keras.layers.Conv2D(12, 1, name="rpn_bbox_pred")(shared)],
                          name="rpn_model")
        rpn.get_layer("rpn_class_raw").trainable = False
        m = InnerConv(8, name="mrcnn_mask_conv1")(p)
        m = InnerBN(name="mrcnn_mask_bn1")(m)
        m = keras.layers.Conv2DTranspose(8, 2, strides=2, name="mrcnn_mask_deconv")(m)
        m = keras.layers.Conv2D(num_classes, 1, name="mrcnn_mask")(m)
        c = keras.layers.GlobalAveragePooling2D()(p)
        logits = keras.layers.Dense(num_classes, name="mrcnn_class_logits")(c)
        bbox = keras.layers.Dense(4 * num_classes, name="mrcnn_bbox_fc")(c)
        bbox = keras.layers.Reshape((num_classes, 4), name="mrcnn_bbox")(bbox)
        outputs = [*rpn(p), logits, bbox, m]
    model = keras.Model(inp, outputs, name="mask_rcnn")
    randomize(model, seed)
    return model


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype("float32"))


def leaf_layers(model):
    """{name: layer} of weight-carrying layers, nested models opened."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.update(leaf_layers(layer))
        elif layer.weights:
            out[layer.name] = layer
    return out


def values(model):
    return {name: [keras.ops.convert_to_numpy(v) for v in layer.weights] for name, layer in leaf_layers(model).items()}


def assert_same(a, b, names=None):
    va, vb = values(a), values(b)
    for name in names if names is not None else va:
        for x, y in zip(va[name], vb[name], strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


def assert_differ(a, b, names):
    va, vb = values(a), values(b)
    for name in names:
        assert all(not np.array_equal(x, y) for x, y in zip(va[name], vb[name])), name


def read_keras2_way(path):
    """Read a file as Keras 2 does: layer_names -> weight_names -> datasets."""
    out = []
    with h5py.File(path, "r") as f:
        for name in [n.decode("utf8") for n in f.attrs["layer_names"]]:
            g = f[name]
            out.append((name, [(w.decode("utf8"), g[w][()]) for w in g.attrs["weight_names"]]))
    return out


def assert_files_equal(a, b, weighted_only=False):
    """Same layer names, weight names, dtypes and bytes, in the same order
    (`weighted_only`: ignoring auto-named layers without weights)."""
    la, lb = read_keras2_way(a), read_keras2_way(b)
    if weighted_only:
        la, lb = [e for e in la if e[1]], [e for e in lb if e[1]]
    for (n1, w1), (n2, w2) in zip(la, lb, strict=True):
        assert n1 == n2
        for (name1, a1), (name2, a2) in zip(w1, w2, strict=True):
            assert name1 == name2 and a1.dtype == a2.dtype and a1.tobytes() == a2.tobytes(), name1


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A stand-in (4 classes, 6 res4 blocks) and the file it was saved to."""
    model = standin(seed=1)
    path = tmp_path_factory.mktemp("w") / "standin.h5"
    W.save_weights_by_name(model, path)
    return model, path


# --------------------------------------------------------------------------- round trips

def test_round_trip_is_bit_identical_and_reported(saved):
    source, path = saved
    target = standin(seed=2)
    report = W.load_weights_by_name(target, path)
    assert_same(source, target)
    assert sorted(report.loaded) == sorted(leaf_layers(target))
    assert report.excluded == report.not_in_model == report.missing_from_file == []
    assert os.listdir(path.parent) == ["standin.h5"]      # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask   # not tempfile's private 0600


def test_written_file_reads_the_keras2_way(saved):
    model, path = saved
    with h5py.File(path, "r") as f:
        assert f.attrs["backend"].decode() == "tensorflow"      # bytes, as Keras 2 readers expect
        assert re.fullmatch(r"2\.\d+\.\d+", f.attrs["keras_version"].decode())
    layout = read_keras2_way(path)
    assert [name for name, _ in layout] == [layer.name for layer in model.layers]
    by_name = dict(layout)
    assert by_name["mrcnn_bbox"] == [] and by_name["input_image"] == []
    assert [w for w, _ in by_name["rpn_model"]] == [
        "rpn_conv_shared/kernel:0", "rpn_conv_shared/bias:0", "rpn_class_raw/kernel:0",
        "rpn_class_raw/bias:0", "rpn_bbox_pred/kernel:0", "rpn_bbox_pred/bias:0"]
    assert [w for w, _ in by_name["mrcnn_mask_bn1"]] == [
        "mrcnn_mask_bn1/gamma:0", "mrcnn_mask_bn1/beta:0",
        "mrcnn_mask_bn1/moving_mean:0", "mrcnn_mask_bn1/moving_variance:0"]
    leaves = leaf_layers(model)
    for group, weights in layout:
        for weight_name, array in weights:
            layer_name, short = weight_name[:-2].split("/")
            assert layer_name == group or group == "rpn_model"
            (variable,) = [v for v in leaves[layer_name].weights if v.name == short]
            assert array.tobytes() == keras.ops.convert_to_numpy(variable).tobytes(), weight_name
    assert W.keras2_layout(path) == [(n, [(w, a.shape) for w, a in ws]) for n, ws in layout]


@pytest.mark.parametrize("frozen", [
    ["bn_conv1", "rpn_conv_shared", "mrcnn_mask_bn1"],
    ["rpn_model", "mrcnn_class_logits"],
    "all_but_heads",
])
def test_load_and_save_ignore_frozen_layers(saved, tmp_path, frozen):
    source, path = saved
    target = standin(seed=3)
    leaves = leaf_layers(target)
    if frozen == "all_but_heads":
        frozen = [n for n in leaves if not n.startswith("mrcnn_")]
    for name in frozen:
        (leaves.get(name) or target.get_layer(name)).trainable = False
    W.load_weights_by_name(target, path)
    assert_same(source, target)
    W.save_weights_by_name(target, tmp_path / "frozen.h5")
    assert_files_equal(tmp_path / "frozen.h5", path, weighted_only=True)


def test_reads_full_model_files_and_chunked_name_lists(saved, tmp_path, monkeypatch):
    source, path = saved
    full = tmp_path / "full_model.h5"          # Keras 2 `model.save()`: weights under model_weights
    with h5py.File(path, "r") as src, h5py.File(full, "w") as dst:
        dst.attrs["model_config"] = b"{}"
        src.copy(src["/"], dst, name="model_weights")
        for key, value in src.attrs.items():
            dst["model_weights"].attrs[key] = value
    target = standin(seed=4)
    W.load_weights_by_name(target, full)
    assert_same(source, target)

    monkeypatch.setattr(W, "HDF5_ATTR_LIMIT", 64)
    chunked = tmp_path / "chunked.h5"
    W.save_weights_by_name(source, chunked)
    with h5py.File(chunked, "r") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
    assert W.keras2_layout(chunked) == W.keras2_layout(path)
    target = standin(seed=5)
    W.load_weights_by_name(target, chunked)
    assert_same(source, target)


def test_failed_save_keeps_the_old_file(saved, tmp_path, monkeypatch):
    model, path = saved
    target = tmp_path / "ckpt.h5"
    target.write_bytes(path.read_bytes())

    def boom(group, key, names):
        raise RuntimeError("disk full")

    monkeypatch.setattr(W, "_write_names", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        W.save_weights_by_name(standin(seed=9), target)
    assert target.read_bytes() == path.read_bytes()
    assert os.listdir(tmp_path) == ["ckpt.h5"]


def test_rpn_model_group_in_any_order_or_flattened(saved, tmp_path):
    source, path = saved
    layout = read_keras2_way(path)
    rpn = dict(layout)["rpn_model"]
    # Keras 2 writes a nested model's trainable weights first: with rpn_class_raw
    # frozen, its weights come last. Names, not order, must decide.
    reordered = tmp_path / "keras2_frozen_rpn.h5"
    write_keras2(reordered, [(n, rpn[:2] + rpn[4:] + rpn[2:4] if n == "rpn_model" else ws)
                             for n, ws in layout])
    target = standin(seed=14)
    W.load_weights_by_name(target, reordered)
    assert_same(source, target)
    # The RPN layers as top-level groups still land inside the nested rpn_model.
    flat = tmp_path / "flat_rpn.h5"
    parts = [(n, [(w, a) for w, a in rpn if w.startswith(n + "/")])
             for n in ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")]
    write_keras2(flat, [e for n, ws in layout for e in (parts if n == "rpn_model" else [(n, ws)])])
    target, before = standin(seed=15), standin(seed=15)
    W.load_weights_by_name(target, flat, exclude=["rpn_bbox_pred"])
    assert_same(source, target, ["rpn_conv_shared", "rpn_class_raw", "conv1"])
    assert_same(before, target, ["rpn_bbox_pred"])
    report = W.load_weights_by_name(target, flat, exclude=["rpn_model"])
    assert sorted(report.excluded) == ["rpn_bbox_pred", "rpn_class_raw", "rpn_conv_shared"]


# --------------------------------------------------------------------------- exclude

def test_exclude_names_also_inside_rpn_model(saved):
    source, path = saved
    target = standin(seed=6)
    before = standin(seed=6)
    report = W.load_weights_by_name(target, path, exclude=["fpn_c5p5", "rpn_bbox_pred"])
    assert sorted(report.excluded) == ["fpn_c5p5", "rpn_bbox_pred"]
    assert report.missing_from_file == []
    assert_same(before, target, ["fpn_c5p5", "rpn_bbox_pred"])
    assert_same(source, target, [n for n in values(source) if n not in report.excluded])

    target = standin(seed=6)
    report = W.load_weights_by_name(target, path, exclude=["rpn_model"])
    assert sorted(report.excluded) == ["rpn_bbox_pred", "rpn_class_raw", "rpn_conv_shared"]
    assert_same(before, target, report.excluded)
    assert_same(source, target, ["conv1", "mrcnn_mask"])


def test_heads_preset_loads_a_file_with_another_class_count(saved):
    source, path = saved
    target, before = standin(num_classes=7, seed=7), standin(num_classes=7, seed=7)
    report = W.load_weights_by_name(target, path, exclude="heads_for_new_classes")
    heads = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"]
    assert sorted(report.excluded) == sorted(heads)
    assert_same(before, target, heads)
    assert_same(source, target, [n for n in values(source) if n not in heads])


def test_unknown_exclude_name_warns(saved):
    _, path = saved
    with pytest.warns(UserWarning, match="mrcnn_class_logit"):
        W.load_weights_by_name(standin(seed=8), path, exclude=["mrcnn_class_logit"])


# --------------------------------------------------------------------------- mismatches and bad files

def test_class_count_mismatch_lists_every_layer_and_the_fix(saved):
    _, path = saved
    target, before = standin(num_classes=7, seed=10), standin(num_classes=7, seed=10)
    with pytest.raises(ValueError) as info:
        W.load_weights_by_name(target, path, exclude=["fpn_c5p5"])
    message = str(info.value)
    for line in ("mrcnn_class_logits: mrcnn_class_logits/kernel:0: file (8, 4) vs model (8, 7)",
                 "mrcnn_bbox_fc/bias:0: file (16,) vs model (28,)",
                 "mrcnn_mask: mrcnn_mask/kernel:0: file (1, 1, 8, 4) vs model (1, 1, 8, 7)",
                 "nothing was loaded", "heads_for_new_classes"):
        assert line in message
    assert_same(before, target)                       # nothing assigned
    fix = ast.literal_eval(re.search(r"exclude=(\[.*?\])", message).group(1))
    assert fix[0] == "fpn_c5p5"
    assert sorted(fix[1:]) == ["mrcnn_bbox_fc", "mrcnn_class_logits", "mrcnn_mask"]
    report = W.load_weights_by_name(target, path, exclude=fix)
    assert sorted(report.excluded) == sorted(fix)


@pytest.mark.parametrize("file_blocks, model_blocks, expected", [
    (23, 6, r"ResNet-101 .* but the model is ResNet-50 .*res4w_branch2a is not in the model.*"
            r'BACKBONE = "resnet101"'),
    (6, 23, r"ResNet-50 .* but the model is ResNet-101 .*res4w_branch2a is missing from the file.*"
            r'BACKBONE = "resnet50"'),
])
def test_resnet50_and_resnet101_mixups_are_named(tmp_path, file_blocks, model_blocks, expected):
    path = tmp_path / "other_backbone.h5"
    W.save_weights_by_name(standin(res4_blocks=file_blocks), path)
    target, before = standin(res4_blocks=model_blocks, seed=11), standin(res4_blocks=model_blocks, seed=11)
    with pytest.raises(ValueError, match=expected):
        W.load_weights_by_name(target, path)
    assert_same(before, target)


def test_resnet50_backbone_only_file_into_resnet101_warns_and_loads(tmp_path):
    # matterport initialises ResNet-101 models from the ResNet-50 ImageNet file.
    source = standin(res4_blocks=6, heads=False)
    path = tmp_path / "imagenet_r50.h5"
    W.save_weights_by_name(source, path)
    target = standin(res4_blocks=23, seed=12)
    with pytest.warns(UserWarning, match="ResNet-50 .* ResNet-101"):
        report = W.load_weights_by_name(target, path)
    assert_same(source, target, ["conv1", "res4f_branch2a"])
    assert "res4w_branch2a" in report.missing_from_file and "mrcnn_mask" in report.missing_from_file


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_file_is_named(saved, tmp_path, keep):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:int(len(data) * keep)])
    target, before = standin(seed=13), standin(seed=13)
    with pytest.raises(ValueError, match="damaged or truncated|not an HDF5 file") as info:
        W.load_weights_by_name(target, cut)
    assert str(cut) in str(info.value)
    assert_same(before, target)


@pytest.mark.parametrize("content, expected", [
    (b"<html>404 Not Found</html>", r"not an HDF5 file .*layer_names"),
    (b"", "an empty file"),
    (None, r"zip archive .*\.keras"),
])
def test_non_hdf5_file_is_named(tmp_path, content, expected):
    path = tmp_path / "weights.h5"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", "{}")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        W.load_weights_by_name(standin(), path)


def test_hdf5_without_layer_names_is_named(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="without a `layer_names` attribute"):
        W.keras2_layout(plain)
    keras3 = tmp_path / "model.weights.h5"
    standin().save_weights(keras3)
    with pytest.raises(ValueError, match=r"Keras 3 `\.weights\.h5` file"):
        W.load_weights_by_name(standin(), keras3)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        W.load_weights_by_name(standin(), tmp_path / "nowhere.h5")


def test_file_of_another_network_is_named(tmp_path):
    inp = keras.Input((4,))
    other = keras.Model(inp, keras.layers.Dense(2, name="conv2_block1_1_conv")(inp))
    path = tmp_path / "other.h5"
    W.save_weights_by_name(other, path)
    with pytest.raises(ValueError, match="No layer .* matches .*conv2_block1_1_conv"):
        W.load_weights_by_name(standin(), path)


# --------------------------------------------------------------------------- matterport's layouts

def write_keras2(path, layers, backend="tensorflow", keras_version="2.2.4"):
    """Write [(layer, [(weight_name, array)])] as Keras 2 does."""
    with h5py.File(path, "w") as f:
        # np.asarray of a bytes list, as Keras 2 writes: "S" strings, or float64 when empty.
        f.attrs["layer_names"] = np.asarray([name.encode() for name, _ in layers])
        f.attrs["backend"] = np.bytes_(backend.encode())
        f.attrs["keras_version"] = np.bytes_(keras_version.encode())
        for name, weights in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.asarray([w.encode() for w, _ in weights])
            for w, array in weights:
                g.create_dataset(w, data=array)


def write_reference_file(listing, path, seed=0):
    """Write a file exactly as matterport does for `listing`, with random values."""
    rng = np.random.default_rng(seed)
    write_keras2(path, [(layer["name"], [(w["name"], rng.standard_normal(w["shape"], dtype=w["dtype"]))
                                         for w in layer["weights"]])
                        for layer in listing["layers"]],
                 listing["backend"], listing["keras_version"])


def listing_layout(listing):
    return [(layer["name"], [(w["name"], tuple(w["shape"])) for w in layer["weights"]])
            for layer in listing["layers"]]


class Holder(keras.layers.Layer):
    """A layer holding exactly the variables a reference listing names."""

    def __init__(self, name, weights):
        super().__init__(name=name)
        self.held = [self.add_weight(shape=tuple(w["shape"]), name=w["name"].split("/")[-1][:-2],
                                     initializer="zeros") for w in weights]
        self.built = True


class HolderModel(keras.Model):
    def __init__(self, name, layers):
        super().__init__(name=name)
        self.held = layers

    def call(self, x):
        return x


def holder_model(listing):
    """A model whose layers (and nested rpn_model) carry the listing's names and shapes."""
    layers = []
    for layer in listing["layers"]:
        if layer["name"] == "rpn_model":
            parts = {}
            for w in layer["weights"]:
                parts.setdefault(w["name"].split("/")[0], []).append(w)
            layers.append(HolderModel("rpn_model", [Holder(n, ws) for n, ws in parts.items()]))
        else:
            layers.append(Holder(layer["name"], layer["weights"]))
    return HolderModel("mask_rcnn", layers)


@pytest.fixture(scope="module", params=[SHAPES_R50, COCO_R101], ids=["shapes_resnet50", "coco_resnet101"])
def reference_file(request, tmp_path_factory):
    listing = json.loads(request.param.read_text())
    path = tmp_path_factory.mktemp("ref") / listing["file"]
    write_reference_file(listing, path)
    return listing, path


def assert_loaded_as_named(model, path):
    """Every file weight sits in the model variable its name names, and every
    model variable was set from the file."""
    leaves, seen = leaf_layers(model), set()
    for group, weights in read_keras2_way(path):
        for weight_name, array in weights:
            layer_name, short = weight_name[:-2].split("/")
            assert layer_name == group or group == "rpn_model", weight_name
            (variable,) = [v for v in leaves[layer_name].weights if v.name == short]
            assert keras.ops.convert_to_numpy(variable).tobytes() == array.tobytes(), weight_name
            seen.add(id(variable))
    assert seen == {id(v) for v in model.weights}


def test_keras2_layout_reads_matterports_layout(reference_file):
    listing, path = reference_file
    assert W.keras2_layout(path) == listing_layout(listing)


def test_matterport_file_loads_and_saves_back_identically(reference_file, tmp_path):
    listing, path = reference_file
    model = holder_model(listing)
    report = W.load_weights_by_name(model, path)
    assert report.missing_from_file == report.not_in_model == []
    assert len(report.loaded) == listing["n_layers_with_weights"] - 1 + 3   # rpn_model opened
    assert_loaded_as_named(model, path)
    out = tmp_path / "again.h5"
    W.save_weights_by_name(model, out)
    assert W.keras2_layout(out) == listing_layout(listing)
    assert_files_equal(out, path)


def test_matterport_file_loads_into_the_inference_graph(reference_file, tmp_path):
    from mrcnn import mask_rcnn
    from mrcnn.config import Config

    listing, path = reference_file
    layers = {layer["name"]: layer["weights"] for layer in listing["layers"]}

    class ListingInference(Config):          # the listing's backbone and class count
        NAME = "listing"
        NUM_CLASSES = layers["mrcnn_class_logits"][0]["shape"][-1]
        BACKBONE = "resnet101" if "res4w_branch2a" in layers else "resnet50"
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
        GPU_COUNT = IMAGES_PER_GPU = 1

    model = mask_rcnn.build_inference_model(ListingInference())
    report = W.load_weights_by_name(model, path)
    assert report.missing_from_file == [] and report.not_in_model == []
    assert_loaded_as_named(model, path)
    # And back: the weights it writes are matterport's, name for name and bit for bit
    # (layer order is free: loading goes by name).
    out = tmp_path / "ours.h5"
    W.save_weights_by_name(model, out)
    mine, theirs = dict(read_keras2_way(out)), dict(read_keras2_way(path))
    assert {n for n, ws in mine.items() if ws} == {n for n, ws in theirs.items() if ws}
    for name, weights in theirs.items():
        for (w1, a1), (w2, a2) in zip(mine.get(name, []), weights, strict=True):
            assert w1 == w2 and a1.dtype == a2.dtype and a1.tobytes() == a2.tobytes(), w2


def test_report_repr_is_one_short_line(saved, tmp_path):
    """A notebook cell ending with load_weights() shows counts and a few names, not every layer."""
    _, path = saved
    report = W.load_weights_by_name(standin(seed=2), path, exclude="heads_for_new_classes")
    assert repr(report) == ("LoadReport('standin.h5': 21 loaded; "
                            "3 excluded [mrcnn_bbox_fc, mrcnn_class_logits, mrcnn_mask])")
    backbone_only = tmp_path / "backbone.h5"
    W.save_weights_by_name(standin(heads=False), backbone_only)
    report = W.load_weights_by_name(standin(), backbone_only)
    missing = report.missing_from_file
    assert len(missing) == 10
    assert repr(report) == (f"LoadReport('backbone.h5': 14 loaded; 10 missing from file "
                            f"[{missing[0]}, {missing[1]}, {missing[2]}, ...])")
    # A report the size of a full Mask R-CNN load stays one bounded line.
    names = [f"res{i}_branch2a" for i in range(400)]
    big = W.LoadReport("/a/long/path/" + "x" * 200 + "/mask_rcnn_coco.h5", names, names, names,
                       names, names)
    assert len(repr(big)) < 400 and "\n" not in repr(big) and "res3_branch2a" not in repr(big)

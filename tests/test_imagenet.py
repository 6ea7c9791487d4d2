"""ImageNet initialisation: keras.applications' ResNet-101 file, served from 127.0.0.1 with random
values, converted to matterport's names; the converted backbone computes keras.applications' features."""

import socket

import h5py
import keras
import numpy as np
import pytest

from mrcnn import imagenet
from mrcnn import model as modellib
from mrcnn.weights import save_weights_by_name
from tests.conftest import TinyConfig, local_server

FILE = "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"
# keras.applications' output names of C2..C5 and ours (resnet_graph).
KERAS_C = ["conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"]
OURS_C = ["res2c_out", "res3d_out", "res4w_out", "res5c_out"]


class R101Config(TinyConfig):
    BACKBONE = "resnet101"
    IMAGES_PER_GPU = 1


@pytest.fixture(scope="module")
def keras_resnet():
    """keras.applications.ResNet101 (weights=None) with random weights and BatchNorm statistics.
    A quarter of the channels have variances near 1e-4, where the epsilon (1.001e-5 vs 1e-3)
    matters; their gamma is as small, so that activations stay finite through 33 blocks."""
    model = keras.applications.ResNet101(weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            var = np.where(rng.random(n) < 0.25, 1e-4, 1.0) * rng.uniform(0.5, 2, n)
            layer.set_weights([rng.uniform(0.5, 1.0, n) * np.sqrt(var), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), var])
    return model


@pytest.fixture(scope="module")
def served(keras_resnet, tmp_path_factory):
    """The keras.applications-style file (Keras 2 layout, keras.applications names) on a local server."""
    folder = tmp_path_factory.mktemp("srv")
    save_weights_by_name(keras_resnet, folder / FILE)
    (folder / "garbage.h5").write_bytes(b"<html>not found</html>")
    with local_server(folder) as url:
        yield folder, url


@pytest.fixture(scope="module")
def converted(served, tmp_path_factory):
    """A ResNet-101 MaskRCNN initialised through get_imagenet_weights() from the local server."""
    folder, url = served
    cache = tmp_path_factory.mktemp("keras")
    model = modellib.MaskRCNN("inference", R101Config(), str(tmp_path_factory.mktemp("logs")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(cache))
        path = model.get_imagenet_weights(url=f"{url}/{FILE}")
        report = model.load_weights(path, by_name=True)
        (folder / FILE).rename(folder / "moved.h5")   # a second call finds the converted file
        try:
            again = model.get_imagenet_weights(url=f"{url}/{FILE}")
        finally:
            (folder / "moved.h5").rename(folder / FILE)
    return model, path, report, again, cache


def test_layer_names_map_one_to_one(keras_resnet):
    ours = imagenet.backbone_model("resnet101")
    mapped = [imagenet.matterport_name(layer.name) for layer in keras_resnet.layers if layer.weights]
    assert sorted(mapped) == sorted(layer.name for layer in ours.layers if layer.weights)
    assert len(mapped) == 2 + 33 * 6 + 4 * 2   # conv1 + 33 blocks x 3 conv/bn + 4 shortcut conv/bn
    assert imagenet.matterport_name("conv2_block1_0_conv") == "res2a_branch1"
    assert imagenet.matterport_name("conv4_block23_3_bn") == "bn4w_branch2c"
    assert imagenet.matterport_name("conv1_bn") == "bn_conv1"
    assert imagenet.matterport_name("conv4_block2_out") is None
    assert imagenet.matterport_name("pool1_pad") is None
    for other in ("conv2_blockX_1_conv", "conv2_block0_1_conv", "convX_block1_1_bn", "conv2_block1_4_bn", ""):
        assert imagenet.matterport_name(other) is None, other


def test_get_imagenet_weights_converts_once_into_the_keras_cache(converted):
    model, path, report, again, cache = converted
    assert path == str(cache / "models" / FILE.replace(".h5", "_mrcnn.h5")) == again
    assert (cache / "models" / FILE).exists()     # the download is kept beside it
    # Every backbone layer set, nothing in the file left over; only FPN/RPN/heads keep their values.
    assert report.not_in_model == [] and len(report.loaded) == 2 + 33 * 6 + 4 * 2
    assert all(n.startswith(("fpn_", "rpn_", "mrcnn_")) for n in report.missing_from_file)
    # Plain h5py reads matterport's names in the Keras 2 layout.
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert "res4w_branch2c" in names and "conv1_conv" not in names
        assert [w.decode() for w in f["bn4w_branch2c"].attrs["weight_names"]] == [
            "bn4w_branch2c/gamma:0", "bn4w_branch2c/beta:0",
            "bn4w_branch2c/moving_mean:0", "bn4w_branch2c/moving_variance:0"]


def test_weights_land_by_name_with_batchnorm_epsilon_folded_into_gamma(converted, keras_resnet):
    model = converted[0]
    km = model.keras_model
    conv = km.get_layer("res4w_branch2b").get_weights()
    ref = keras_resnet.get_layer("conv4_block23_2_conv").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(conv, ref))
    (g, b, m, v), (g0, b0, m0, v0) = (km.get_layer("bn3a_branch1").get_weights(),
                                      keras_resnet.get_layer("conv3_block1_0_bn").get_weights())
    assert np.array_equal(b, b0) and np.array_equal(m, m0) and np.array_equal(v, v0)
    np.testing.assert_allclose(g, g0 * np.sqrt(v0 + 1e-3) / np.sqrt(v0 + 1.001e-5), rtol=1e-6)


def features(model, inputs, names, x):
    return [np.asarray(a) for a in keras.Model(inputs, [model.get_layer(n).output for n in names])(x)]


def test_backbone_computes_keras_applications_features(converted, keras_resnet):
    """Exactly the same up to float rounding except for the stem's max pool (see mrcnn.imagenet):
    the stem before it, and everything from the pool output on, given the same input."""
    km = converted[0].keras_model
    image = np.random.default_rng(1).uniform(-120, 130, (1, 128, 128, 3)).astype(np.float32)
    # conv1 -> BN
    (ours,) = features(km, km.inputs[0], ["bn_conv1"], image)
    (theirs,) = features(keras_resnet, keras_resnet.inputs[0], ["conv1_bn"], image)
    measured = {"stem": np.abs(ours - theirs).max() / np.abs(theirs).max()}
    assert measured["stem"] <= 1e-5
    # Stages 2..5 from the same pooled map.
    pooled = np.random.default_rng(2).uniform(0, 3, (1, 32, 32, 64)).astype(np.float32)
    c1 = km.get_layer("res2a_branch2a").input
    ours = features(km, c1, OURS_C, pooled)
    theirs = features(keras_resnet, keras_resnet.get_layer("pool1_pool").output, KERAS_C, pooled)
    for name, a, b in zip(KERAS_C, ours, theirs):
        assert a.shape == b.shape
        measured[f"{name} from pool"] = np.abs(a - b).max() / np.abs(b).max()
        assert measured[f"{name} from pool"] <= 1e-5, name
    # End to end the pool windows sit one conv1 pixel apart: C2..C5 differ, same shapes.
    ours = features(km, km.inputs[0], OURS_C, image)
    theirs = features(keras_resnet, keras_resnet.inputs[0], KERAS_C, image)
    for name, a, b in zip(KERAS_C, ours, theirs):
        measured[f"{name} end to end"] = np.abs(a - b).max() / np.abs(b).max()
        assert a.shape == b.shape and measured[f"{name} end to end"] > 1e-2, name
    print("\nmax |ours - keras.applications| / max |keras.applications|:",
          {k: float(f"{v:.2e}") for k, v in measured.items()})


def test_bad_or_missing_files_are_clear_errors(served, tmp_path, monkeypatch):
    folder, url = served
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # A file that is not keras.applications' ResNet-101: stage 4 cut to 22 blocks.
    cut = folder / "cut.h5"
    with h5py.File(folder / FILE, "r") as src, h5py.File(cut, "w") as dst:
        names = [n for n in src.attrs["layer_names"] if not n.startswith(b"conv4_block23")]
        dst.attrs["layer_names"] = np.array(names)
        for n in names:
            src.copy(src[n.decode()], dst, name=n.decode())
    with pytest.raises(ValueError, match=r"not keras.applications' resnet101 .* 6 backbone layers "
                                         r"not in it \(e.g. \['res4w_branch2a'"):
        imagenet.imagenet_weights("resnet101", url=f"{url}/cut.h5", verbose=0)
    with pytest.raises(ValueError, match="not an HDF5 file"):
        imagenet.imagenet_weights("resnet101", url=f"{url}/garbage.h5", verbose=0)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cut.h5", "garbage.h5"]  # no half conversion
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"copy it to {tmp_path}/models/{FILE}"):
        imagenet.imagenet_weights("resnet101", url=f"http://127.0.0.1:{port}/{FILE}", verbose=0)
    with pytest.raises(RuntimeError, match="Could not download .*unknown url type"):
        imagenet.imagenet_weights("resnet101", url="no-scheme/" + FILE, verbose=0)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cut.h5", "garbage.h5"]  # no partial file
    with pytest.raises(ValueError, match="only 'resnet50' and 'resnet101'"):
        imagenet.imagenet_weights("resnet152")


def test_custom_backbone_has_no_imagenet_weights(converted, monkeypatch):
    model = converted[0]
    monkeypatch.setattr(model.config, "BACKBONE", lambda *a, **k: None)
    with pytest.raises(ValueError, match="custom callable.*backbone='resnet50'"):
        model.get_imagenet_weights()

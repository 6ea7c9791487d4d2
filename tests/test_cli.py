"""The `mrcnn` command line: --help, --config parsing, one-line errors, and train → evaluate →
detect → export end to end on a tiny COCO dataset written here (train and evaluate as
`python -m mrcnn` subprocesses)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.io

from mrcnn import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 64-px lite-backbone model that trains a step in about a second.
TINY = ["--config-class", "samples.shapes.shapes:FastShapesConfig",
        "--config", "NAME=cli", "IMAGE_MIN_DIM=64", "IMAGE_MAX_DIM=64", "POST_NMS_ROIS_TRAINING=64",
        "POST_NMS_ROIS_INFERENCE=32", "TRAIN_ROIS_PER_IMAGE=16", "DETECTION_MIN_CONFIDENCE=0.0"]
IMAGE_IDS = [101, 102, 103, 104, 105, 106]


def write_coco(folder):
    """Six 64x64 PNGs with a square (category 3) and a disk (category 7), as a COCO file."""
    images_dir = os.path.join(folder, "images")
    os.makedirs(images_dir)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in IMAGE_IDS:
        image = np.full((64, 64, 3), 30, np.uint8)
        x, y, s = (int(v) for v in rng.integers(4, 24, 3))
        image[y:y + s, x:x + s] = (220, 40, 40)
        cx, cy, r = int(rng.integers(40, 52)), int(rng.integers(14, 50)), 9
        yy, xx = np.mgrid[:64, :64]
        image[(yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r ** 2] = (40, 200, 60)
        name = f"img_{image_id}.png"
        skimage.io.imsave(os.path.join(images_dir, name), image, check_contrast=False)
        images.append({"id": image_id, "file_name": name, "height": 64, "width": 64})
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        disk = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], -1).ravel().tolist()
        for category, polygon, area in ((3, [x, y, x + s, y, x + s, y + s, x, y + s], s * s),
                                        (7, disk, np.pi * r * r)):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "iscrowd": 0, "area": float(area),
                                "segmentation": [[float(v) for v in polygon]],
                                "bbox": [float(min(polygon[0::2])), float(min(polygon[1::2])),
                                         float(max(polygon[0::2]) - min(polygon[0::2])),
                                         float(max(polygon[1::2]) - min(polygon[1::2]))]})
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "disk"}]}, f)
    return path, images_dir


def run(*args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-m", "mrcnn", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"mrcnn {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: mrcnn")
    assert all(command in out for command in ("train", "evaluate", "detect", "export"))
    for command, options in (("train", ["--dataset", "--format", "--weights", "--layers", "--epochs",
                                        "--config", "--eval-every", "--strategy", "--resume"]),
                             ("evaluate", ["--dataset", "--limit", "--output", "--results"]),
                             ("detect", ["--images", "--dataset", "--output", "--results", "--no-png"]),
                             ("export", ["--weights", "--output"])):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert exit_info.value.code == 0 and all(option in text for option in options), command
    assert cli.main([]) == 2


def test_config_overrides():
    from mrcnn.config import Config
    values = cli.parse_overrides(["IMAGE_MAX_DIM=512", "BACKBONE=resnet50", "MEAN_PIXEL=[1, 2, 3]",
                                  "TRAIN_BN=True", "LEARNING_RATE=1e-3", "MINI_MASK_SHAPE=(28, 28)"],
                                 Config)
    assert values["IMAGE_MAX_DIM"] == 512 and values["BACKBONE"] == "resnet50"
    assert isinstance(values["MEAN_PIXEL"], np.ndarray) and values["MEAN_PIXEL"].tolist() == [1, 2, 3]
    assert values["TRAIN_BN"] is True and values["LEARNING_RATE"] == 0.001
    assert cli.parse_overrides(["TRAIN_BN=None"], Config) == {"TRAIN_BN": None}
    assert values["MINI_MASK_SHAPE"] == (28, 28)
    for item, message in (("IMAGE_MAX_DIMS=64", "Did you mean IMAGE_MAX_DIM"),
                          ("learning_rate=0.1", "Did you mean LEARNING_RATE"),
                          ("FOO=1", "Config has no such setting."),
                          ("IMAGE_MAX_DIM", "expected KEY=VALUE"),
                          ("BATCH_SIZE=4", "computed"),
                          ("IMAGE_MAX_DIM=big", "expected a number"),
                          ("TRAIN_BN=1", "None or True"),
                          ("USE_MINI_MASK=1", "True or False"),
                          ("MEAN_PIXEL=5", "a list")):
        with pytest.raises(cli.UsageError, match=message):
            cli.parse_overrides([item], Config)
    class Args:
        config_class, config = None, ["IMAGE_MAX_DIM=256", "IMAGE_MIN_DIM=256"]
    config = cli.make_config(Args, num_classes=5)
    assert config.NAME == "mrcnn" and config.NUM_CLASSES == 5 and config.BATCH_SIZE == 2
    assert config.IMAGE_SHAPE.tolist() == [256, 256, 3]
    assert cli.config_settings(Args) is cli.config_settings(Args)     # parsed once per command line
    from mrcnn import model as modellib
    assert modellib.inference_config(config, 3).BATCH_SIZE == 3        # what --batch 3 gives


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"")
    assert cli.main(["evaluate", "--dataset", str(tmp_path / "missing.json"), "--format", "coco",
                     "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mrcnn: error: COCO annotation file") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["train", "--dataset", "x.json", "--format", "coco", "--weights", "none",
                     "--config", "IMAGE_MAX_DIMS=64"]) == 2
    assert "Did you mean IMAGE_MAX_DIM or" in capsys.readouterr().err
    assert cli.main(["detect", "--weights", str(tmp_path / "none.h5"), "--images", str(tmp_path)]) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", "x.json", "--weights", "imagenet", "--format", "coco"]) == 2
    assert "no trained heads" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="Train first"):
        cli.main(["evaluate", "--dataset", "x.json", "--format", "coco", "--logs", str(tmp_path), "--debug"])


@pytest.mark.large
def test_train_evaluate_detect_export(tmp_path):
    annotations, images_dir = write_coco(str(tmp_path))
    logs = str(tmp_path / "logs")
    data = ["--dataset", annotations, "--image-dir", images_dir, "--format", "coco", "--logs", logs]
    out = run("train", *data, "--val-dataset", annotations, "--val-image-dir", images_dir,
              "--weights", "none", "--layers", "all",
              "--epochs", "1", "--eval-every", "1", "--eval-limit", "2", "--workers", "1", *TINY,
              "STEPS_PER_EPOCH=2", "IMAGES_PER_GPU=2", "VALIDATION_STEPS=0")
    assert "6 images, 2 classes (square, disk)" in out and "val_segm_AP" in out
    checkpoints = sorted(f for _, _, files in os.walk(logs) for f in files if f.endswith(".h5"))
    assert checkpoints == ["mask_rcnn_cli_0001.h5", "mask_rcnn_cli_0001.state.h5"]

    metrics_path, results_path = str(tmp_path / "metrics.json"), str(tmp_path / "results.json")
    out = run("evaluate", *data, "--output", metrics_path, "--results", results_path, *TINY)
    table = out[out.index("    AP   AP50"):].splitlines()
    assert table[1].startswith("bbox") and table[2].startswith("segm") and len(table[1].split()) == 13
    metrics = json.load(open(metrics_path))
    assert set(metrics["segm"]) == set(metrics["bbox"]) == set(
        ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"])
    assert all(-1 <= v <= 1 for v in metrics["segm"].values()) and metrics["images"] == 6
    for record in json.load(open(results_path)):
        assert record["image_id"] in IMAGE_IDS and record["category_id"] in (3, 7)
        assert isinstance(record["segmentation"]["counts"], str) and len(record["bbox"]) == 4

    # detect and export in this process (TensorFlow is loaded already): the same main().
    pngs, detections = str(tmp_path / "pngs"), str(tmp_path / "detections.json")
    assert cli.main(["detect", "--images", images_dir, "--logs", logs, "--output", pngs,
                     "--results", detections, *TINY]) == 0
    assert sorted(os.listdir(pngs)) == [f"img_{i}.png" for i in IMAGE_IDS]
    for record in json.load(open(detections)):
        assert record["category_id"] in (1, 2) and record["file_name"].startswith(images_dir)

    exported = str(tmp_path / "exported")
    assert cli.main(["export", "--logs", logs, "--output", exported, *TINY]) == 0
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))


@pytest.mark.large
def test_train_weights_coco_downloads_and_drops_the_class_heads_and_exclude_drops_more(tmp_path, monkeypatch, capsys):
    """`--weights coco` fetches the file into the Keras cache (here from 127.0.0.1), and for a
    dataset with other classes than COCO's 81 leaves out the class-specific heads; `--exclude`
    leaves out the layers it names. With --layers heads the backbone does not train, so the
    checkpoint shows what was loaded: the file's values except in the excluded layer."""
    from mrcnn import model as modellib
    from mrcnn import utils
    from mrcnn.weights import save_weights_by_name
    from samples.shapes.shapes import FastShapesConfig
    from tests.conftest import local_server

    overrides = dict(item.split("=") for item in TINY[TINY.index("--config") + 1:])

    class Coco(FastShapesConfig):
        NAME, NUM_CLASSES, IMAGES_PER_GPU = "coco", 81, 1
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = int(overrides["IMAGE_MAX_DIM"])

    coco = modellib.MaskRCNN("inference", Coco(), str(tmp_path / "unused"))
    (tmp_path / "srv").mkdir()
    save_weights_by_name(coco.keras_model, tmp_path / "srv" / "mask_rcnn_coco.h5")
    served = dict(read_values(tmp_path / "srv" / "mask_rcnn_coco.h5"))

    annotations, images_dir = write_coco(str(tmp_path))
    logs = str(tmp_path / "logs")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with local_server(tmp_path / "srv") as url:
        download = utils.download_trained_weights
        monkeypatch.setattr(utils, "download_trained_weights",
                            lambda path, verbose=1: download(path, verbose, url=f"{url}/mask_rcnn_coco.h5"))
        assert cli.main(["train", "--dataset", annotations, "--image-dir", images_dir, "--format", "coco",
                         "--logs", logs, "--weights", "coco", "--exclude", "lite_c3b_conv",
                         "--layers", "heads", "--epochs", "1", "--workers", "1", *TINY,
                         "STEPS_PER_EPOCH=1", "IMAGES_PER_GPU=2", "VALIDATION_STEPS=0"]) == 0
    out = capsys.readouterr().out
    cached = tmp_path / "keras" / "models" / "mask_rcnn_coco.h5"
    assert cached.read_bytes() == (tmp_path / "srv" / "mask_rcnn_coco.h5").read_bytes()
    assert f"Loading weights {cached} (excluding lite_c3b_conv, heads_for_new_classes)" in out

    (checkpoint,) = [os.path.join(d, f) for d, _, fs in os.walk(logs) for f in fs
                     if f.endswith(".h5") and not f.endswith(".state.h5")]
    trained = dict(read_values(checkpoint))
    assert [w.shape for w in trained["mrcnn_class_logits"]] == [(256, 3), (3,)]   # 3 classes, not 81
    for name in ("lite_c1a_conv", "lite_c3a_conv", "lite_c3a_bn", "lite_c4b_conv"):
        assert all(np.array_equal(a, b) for a, b in zip(trained[name], served[name])), name
    assert not np.array_equal(trained["lite_c3b_conv"][0], served["lite_c3b_conv"][0])


@pytest.mark.large
def test_train_resume_continues_from_the_newest_checkpoint_and_skips_weights(tmp_path, capsys):
    """--resume without a checkpoint starts from --weights; with one, it continues from it
    (epoch count, run folder) and does not load --weights (here a file that does not exist)."""
    annotations, images_dir = write_coco(str(tmp_path))
    logs = str(tmp_path / "logs")
    train = ["train", "--dataset", annotations, "--image-dir", images_dir, "--format", "coco",
             "--logs", logs, "--layers", "heads", "--workers", "1", "--resume", "--strategy",
             "none", *TINY, "STEPS_PER_EPOCH=1", "VALIDATION_STEPS=0"]
    assert cli.main(train + ["--weights", "none", "--epochs", "1"]) == 0
    assert f"--resume: no checkpoint under {logs} yet; starting from --weights none" in \
        capsys.readouterr().out
    assert cli.main(train + ["--weights", str(tmp_path / "missing.h5"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "Re-starting from epoch 1" in out and "Loading weights" not in out
    (run_dir,) = os.listdir(logs)
    assert sorted(os.listdir(os.path.join(logs, run_dir)))[:4] == [
        "mask_rcnn_cli_0001.h5", "mask_rcnn_cli_0001.state.h5",
        "mask_rcnn_cli_0002.h5", "mask_rcnn_cli_0002.state.h5"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--strategy", "gpus"])
    assert "invalid choice: 'gpus'" in capsys.readouterr().err


def read_values(path):
    """[(layer name, [arrays])] of a Keras-2-layout weights file."""
    import h5py
    with h5py.File(path, "r") as f:
        return [(name.decode(), [f[name.decode()][w][()] for w in f[name.decode()].attrs["weight_names"]])
                for name in f.attrs["layer_names"]]

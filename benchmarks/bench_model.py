"""Latency and peak memory of detect() and of one training step; prints JSON lines.

    python benchmarks/bench_model.py                 # every case, each in its own process
    python benchmarks/bench_model.py --case detect_r50_1024 [--repeat 5] [--threads N]
        [--precision None|mixed_bfloat16|mixed_float16] [--xla]

Cases (random weights; the work is fixed by DETECTION_MIN_CONFIDENCE 0 and, as torchvision
scores, DETECTION_CLASS_MODE "per_class": every image gets DETECTION_MAX_INSTANCES detections):
  detect_r50_128, detect_r50_1024, detect_r101_1024: one image per detect() call;
  detect_r50_8x128: 8 images in one call (BATCH_SIZE 8). First call (trace + run) and
  steady state (median of --repeat).
  train_r50_8x128, train_r50_2x1024: one SGD step on the shapes sample's images
  (samples/shapes); benchmarks/bench_pipeline.py measures the input pipeline beside it.
Each case runs in a fresh process so its peak RSS (ru_maxrss) is its own. TensorFlow runs
with --threads intra-op and inter-op threads (default: the CPU count). --precision sets
Config.MIXED_PRECISION (default None: float32); the line records it and TF_ENABLE_ONEDNN_OPTS.
--xla sets Config.XLA (the backbone, FPN and RPN head compiled with XLA; see mrcnn.xla).
benchmarks/peer_torchvision.py runs the same cases on torchvision, and both side by side.
Module level imports the standard library only: peer_torchvision.py imports this file's
helpers in its own venv, which has no TensorFlow.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CASES = ["detect_r50_128", "detect_r50_8x128", "detect_r50_1024", "detect_r101_1024",
         "train_r50_8x128", "train_r50_2x1024"]
BACKBONES = {"r50": "resnet50", "r101": "resnet101"}


def case_name(case):
    """argparse type: a case name that parse_case understands."""
    try:
        kind, _, _, _ = parse_case(case)
        if kind not in ("detect", "train"):
            raise ValueError(kind)
    except (ValueError, KeyError) as error:
        raise argparse.ArgumentTypeError(
            f"{case!r} is not a case: use detect|train, r50|r101 and [BATCHx]SIZE, "
            f"e.g. {CASES[1]}") from error
    return case


def parse_case(case):
    """"detect_r50_8x128" -> ("detect", "resnet50", 8, 128); a bare size means one image."""
    kind, backbone, shape = case.split("_")
    batch, size = shape.split("x") if "x" in shape else (1, shape)
    return kind, BACKBONES[backbone], int(batch), int(size)


def make_config(backbone, size, batch, mode, precision=None, xla=False):
    from mrcnn.config import Config

    class BenchConfig(Config):
        NAME = "bench"
        MIXED_PRECISION = precision
        XLA = xla
        BACKBONE = backbone
        IMAGES_PER_GPU = batch
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = size
        DETECTION_MIN_CONFIDENCE = 0.0
        DETECTION_CLASS_MODE = "per_class"
        STEPS_PER_EPOCH = 1
        if size <= 128:  # matterport's shapes sample
            RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
            TRAIN_ROIS_PER_IMAGE = 32
            POST_NMS_ROIS_INFERENCE = 1000 if mode == "inference" else 2000
    return BenchConfig()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def environment(threads):
    """The fields both sides record about the machine and the run."""
    return {"threads": threads, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_detect(backbone, size, batch, repeat, precision, xla):
    import numpy as np
    from mrcnn import model as modellib

    config = make_config(backbone, size, batch, "inference", precision, xla)
    t0 = time.perf_counter()
    model = modellib.MaskRCNN("inference", config, "/tmp/mrcnn-bench")
    build_s = time.perf_counter() - t0
    images = list(np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    results = model.detect(images)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.detect(images)
        times.append(time.perf_counter() - t0)
    return {"build_s": round(build_s, 3), "first_call_s": round(first_s, 3),
            "steady_min_s": round(min(times), 3), "steady_median_s": round(statistics.median(times), 3),
            "images": batch, "proposals": config.POST_NMS_ROIS_INFERENCE,
            "detections": config.DETECTION_MAX_INSTANCES,
            "detections_returned_mean": float(np.mean([len(r["class_ids"]) for r in results]))}


def run_train(size, batch, repeat, precision, xla):
    from mrcnn import model as modellib
    from mrcnn.pipeline import training_dataset
    from samples.shapes.shapes import make_dataset

    config = make_config("resnet50", size, batch, "training", precision, xla)
    ds = make_dataset(batch * (repeat + 1), config, seed=0)
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn-bench")
    model.set_trainable(".*", verbose=0)
    model.compile(config.LEARNING_RATE, config.LEARNING_MOMENTUM)
    pipeline = iter(training_dataset(ds, config, shuffle=False, steps=repeat + 1, workers=1))
    prep, batches = [], []
    for _ in range(repeat + 1):   # one loading thread, run ahead of nothing: its own cost
        t0 = time.perf_counter()
        batches.append(next(pipeline))
        prep.append(time.perf_counter() - t0)
    km = model.keras_model
    t0 = time.perf_counter()
    km.train_on_batch(batches[0])
    first_s = time.perf_counter() - t0
    times = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        km.train_on_batch(b)
        times.append(time.perf_counter() - t0)
    return {"first_step_s": round(first_s, 3), "step_min_s": round(min(times), 3),
            "step_median_s": round(statistics.median(times), 3),
            "data_prep_per_batch_median_s": round(statistics.median(prep), 3),
            "batch": batch, "image": size, "rois_per_image": config.TRAIN_ROIS_PER_IMAGE}


def run_case(case, repeat, threads, precision=None, xla=False):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    kind, backbone, batch, size = parse_case(case)
    if kind == "detect":
        result = run_detect(backbone, size, batch, repeat, precision, xla)
    else:
        result = run_train(size, batch, repeat, precision, xla)
    return {"case": case, "precision": precision or "float32", "xla": xla, **result,
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
            "peak_rss_mb": round(peak_rss_mb()), "tf": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU")), **environment(threads)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=case_name,
                        help=f"one of {CASES} or another KIND_BACKBONE_[BATCHx]SIZE, e.g. "
                             "train_r50_8x1024 (a GPU's batch)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="TensorFlow intra-op and inter-op threads (default: the CPU count)")
    parser.add_argument("--precision", choices=["None", "mixed_bfloat16", "mixed_float16"],
                        default="None", help="Config.MIXED_PRECISION (default None: float32)")
    parser.add_argument("--xla", action="store_true", help="Config.XLA = True")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.case:
        precision = None if args.precision == "None" else args.precision
        print(json.dumps(run_case(args.case, args.repeat, args.threads, precision, args.xla)),
              flush=True)
        return
    for case in CASES:
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--repeat", str(args.repeat),
                               "--threads", str(args.threads), "--precision", args.precision]
                              + ["--xla"] * args.xla,
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else json.dumps({"case": case, "error": proc.stderr.strip()[-800:]}),
              flush=True)


if __name__ == "__main__":
    main()

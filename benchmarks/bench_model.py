"""Latency and peak memory of detect() and of one training step; prints JSON lines.

    python benchmarks/bench_model.py                 # every case, each in its own process
    python benchmarks/bench_model.py --case detect_r50_1024

Cases (random weights; the work is fixed by DETECTION_MIN_CONFIDENCE 0):
  detect_{r50,r101}_{1024,128}: first call (trace + run) and steady state (median of --repeat)
  train_r50_8x128, train_r50_2x1024: one SGD step on the shapes-like data, and the time
  data preparation takes per batch, side by side.
Each case runs in a fresh process so its peak RSS (ru_maxrss) is its own.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CASES = ["detect_r50_128", "detect_r50_1024", "detect_r101_1024", "train_r50_8x128", "train_r50_2x1024"]


def make_config(backbone, size, batch, mode):
    from mrcnn.config import Config

    class BenchConfig(Config):
        NAME = "bench"
        BACKBONE = backbone
        IMAGES_PER_GPU = batch
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = size
        DETECTION_MIN_CONFIDENCE = 0.0
        STEPS_PER_EPOCH = 1
        if size <= 128:  # matterport's shapes sample
            RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
            TRAIN_ROIS_PER_IMAGE = 32
            POST_NMS_ROIS_INFERENCE = 1000 if mode == "inference" else 2000
    return BenchConfig()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_detect(backbone, size, repeat):
    import numpy as np
    from mrcnn import model as modellib

    config = make_config(backbone, size, 1, "inference")
    t0 = time.perf_counter()
    model = modellib.MaskRCNN("inference", config, "/tmp/mrcnn-bench")
    build_s = time.perf_counter() - t0
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    model.detect([image])
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.detect([image])
        times.append(time.perf_counter() - t0)
    return {"build_s": round(build_s, 3), "first_call_s": round(first_s, 3),
            "steady_min_s": round(min(times), 3), "steady_median_s": round(statistics.median(times), 3),
            "proposals": config.POST_NMS_ROIS_INFERENCE, "detections": config.DETECTION_MAX_INSTANCES}


def run_train(size, batch, repeat):
    import numpy as np
    from mrcnn import model as modellib
    from mrcnn.data import MaskRCNNSequence
    from tests.conftest import TinyShapes

    config = make_config("resnet50", size, batch, "training")
    ds = TinyShapes()
    ds.load_shapes(batch * (repeat + 2), seed=0, size=size)
    ds.prepare()
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn-bench")
    model.set_trainable(".*", verbose=0)
    model.compile(config.LEARNING_RATE, config.LEARNING_MOMENTUM)
    seq = MaskRCNNSequence(ds, config, shuffle=False)
    prep = []
    batches = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        batches.append(seq[i])
        prep.append(time.perf_counter() - t0)
    km = model.keras_model
    t0 = time.perf_counter()
    km.train_on_batch(*_fit_args(batches[0]))
    first_s = time.perf_counter() - t0
    times = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        km.train_on_batch(*_fit_args(b))
        times.append(time.perf_counter() - t0)
    return {"first_step_s": round(first_s, 3), "step_min_s": round(min(times), 3),
            "step_median_s": round(statistics.median(times), 3),
            "data_prep_per_batch_median_s": round(statistics.median(prep), 3),
            "batch": batch, "image": size, "rois_per_image": config.TRAIN_ROIS_PER_IMAGE}


def _fit_args(batch):
    """PyDataset items are (inputs,) or inputs; train_on_batch takes x."""
    return (batch[0],) if isinstance(batch, tuple) and len(batch) == 1 else (batch,)


def run_case(case, repeat):
    kind, backbone, shape = case.split("_")
    if kind == "detect":
        result = run_detect({"r50": "resnet50", "r101": "resnet101"}[backbone], int(shape), repeat)
    else:
        batch, size = (int(v) for v in shape.split("x"))
        result = run_train(size, batch, repeat)
    import tensorflow as tf
    return {"case": case, **result, "peak_rss_mb": round(peak_rss_mb()),
            "tf": tf.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.case:
        print(json.dumps(run_case(args.case, args.repeat)), flush=True)
        return
    for case in CASES:
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--repeat", str(args.repeat)],
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else json.dumps({"case": case, "error": proc.stderr.strip()[-800:]}),
              flush=True)


if __name__ == "__main__":
    main()

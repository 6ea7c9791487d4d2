"""RoIAlign grids side by side: matterport's (crop_and_resize, with the border
fix), the same with 2x2 samples, and the aligned grid; prints JSON lines.

    python benchmarks/bench_roi_align.py [--repeat 20]

Per grid, on the shapes sample's FastShapesConfig (lite backbone, 8 x 128 px):
  pool:  PyramidROIAlign forward + backward over 8 x 500 RoIs, 64 channels
         (the training classifier head's input), median of --repeat;
  train: one training step of the whole model (Adam), median of --repeat,
         all grids built and timed in this one process, interleaved.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_model import cpu_model  # noqa: E402  (stdlib only; this folder is on sys.path)

GRIDS = {"matterport": (False, 1), "matterport_x2": (False, 2), "aligned_x2": (True, 2)}


def median_time(fn, repeat):
    fn()  # trace
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from mrcnn import model as modellib
    from mrcnn.image_meta import compose_image_meta
    from mrcnn.pipeline import training_dataset
    from mrcnn.roi_heads import PyramidROIAlign
    from samples.shapes.shapes import FastShapesConfig, make_dataset, TRAIN_SEED

    rng = np.random.default_rng(0)
    corners = rng.random((8, 500, 2, 2)).astype(np.float32)
    boxes = np.concatenate([corners.min(2), corners.max(2)], -1)
    maps = [tf.constant(rng.random((8, s, s, 64)).astype(np.float32)) for s in (32, 16, 8, 4)]
    meta = np.stack([compose_image_meta(0, (128, 128, 3), (128, 128, 3), (0, 0, 128, 128), 1.0,
                                        [1] * 4)] * 8).astype(np.float32)
    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "tensorflow": tf.__version__}

    for name, (aligned, ratio) in GRIDS.items():
        layer = PyramidROIAlign([7, 7], aligned, ratio)

        @tf.function
        def pool_step(boxes, meta, maps):   # arguments, not constants Grappler could fold
            with tf.GradientTape() as tape:
                tape.watch(maps)
                total = tf.reduce_sum(layer([boxes, meta] + maps))
            return tape.gradient(total, maps, unconnected_gradients="zero")

        def run():
            return [g.numpy() for g in pool_step(tf.constant(boxes), tf.constant(meta), maps)]

        print(json.dumps({"case": "pool", "grid": name, "median_s": round(median_time(run, args.repeat), 5),
                          **env}), flush=True)

    models = {}
    for name, (aligned, ratio) in GRIDS.items():
        config = type("Bench", (FastShapesConfig,), {"ROI_ALIGN_ALIGNED": aligned,
                                                     "ROI_ALIGN_SAMPLING_RATIO": ratio,
                                                     "SEED": 0})()
        model = modellib.MaskRCNN("training", config, "/tmp/mrcnn-bench")
        model.compile(1e-4, config.LEARNING_MOMENTUM)
        batch = next(iter(training_dataset(make_dataset(16, config, TRAIN_SEED), config, seed=0)))
        models[name] = (model.keras_model, batch)
    times = {name: [] for name in models}
    for keras_model, batch in models.values():
        keras_model.train_on_batch(batch)  # trace
    for _ in range(args.repeat):
        for name, (keras_model, batch) in models.items():
            t0 = time.perf_counter()
            keras_model.train_on_batch(batch)
            times[name].append(time.perf_counter() - t0)
    for name, values in times.items():
        print(json.dumps({"case": "train_step_8x128", "grid": name,
                          "median_s": round(statistics.median(values), 4), **env}), flush=True)


if __name__ == "__main__":
    main()

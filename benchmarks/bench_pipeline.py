"""Does the input pipeline keep up with the train step? Prints JSON lines, then a table.

    python benchmarks/bench_pipeline.py [--configs 8x128 2x1024] [--workers 1 2 4] [--batches 12]
        [--steps 4] [--precision None|mixed_bfloat16|mixed_float16]

Per config (the shapes sample's images, ResNet-50, as bench_model's train cases): the
batches/s `mrcnn.pipeline.training_dataset` delivers alone with 1, 2 and 4 loading
threads, the batches/s of the train step on ready batches (1 / median step time), their
ratio, and the batches/s of `fit` fed by the pipeline (2 threads), where both share the
machine. Target (issue 12): the pipeline delivers >= 4x what the step consumes at 128
px and >= 2x at 1024 px, so a step that is 4x / 2x faster (a GPU's) is not data-bound.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_model import cpu_model, make_config  # noqa: E402

TARGETS = {128: 4.0, 1024: 2.0}


def pipeline_rate(dataset, config, workers, batches):
    """Batches per second over `batches` batches, after two to start the threads."""
    from mrcnn.pipeline import training_dataset
    it = iter(training_dataset(dataset, config, steps=1000, workers=workers, seed=0))
    next(it), next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def step_rates(dataset, config, steps):
    """(train step batches/s on ready batches, fit batches/s fed by the pipeline)."""
    from mrcnn import model as modellib
    from mrcnn.pipeline import training_dataset
    model = modellib.MaskRCNN("training", config, "/tmp/mrcnn-bench")
    model.set_trainable(".*", verbose=0)
    model.compile(config.LEARNING_RATE, config.LEARNING_MOMENTUM)
    km = model.keras_model
    batches = list(training_dataset(dataset, config, steps=steps + 1, seed=1).take(steps + 1))
    km.train_on_batch(batches[0])                              # trace
    times = []
    for batch in batches[1:]:
        t0 = time.perf_counter()
        km.train_on_batch(batch)
        times.append(time.perf_counter() - t0)
    feed = training_dataset(dataset, config, steps=steps, workers=2, seed=2)
    km.fit(feed, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)   # trace fit's function
    t0 = time.perf_counter()
    km.fit(feed, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return 1 / statistics.median(times), steps / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["8x128", "2x1024"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--batches", type=int, default=12, help="pipeline batches timed")
    parser.add_argument("--steps", type=int, default=4, help="train steps timed")
    parser.add_argument("--precision", choices=["None", "mixed_bfloat16", "mixed_float16"],
                        default="None", help="Config.MIXED_PRECISION of the train step")
    args = parser.parse_args()
    from samples.shapes.shapes import make_dataset

    rows = []
    for name in args.configs:
        batch, size = (int(v) for v in name.split("x"))
        config = make_config("resnet50", size, batch, "training",
                             None if args.precision == "None" else args.precision)
        dataset = make_dataset(64, config, seed=0)
        step, fed = step_rates(dataset, config, args.steps)
        for workers in args.workers:
            rate = pipeline_rate(dataset, config, workers, args.batches)
            row = {"config": name, "workers": workers, "pipeline_batches_per_s": round(rate, 3),
                   "step_batches_per_s": round(step, 3), "ratio": round(rate / step, 2),
                   "target_ratio": TARGETS.get(size), "fit_fed_batches_per_s": round(fed, 3),
                   "precision": args.precision,
                   "cpu_model": cpu_model(), "cpu_count": os.cpu_count()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| config | workers | pipeline batches/s | step batches/s | ratio (target) | "
          "fit fed batches/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['workers']} | {r['pipeline_batches_per_s']} | "
              f"{r['step_batches_per_s']} | {r['ratio']} (>= {r['target_ratio']}) | "
              f"{r['fit_fed_batches_per_s']} |")


if __name__ == "__main__":
    main()

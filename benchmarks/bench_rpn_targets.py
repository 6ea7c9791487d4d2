"""targets.build_rpn_targets: the full [anchors, boxes] IoU matrix it used ("old", the
reference copy in tests/test_rpn_targets.py) against the pairs-that-matter version ("new");
prints one JSON line per case, old and new side by side.

    python benchmarks/bench_rpn_targets.py [--repeat 3] [--images 5] [--case defaults_1024_gt20]

Milliseconds per call (one training image), median and min over --images box sets x
--repeat, old and new interleaved call by call with the same np.random seed; "same" says
whether every call gave the same rpn_match and rpn_bbox bit for bit. Cases:
  defaults_1024_gtN: matterport's defaults, 1024 x 1024, 261,888 anchors (scales 32-512),
      RPN_TRAIN_ANCHORS_PER_IMAGE 256; N GT boxes of COCO-like sizes: sqrt(area)
      log-uniform in 8-600 px (43 / 25 / 31 % small / medium / large, COCO's 41 / 34 / 24
      at this scale), aspect 1/3-3, anywhere in the image;
  shapes_128_gtN: samples/shapes' anchors, 128 x 128, 4,092 anchors (scales 8-128),
      256 per image; N squares-like boxes of 20-60 px.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_model import cpu_model  # noqa: E402  (stdlib only; this folder is on sys.path)

CASES = {**{f"defaults_1024_gt{n}": ("defaults", n) for n in (1, 5, 20, 100)},
         **{f"shapes_128_gt{n}": ("shapes", n) for n in (1, 2, 4)}}


def make_boxes(rng, kind, n, size):
    import numpy as np
    if kind == "defaults":
        side = np.exp(rng.uniform(np.log(8), np.log(600), n))
        aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
        h = np.minimum(np.round(side / np.sqrt(aspect)), size)
        w = np.minimum(np.round(side * np.sqrt(aspect)), size)
    else:
        h = w = rng.integers(20, 61, n)
    y1 = rng.integers(0, size - h + 1)
    x1 = rng.integers(0, size - w + 1)
    return np.stack([y1, x1, y1 + h, x1 + w], axis=1).astype(np.int32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--case", choices=list(CASES), action="append")
    args = parser.parse_args()

    import numpy as np
    from mrcnn import geometry, targets
    from tests.test_rpn_targets import Defaults1024, Shapes128, reference_build_rpn_targets

    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "numpy": np.__version__}
    configs = {"defaults": Defaults1024(), "shapes": Shapes128()}
    fns = {"old": reference_build_rpn_targets, "new": targets.build_rpn_targets}
    for case in args.case or list(CASES):
        kind, n = CASES[case]
        config = configs[kind]
        anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
        rng = np.random.default_rng(n)
        images = [make_boxes(rng, kind, n, config.IMAGE_SHAPE[0]) for _ in range(args.images)]
        class_ids = np.ones(n, np.int32)
        times = {name: [] for name in fns}
        same = True
        for seed in range(args.repeat):
            for boxes in images:
                out = {}
                for name, fn in fns.items():
                    np.random.seed(seed)
                    t0 = time.perf_counter()
                    out[name] = fn(config.IMAGE_SHAPE, anchors, class_ids, boxes, config)
                    times[name].append(time.perf_counter() - t0)
                same &= all(np.array_equal(a, b) for a, b in zip(out["old"], out["new"]))
        old, new = (statistics.median(times[k]) * 1000 for k in ("old", "new"))
        print(json.dumps({"case": case, "anchors": len(anchors), "gt_boxes": n,
                          "old_ms": round(old, 2), "new_ms": round(new, 2),
                          "old_min_ms": round(min(times["old"]) * 1000, 2),
                          "new_min_ms": round(min(times["new"]) * 1000, 2),
                          "speedup": round(old / new, 1), "same": bool(same),
                          "calls": len(times["new"]), **env}), flush=True)


if __name__ == "__main__":
    main()

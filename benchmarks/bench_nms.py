"""NMS in ProposalLayer and DetectionLayer: the former tf.map_fn of
tf.image.non_max_suppression (per image; per image and class) against the
layers' one combined NMS (tf_ops.ranked_nms); prints JSON lines.

    python benchmarks/bench_nms.py [--repeat 9]

Each case times the whole layer call inside a tf.function (inputs passed as
arguments), old and new interleaved, median of --repeat after a tracing call,
and says whether both gave the same output bit for bit.
  proposals: the anchor pyramid of the image size (RPN_ANCHOR_SCALES 8-128 at
             128 px, 32-512 at 1024 px), random RPN logits and small deltas;
             batch x min(anchors, PRE_NMS_LIMIT 6000) -> proposal_count, IoU 0.7.
  detections: random RoIs, peaked softmax class probabilities (a random class
             per RoI favoured), deltas, IoU 0.3, DETECTION_MAX_INSTANCES 100;
             "argmax" at DETECTION_MIN_CONFIDENCE 0.7 (matterport's defaults) and
             "per_class" at 0.05. NUM_CLASSES counts the background.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_model import cpu_model  # noqa: E402  (stdlib only; this folder is on sys.path)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mrcnn.geometry import anchor_params, normalized_anchors  # noqa: E402
from mrcnn.image_meta import compose_image_meta  # noqa: E402
from mrcnn.roi_heads import DetectionLayer  # noqa: E402
from mrcnn.rpn import ProposalLayer  # noqa: E402
# The former implementations (commit a189d66), which the tests hold the layers equal to.
from tests.test_nms import reference_detections, reference_proposals  # noqa: E402

STD = [0.1, 0.1, 0.2, 0.2]
PROPOSALS = [  # name, batch, image size, anchor scales, proposal_count
    ("train_8x128", 8, 128, (8, 16, 32, 64, 128), 2000),
    ("detect_1x1024", 1, 1024, (32, 64, 128, 256, 512), 1000),
    ("train_2x1024", 2, 1024, (32, 64, 128, 256, 512), 2000),
]
DETECTIONS = [  # name, batch, RoIs, NUM_CLASSES
    ("coco_1x1000x81", 1, 1000, 81),
    ("shapes_8x1000x4", 8, 1000, 4),
]


# Inputs.

def proposal_inputs(rng, batch, size, scales):
    strides = [4, 8, 16, 32, 64]
    shapes = np.array([[int(np.ceil(size / s))] * 2 for s in strides])
    anchors = normalized_anchors(anchor_params(scales, [0.5, 1, 2], shapes, strides, 1), (size, size))
    anchors = np.broadcast_to(anchors, (batch,) + anchors.shape)
    logits = rng.normal(size=(batch, len(anchors[0]), 2)) * 2
    probs = tf.nn.softmax(logits).numpy()
    deltas = rng.normal(size=(batch, len(anchors[0]), 4)) * 0.5
    return [tf.constant(x, tf.float32) for x in (probs, deltas, anchors)]


def detection_inputs(rng, batch, n, classes):
    corners = rng.uniform(0, 1, (batch, n, 2, 2))
    rois = np.concatenate([corners.min(2), corners.max(2)], -1)
    logits = rng.normal(size=(batch, n, classes))
    logits[np.arange(batch)[:, None], np.arange(n), rng.integers(0, classes, (batch, n))] += 5
    probs = tf.nn.softmax(logits).numpy()
    deltas = rng.normal(size=(batch, n, classes, 4)) * 0.3
    meta = np.stack([compose_image_meta(0, (1024, 1024, 3), (1024, 1024, 3), (0, 0, 1024, 1024), 1.0,
                                        [1] * classes)] * batch)
    return [tf.constant(x, tf.float32) for x in (rois, probs, deltas, meta)]


def compare(old, new, inputs, repeat):
    """Median seconds of old and new (interleaved), and whether their outputs are equal."""
    equal = bool(np.array_equal(old(*inputs).numpy(), new(*inputs).numpy()))   # also traces
    times = {"old": [], "new": []}
    for _ in range(repeat):
        for name, fn in (("old", old), ("new", new)):
            t0 = time.perf_counter()
            fn(*inputs).numpy()
            times[name].append(time.perf_counter() - t0)
    return {f"{name}_median_s": round(statistics.median(v), 5) for name, v in times.items()}, equal


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
           "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""), "repeat": args.repeat}
    rng = np.random.default_rng(0)

    for name, batch, size, scales, count in PROPOSALS:
        inputs = proposal_inputs(rng, batch, size, scales)
        layer = ProposalLayer(count, 0.7, pre_nms_limit=6000, rpn_bbox_std_dev=STD)
        old = tf.function(lambda *x: reference_proposals(*x, count, 0.7, 6000))
        new = tf.function(lambda *x: layer(list(x)))
        times, equal = compare(old, new, inputs, args.repeat)
        pre_nms = min(6000, inputs[2].shape[1])
        print(json.dumps({"layer": "ProposalLayer", "case": name,
                          "size": f"{batch}x{pre_nms}->{count}", **times,
                          "speedup": round(times["old_median_s"] / times["new_median_s"], 2),
                          "equal": equal, **env}), flush=True)

    for name, batch, n, classes in DETECTIONS:
        inputs = detection_inputs(rng, batch, n, classes)
        for mode, confidence in (("argmax", 0.7), ("per_class", 0.05)):
            layer = DetectionLayer(bbox_std_dev=STD, detection_min_confidence=confidence,
                                   detection_max_instances=100, detection_nms_threshold=0.3,
                                   detection_class_mode=mode)
            old = tf.function(lambda *x: reference_detections(x, mode, confidence, 100, 0.3))
            new = tf.function(lambda *x: layer(list(x)))
            times, equal = compare(old, new, inputs, args.repeat)
            print(json.dumps({"layer": "DetectionLayer", "case": name, "mode": mode,
                              "min_confidence": confidence,
                              "size": f"{batch}x{n} RoIs x {classes - 1} classes -> 100", **times,
                              "speedup": round(times["old_median_s"] / times["new_median_s"], 2),
                              "equal": equal, **env}), flush=True)


if __name__ == "__main__":
    main()

"""DetectionTargetLayer: the per-image tf.map_fn version it replaced ("old",
copied below) against the batch-vectorised one ("new"); prints JSON lines.

    python benchmarks/bench_targets.py [--repeat 20] [--case shapes_8x2000x10]

Time per call inside one tf.function (inputs as arguments), median and min
of --repeat, old and new interleaved. Cases (2000 proposals per image, a
quarter of them jittered copies of the GT, 56 x 56 mini-masks, 28 x 28 targets):
  shapes_8x2000x10:   8 images, up to 10 GT, TRAIN_ROIS_PER_IMAGE 32 (128-px shapes training);
  defaults_2x2000x100: 2 images, up to 100 GT, TRAIN_ROIS_PER_IMAGE 200 (1024-px defaults).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_model import cpu_model  # noqa: E402  (stdlib only; this folder is on sys.path)

CASES = {"shapes_8x2000x10": (8, 2000, 10, 32), "defaults_2x2000x100": (2, 2000, 100, 200)}


def old_layer_class():
    """DetectionTargetLayer as it was before vectorising: tf.map_fn over the
    images, trimming with boolean_mask, tf.random.shuffle, one roi_align per image."""
    import tensorflow as tf
    from mrcnn.geometry import box_refinement_graph, overlaps_graph
    from mrcnn.tf_ops import trim_zeros_graph
    from mrcnn.roi_align import roi_align
    from mrcnn.roi_heads import DetectionTargetLayer

    class OldDetectionTargetLayer(DetectionTargetLayer):
        def call(self, inputs):
            proposals, gt_class_ids, gt_boxes, gt_masks = inputs
            t, (mh, mw) = self.train_rois_per_image, self.mask_shape
            signature = (tf.TensorSpec([t, 4], tf.float32), tf.TensorSpec([t], tf.int32),
                         tf.TensorSpec([t, 4], tf.float32), tf.TensorSpec([t, mh, mw], tf.float32))
            targets = tf.map_fn(
                lambda args: self._image_targets(*args),
                (tf.cast(proposals, tf.float32), tf.cast(gt_class_ids, tf.int32),
                 tf.cast(gt_boxes, tf.float32), tf.cast(gt_masks, tf.bool)),
                fn_output_signature=signature)
            return [tf.stop_gradient(t) for t in targets]

        def _image_targets(self, proposals, gt_class_ids, gt_boxes, gt_masks):
            t = self.train_rois_per_image
            proposals, _ = trim_zeros_graph(proposals, name="trim_proposals")
            gt_boxes, non_zeros = trim_zeros_graph(gt_boxes, name="trim_gt_boxes")
            gt_class_ids = tf.boolean_mask(gt_class_ids, non_zeros)
            gt_masks = tf.gather(gt_masks, tf.where(non_zeros)[:, 0], axis=2)

            crowd_boxes = tf.gather(gt_boxes, tf.where(gt_class_ids < 0)[:, 0])
            non_crowd_ix = tf.where(gt_class_ids > 0)[:, 0]
            gt_class_ids = tf.gather(gt_class_ids, non_crowd_ix)
            gt_boxes = tf.gather(gt_boxes, non_crowd_ix)
            gt_masks = tf.gather(gt_masks, non_crowd_ix, axis=2)

            overlaps = overlaps_graph(proposals, gt_boxes)
            no_crowd = tf.reduce_max(overlaps_graph(proposals, crowd_boxes), axis=1) < 0.001
            roi_iou_max = tf.reduce_max(overlaps, axis=1)
            positive_indices = tf.where(roi_iou_max >= 0.5)[:, 0]
            negative_indices = tf.where(tf.logical_and(roi_iou_max < 0.5, no_crowd))[:, 0]

            positive_count = int(t * self.roi_positive_ratio)
            positive_indices = tf.random.shuffle(positive_indices)[:positive_count]
            positive_count = tf.shape(positive_indices)[0]
            r = tf.constant(1.0 / self.roi_positive_ratio, tf.float32)
            negative_count = tf.cast(r * tf.cast(positive_count, tf.float32), tf.int32) - positive_count
            negative_indices = tf.random.shuffle(negative_indices)[:negative_count]
            positive_rois = tf.gather(proposals, positive_indices)
            negative_rois = tf.gather(proposals, negative_indices)

            positive_overlaps = tf.gather(overlaps, positive_indices)
            assignment = tf.cond(tf.shape(positive_overlaps)[1] > 0,
                                 lambda: tf.argmax(positive_overlaps, axis=1),
                                 lambda: tf.zeros([0], tf.int64))
            roi_gt_boxes = tf.gather(gt_boxes, assignment)
            roi_gt_class_ids = tf.gather(gt_class_ids, assignment)
            deltas = box_refinement_graph(positive_rois, roi_gt_boxes)
            deltas /= tf.constant(self.bbox_std_dev, tf.float32)

            roi_masks = tf.transpose(tf.gather(gt_masks, assignment, axis=2), [2, 0, 1])[..., None]
            boxes = positive_rois
            if self.use_mini_mask:
                y1, x1, y2, x2 = tf.split(positive_rois, 4, axis=1)
                gt_y1, gt_x1, gt_y2, gt_x2 = tf.split(roi_gt_boxes, 4, axis=1)
                gt_h = gt_y2 - gt_y1
                gt_w = gt_x2 - gt_x1
                boxes = tf.concat([(y1 - gt_y1) / gt_h, (x1 - gt_x1) / gt_w,
                                   (y2 - gt_y1) / gt_h, (x2 - gt_x1) / gt_w], 1)
            masks = roi_align(roi_masks, boxes, tf.range(tf.shape(roi_masks)[0]), self.mask_shape,
                              self.roi_align_aligned, self.roi_align_sampling_ratio)
            masks = tf.round(tf.squeeze(masks, axis=3))

            rois = tf.concat([positive_rois, negative_rois], axis=0)
            n = tf.shape(negative_rois)[0]
            p = tf.maximum(t - tf.shape(rois)[0], 0)
            rois = tf.pad(rois, [(0, p), (0, 0)])
            roi_gt_class_ids = tf.pad(roi_gt_class_ids, [(0, n + p)])
            deltas = tf.pad(deltas, [(0, n + p), (0, 0)])
            masks = tf.pad(masks, [(0, n + p), (0, 0), (0, 0)])
            return (tf.reshape(rois, [t, 4]), tf.reshape(roi_gt_class_ids, [t]),
                    tf.reshape(deltas, [t, 4]), tf.reshape(masks, [t, *self.mask_shape]))

    return OldDetectionTargetLayer


def make_inputs(rng, batch, n, g, mini=56):
    """Proposals [batch, n, 4] (a quarter jittered GT copies), 1..g GT per image
    (zero padded to g), bool 56 x 56 mini-masks."""
    import numpy as np
    proposals = np.zeros((batch, n, 4), np.float32)
    class_ids = np.zeros((batch, g), np.int32)
    boxes = np.zeros((batch, g, 4), np.float32)
    masks = rng.random((batch, mini, mini, g)) > 0.5
    for b in range(batch):
        k = int(rng.integers(max(1, g // 2), g + 1))
        y, x = rng.uniform(0, 0.8, (2, k))
        h, w = rng.uniform(0.05, 0.2, (2, k))
        gt = np.stack([y, x, y + h, x + w], 1)
        boxes[b, :k] = gt
        class_ids[b, :k] = rng.integers(1, 4, k)
        near = gt[rng.integers(0, k, n // 4)] + rng.normal(0, 0.01, (n // 4, 4))
        corners = rng.random((n - n // 4, 2, 2))
        far = np.concatenate([corners.min(1), corners.max(1)], 1)
        both = np.concatenate([near, far])
        both = np.concatenate([np.minimum(both[:, :2], both[:, 2:]),
                               np.maximum(both[:, :2], both[:, 2:])], 1)
        proposals[b] = np.clip(both[rng.permutation(n)], 0, 1)
    return proposals, class_ids, boxes, masks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--case", choices=list(CASES), action="append")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from mrcnn.roi_heads import DetectionTargetLayer

    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
           "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "")}
    old_class = old_layer_class()
    for case in args.case or list(CASES):
        batch, n, g, t = CASES[case]
        inputs = [tf.constant(x) for x in make_inputs(np.random.default_rng(0), batch, n, g)]
        fns = {}
        for name, cls in (("old", old_class), ("new", DetectionTargetLayer)):
            layer = cls(train_rois_per_image=t, roi_positive_ratio=0.33,
                        bbox_std_dev=[0.1, 0.1, 0.2, 0.2], use_mini_mask=True, mask_shape=[28, 28])
            fns[name] = tf.function(lambda *x, layer=layer: layer(list(x)))
            [y.numpy() for y in fns[name](*inputs)]   # trace
        times = {name: [] for name in fns}
        for _ in range(args.repeat):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                [y.numpy() for y in fn(*inputs)]
                times[name].append(time.perf_counter() - t0)
        for name, values in times.items():
            print(json.dumps({"case": case, "layer": name, "median_s": round(statistics.median(values), 5),
                              "min_s": round(min(values), 5), "repeat": args.repeat, **env}), flush=True)


if __name__ == "__main__":
    main()

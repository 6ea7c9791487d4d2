"""ProposalLayer and DetectionLayer run one tf.image.combined_non_max_suppression per batch, scored
with rank keys (tf_ops.ranked_nms). Their outputs must be, bit for bit, those of the former
implementations, kept here as references: one tf.image.non_max_suppression per image (proposals)
and per image and class (detections), mapped with tf.map_fn. The inputs are made for ties: scores
rounded to a few values, duplicated boxes, zero-area boxes, zero rows as padding."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.geometry import apply_box_deltas_graph, clip_boxes_graph, norm_boxes_graph
from mrcnn.image_meta import meta_size, parse_image_meta_graph
from mrcnn.tf_ops import ranked_nms
from mrcnn.roi_heads import DetectionLayer
from mrcnn.rpn import ProposalLayer

RPN_STD = [0.1, 0.1, 0.2, 0.2]
STD = [0.1, 0.1, 0.2, 0.2]


# --------------------------------------------------------------------------- references

def reference_proposals(rpn_probs, rpn_bbox, anchors, proposal_count, nms_threshold,
                        pre_nms_limit):
    """ProposalLayer.call before combined NMS (commit a189d66): a non_max_suppression per image."""
    rpn_probs, rpn_bbox, anchors = (tf.cast(t, tf.float32) for t in (rpn_probs, rpn_bbox, anchors))
    scores = rpn_probs[:, :, 1]
    deltas = rpn_bbox * tf.constant(RPN_STD, tf.float32)
    pre_nms_limit = tf.minimum(pre_nms_limit, tf.shape(anchors)[1])
    ix = tf.nn.top_k(scores, pre_nms_limit, sorted=True, name="top_anchors").indices
    scores = tf.gather(scores, ix, batch_dims=1)
    deltas = tf.gather(deltas, ix, batch_dims=1)
    boxes = apply_box_deltas_graph(tf.gather(anchors, ix, batch_dims=1), deltas)
    boxes = clip_boxes_graph(boxes, tf.constant([0., 0., 1., 1.]))

    def nms(args):
        boxes, scores = args
        keep = tf.image.non_max_suppression(boxes, scores, proposal_count, nms_threshold)
        proposals = tf.gather(boxes, keep)
        return tf.pad(proposals, [(0, proposal_count - tf.shape(proposals)[0]), (0, 0)])

    return tf.map_fn(nms, (boxes, scores), fn_output_signature=tf.TensorSpec([proposal_count, 4]))


def reference_detections(inputs, mode, min_confidence, k, nms_threshold):
    """DetectionLayer.call and _per_class_nms before combined NMS (commit a189d66): a
    non_max_suppression per image and foreground class."""
    rois, probs, deltas = (tf.cast(t, tf.float32) for t in inputs[:3])
    meta = parse_image_meta_graph(tf.convert_to_tensor(inputs[3]))
    window = norm_boxes_graph(meta["window"], meta["image_shape"][0][:2])
    num_classes = probs.shape[-1]
    scores = probs[..., 1:]
    deltas = deltas[:, :, 1:] * tf.constant(STD, tf.float32)
    boxes = apply_box_deltas_graph(tf.broadcast_to(rois[:, :, tf.newaxis], tf.shape(deltas)),
                                   deltas)
    boxes = clip_boxes_graph(boxes, window[:, tf.newaxis, tf.newaxis])
    keep = scores >= min_confidence
    if mode == "argmax":
        top_class = tf.argmax(probs, axis=2, output_type=tf.int32)
        keep = tf.logical_and(keep, tf.equal(top_class[..., tf.newaxis], tf.range(1, num_classes)))

    batch, foreground = tf.shape(boxes)[0], boxes.shape[2]
    pairs = tf.reshape(tf.stack(tf.meshgrid(tf.range(batch), tf.range(foreground),
                                            indexing="ij"), -1), [-1, 2])

    def nms(pair):
        image, c = pair[0], pair[1]
        indices = tf.image.non_max_suppression(
            boxes[image, :, c], tf.where(keep[image, :, c], scores[image, :, c], -1.0),
            k, nms_threshold, score_threshold=-0.5)
        return tf.pad(indices, [(0, k - tf.shape(indices)[0])], constant_values=-1)

    indices = tf.map_fn(nms, pairs, fn_output_signature=tf.TensorSpec([k], tf.int32))
    found = tf.where(indices >= 0)
    rows = tf.stack([tf.gather(pairs[:, 0], found[:, 0]), tf.gather_nd(indices, found),
                     tf.gather(pairs[:, 1], found[:, 0])], 1)
    selected = tf.scatter_nd(rows, tf.ones(tf.shape(rows)[:1]), tf.shape(keep)) > 0

    flat_scores = tf.reshape(tf.where(selected, scores, -1.0), [batch, -1])
    candidates = probs.shape[1] * foreground if probs.shape[1] is not None else k
    ranked = tf.nn.top_k(flat_scores, k=min(k, candidates), sorted=True).indices
    ranked_ids = tf.cast(ranked % foreground + 1, tf.float32)
    detections = tf.concat([
        tf.gather(tf.reshape(boxes, [batch, -1, 4]), ranked, batch_dims=1),
        ranked_ids[..., None],
        tf.gather(tf.reshape(scores, [batch, -1]), ranked, batch_dims=1)[..., None]], axis=2)
    count = tf.reduce_sum(tf.cast(selected, tf.int32), axis=[1, 2])
    detections = tf.where(tf.sequence_mask(count, tf.shape(ranked)[1])[..., None], detections, 0.0)
    return tf.pad(detections, [(0, 0), (0, k - tf.shape(ranked)[1]), (0, 0)])


# --------------------------------------------------------------------------- random inputs with ties

def random_boxes(rng, shape, low=0.0, high=1.0, max_size=0.3):
    """Boxes (y1, x1, y2, x2) with duplicates (a tenth copied from others), zero-area boxes
    (a twentieth flat in y or x) and, at the end, a few all-zero rows (padding)."""
    n = shape[-1]
    centers = rng.uniform(low, high, shape + (2,))
    sizes = rng.uniform(0.01, max_size, shape + (2,))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1)
    copies = rng.choice(n, n // 10, replace=False)
    boxes[..., copies, :] = boxes[..., rng.choice(n, n // 10), :]
    flat = rng.choice(n, n // 20, replace=False)
    boxes[..., flat, 2] = boxes[..., flat, 0]
    flat = rng.choice(n, n // 20, replace=False)
    boxes[..., flat, 3] = boxes[..., flat, 1]
    boxes[..., n - max(1, n // 50):, :] = 0
    return boxes.astype(np.float32)


def proposal_inputs(rng, batch, n, decimals):
    """RPN probabilities with FG scores rounded to `decimals` (many ties), deltas (a quarter zero,
    so that duplicated anchors stay duplicates), anchors partly outside the image (clipped)."""
    scores = np.round(rng.uniform(size=(batch, n)), decimals).astype(np.float32)
    deltas = rng.normal(size=(batch, n, 4)) * 0.5
    deltas[rng.uniform(size=(batch, n)) < 0.25] = 0
    anchors = random_boxes(rng, (batch, n), -0.1, 1.1)
    return (np.stack([1 - scores, scores], -1), deltas.astype(np.float32), anchors)


def image_meta(batch, num_classes, size=64, window=(4, 0, 60, 64)):
    return np.array([[0, size, size, 3, size, size, 3, *window, 1.0] + [1] * num_classes] * batch,
                    np.float32)


def detection_inputs(rng, batch, n, classes, quantum):
    """RoIs with duplicates, zero-area and zero (padding) rows; softmax probabilities rounded to
    multiples of `quantum` (ties between RoIs and between the classes of a RoI); deltas, some zero
    (duplicated RoIs give duplicated boxes); metas of 64 x 64 images whose window clips boxes."""
    rois = random_boxes(rng, (batch, n), 0.05, 0.95, 0.4)
    probs = tf.nn.softmax(rng.normal(size=(batch, n, classes)) * 2).numpy()
    probs = (np.round(probs / quantum) * quantum).astype(np.float32)
    deltas = rng.normal(size=(batch, n, classes, 4)) * 0.3
    deltas[rng.uniform(size=(batch, n)) < 0.3] = 0
    return [rois, probs, deltas.astype(np.float32), image_meta(batch, classes)]


# --------------------------------------------------------------------------- proposals

PROPOSAL_CASES = [  # batch, anchors, pre_nms_limit, proposal_count, nms_threshold, decimals
    (1, 1200, 1000, 300, 0.7, 2),
    (3, 1200, 1000, 300, 0.7, 1),
    (2, 1500, 1200, 400, 0.3, 3),
    (2, 400, 1000, 600, 0.7, 2),       # fewer anchors than pre_nms_limit and proposal_count
    (2, 300, 300, 100, 0.0, 1),        # any overlap suppresses
    (1, 300, 300, 500, 1.0, 1),        # nothing suppresses: every box, padded
]


@pytest.mark.parametrize("batch, n, pre_nms, count, threshold, decimals", PROPOSAL_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proposals_equal_per_image_non_max_suppression(batch, n, pre_nms, count, threshold,
                                                       decimals, seed):
    """Eagerly and in a tf.function, against the reference run the same way."""
    rng = np.random.default_rng(seed * 100 + n + batch)
    inputs = proposal_inputs(rng, batch, n, decimals)
    top = np.sort(inputs[0][..., 1], axis=1)[:, ::-1][:, :pre_nms]
    assert (top[:, 1:] == top[:, :-1]).sum() > pre_nms // 4 * batch or decimals > 2   # ties
    layer = ProposalLayer(count, threshold, pre_nms_limit=pre_nms, rpn_bbox_std_dev=RPN_STD)
    expected = reference_proposals(*inputs, count, threshold, pre_nms).numpy()
    out = layer(list(inputs)).numpy()
    assert out.shape == (batch, count, 4)
    np.testing.assert_array_equal(out, expected)
    rows = (expected != 0).any(-1).sum(1)
    assert (rows > 10).all() and (rows < count).any() or threshold == 1.0   # NMS and padding
    graph = tf.function(lambda *x: layer(list(x)))(*inputs).numpy()
    in_graph = tf.function(lambda *x: reference_proposals(*x, count, threshold, pre_nms))
    np.testing.assert_array_equal(graph, in_graph(*inputs).numpy())


def test_proposals_with_equal_scores_keep_the_lower_anchor():
    """Three almost equal boxes (IoU > 0.99) with equal scores: the one of the lowest anchor index
    survives, whichever box it is."""
    anchors = np.array([[[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.50001], [0.1, 0.1, 0.5, 0.50002],
                         [0.6, 0.6, 0.9, 0.9]]], np.float32)
    probs = np.array([[[0.5, 0.5]] * 3 + [[0.6, 0.4]]], np.float32)
    layer = ProposalLayer(3, 0.7, pre_nms_limit=4, rpn_bbox_std_dev=RPN_STD)
    out = layer([probs, np.zeros((1, 4, 4), np.float32), anchors]).numpy()
    np.testing.assert_allclose(out[0], [anchors[0, 0], anchors[0, 3], [0, 0, 0, 0]], atol=1e-6)
    for order in ([2, 1, 0, 3], [1, 2, 0, 3]):
        out = layer([probs, np.zeros((1, 4, 4), np.float32), anchors[:, order]]).numpy()
        np.testing.assert_allclose(out[0, 0], anchors[0, order[0]], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- detections

DETECTION_CASES = [  # batch, rois, classes, k, quantum, nms_threshold
    (1, 200, 9, 20, 0.05, 0.3),
    (2, 200, 4, 100, 0.1, 0.3),        # uncapped: every survivor, then padding
    (3, 150, 3, 10, 0.05, 0.5),
    (2, 100, 2, 16, 0.1, 0.3),         # one foreground class
    (2, 120, 5, 5, 0.25, 0.0),         # few score values, any overlap suppresses
]


@pytest.mark.parametrize("mode", ["argmax", "per_class"])
@pytest.mark.parametrize("batch, n, classes, k, quantum, threshold", DETECTION_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_detections_equal_per_image_and_class_non_max_suppression(mode, batch, n, classes, k,
                                                                  quantum, threshold, seed):
    rng = np.random.default_rng(seed * 1000 + n + classes)
    inputs = detection_inputs(rng, batch, n, classes, quantum)
    for min_confidence in (0.0, 0.3):
        layer = DetectionLayer(bbox_std_dev=STD, detection_min_confidence=min_confidence,
                               detection_max_instances=k, detection_nms_threshold=threshold,
                               detection_class_mode=mode)
        expected = reference_detections(inputs, mode, min_confidence, k, threshold).numpy()
        assert (expected[..., 4] > 0).sum() >= min(k, 5) * batch               # detections
        scores = expected[..., 5][expected[..., 4] > 0]
        assert len(scores) > len(np.unique(scores)) or k <= 5                  # tied scores kept
        out = layer(inputs).numpy()
        assert out.shape == (batch, k, 6)
        np.testing.assert_array_equal(out, expected)
        graph = tf.function(lambda *x: layer(list(x)))(*inputs).numpy()
        in_graph = tf.function(lambda *x: reference_detections(x, mode, min_confidence, k, threshold))
        np.testing.assert_array_equal(graph, in_graph(*inputs).numpy())


def test_detections_of_a_batch_are_those_of_each_image():
    rng = np.random.default_rng(7)
    inputs = detection_inputs(rng, 3, 100, 4, 0.05)
    layer = DetectionLayer(bbox_std_dev=STD, detection_min_confidence=0.1,
                           detection_max_instances=30, detection_nms_threshold=0.3,
                           detection_class_mode="per_class")
    out = layer(inputs).numpy()
    for i in range(3):
        np.testing.assert_array_equal(layer([x[i:i + 1] for x in inputs]).numpy()[0], out[i])
    # Batch and RoI counts unknown when traced (compared in graphs of the same signature: the
    # box arithmetic's rounding, not the NMS, depends on what Grappler knows of the shapes).
    signature = [tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None, 4]),
                 tf.TensorSpec([None, None, 4, 4]), tf.TensorSpec([None, 16])]
    dynamic = tf.function(lambda *x: layer(list(x)), input_signature=signature)
    reference = tf.function(lambda *x: reference_detections(x, "per_class", 0.1, 30, 0.3),
                            input_signature=signature)
    for part in (inputs, [x[1:2, :60] for x in inputs]):
        np.testing.assert_array_equal(dynamic(*part).numpy(), reference(*part).numpy())


def test_detections_with_no_candidate_are_zeros():
    rng = np.random.default_rng(8)
    inputs = detection_inputs(rng, 2, 50, 3, 0.05)
    inputs[1][:] = [1.0, 0.0, 0.0]                                # everything is background
    for mode in ("argmax", "per_class"):
        layer = DetectionLayer(bbox_std_dev=STD, detection_min_confidence=0.1,
                               detection_max_instances=8, detection_nms_threshold=0.3,
                               detection_class_mode=mode)
        assert not layer(inputs).numpy().any()


def test_too_many_candidates_for_exact_keys_is_an_error():
    layer = DetectionLayer(bbox_std_dev=STD, detection_min_confidence=0.1,
                           detection_max_instances=8, detection_nms_threshold=0.3)
    shape = [1, 2 ** 12, 2 ** 12 + 1]
    with pytest.raises(ValueError, match="rank keys"):
        tf.function(lambda *x: layer(list(x))).get_concrete_function(
            tf.TensorSpec(shape[:2] + [4]), tf.TensorSpec(shape), tf.TensorSpec(shape + [4]),
            tf.TensorSpec([1, meta_size(shape[2])]))


# --------------------------------------------------------------------------- the helper

def test_ranked_nms_follows_the_keys_and_skips_negative_keys():
    """Equal boxes: only the one of the largest key survives, wherever it is; a key of -1 is no
    candidate; each set of the batch keeps its max_output_size largest keys' survivors."""
    box, other = [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]
    out_boxes, out_keys = ranked_nms(tf.constant([[box, box, box, other]]),
                                     tf.constant([[1.0, 3.0, 2.0, -1.0]]), 3, 0.5)
    assert out_keys.numpy().tolist() == [[3, 0, 0]]
    np.testing.assert_array_equal(out_boxes.numpy(), np.float32([[box, [0] * 4, [0] * 4]]))
    apart = [[0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.4, 0.4, 0.5, 0.5], [0.6, 0.6, 0.7, 0.7]]
    out_boxes, out_keys = ranked_nms(tf.constant([apart, apart]),
                                     tf.constant([[1.0, 2.0, 3.0, 4.0], [5.0, 8.0, 7.0, 6.0]]), 2, 0.5)
    assert out_keys.numpy().tolist() == [[4, 3], [8, 7]]
    np.testing.assert_array_equal(out_boxes.numpy(),
                                  np.float32([[apart[3], apart[2]], [apart[1], apart[2]]]))

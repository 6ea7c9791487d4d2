"""The numpy toolbox: hand-computed values, properties, and agreement with pycocotools."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from mrcnn import utils
from mrcnn.config import Config


# ---------------------------------------------------------------- strategies

@st.composite
def boxes(draw, n_min=1, n_max=12, size=200):
    """Float boxes with positive height and width."""
    n = draw(st.integers(n_min, n_max))
    y1 = draw(arrays(np.float64, n, elements=st.floats(0, size, allow_nan=False)))
    x1 = draw(arrays(np.float64, n, elements=st.floats(0, size, allow_nan=False)))
    h = draw(arrays(np.float64, n, elements=st.floats(1, size, allow_nan=False)))
    w = draw(arrays(np.float64, n, elements=st.floats(1, size, allow_nan=False)))
    return np.stack([y1, x1, y1 + h, x1 + w], axis=1)


# ---------------------------------------------------------------- boxes

def test_extract_bboxes_exclusive_corners_and_empty_mask():
    mask = np.zeros((20, 30, 3), bool)
    mask[2:5, 3:7, 0] = True
    mask[10, 29, 1] = True
    boxes = utils.extract_bboxes(mask)
    assert boxes.dtype == np.int32
    np.testing.assert_array_equal(boxes, [[2, 3, 5, 7], [10, 29, 11, 30], [0, 0, 0, 0]])


def test_compute_iou_hand_computed():
    box = np.array([0, 0, 10, 10])
    others = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10]])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    np.testing.assert_allclose(utils.compute_iou(box, others, 100, areas), [25 / 175, 1, 0, 0.5])


def test_compute_overlaps_hand_computed_and_dtype():
    a = np.array([[0, 0, 10, 10], [0, 0, 20, 20]])
    b = np.array([[5, 5, 15, 15]])
    overlaps = utils.compute_overlaps(a, b)
    assert overlaps.shape == (2, 1) and overlaps.dtype == np.float64
    np.testing.assert_allclose(overlaps[:, 0], [25 / 175, 100 / 400])


@given(boxes(), boxes())
def test_compute_overlaps_is_symmetric_and_bounded(a, b):
    ab = utils.compute_overlaps(a, b)
    np.testing.assert_allclose(ab, utils.compute_overlaps(b, a).T, rtol=1e-12, atol=1e-12)
    assert np.all(ab >= 0) and np.all(ab <= 1 + 1e-12)
    np.testing.assert_allclose(np.diag(utils.compute_overlaps(a, a)), 1.0)


def test_compute_overlaps_masks_hand_computed_and_empty():
    m1 = np.zeros((10, 10, 2), bool)
    m1[:5, :, 0] = True     # 50 px
    m1[:, :, 1] = True      # 100 px
    m2 = np.zeros((10, 10, 1), bool)
    m2[:, :5, 0] = True     # 50 px, 25 shared with m1[0]
    np.testing.assert_allclose(utils.compute_overlaps_masks(m1, m2), [[25 / 75], [50 / 100]])
    assert utils.compute_overlaps_masks(m1, np.zeros((10, 10, 0))).shape == (2, 0)
    assert utils.compute_overlaps_masks(np.zeros((10, 10, 0)), m2).shape == (0, 1)


def brute_force_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ious = [utils.compute_overlaps(boxes[[i]], boxes[[k]])[0, 0] for k in keep]
        if all(iou <= threshold for iou in ious):
            keep.append(i)
    return keep


@settings(max_examples=60, deadline=None)
@given(boxes(n_max=15), st.floats(0.05, 0.95), st.randoms(use_true_random=False))
def test_nms_equals_brute_force(b, threshold, rnd):
    scores = np.array(rnd.sample(range(1000), len(b)), dtype=np.float64)  # distinct scores
    keep = utils.non_max_suppression(b, scores, threshold)
    assert keep.dtype == np.int32
    assert list(keep) == brute_force_nms(b, scores, threshold)


def test_nms_hand_computed_and_empty_input():
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) suppresses 0 (IoU .9) and 1 (IoU 81/119 = .68 > .5); 2 is separate
    np.testing.assert_array_equal(utils.non_max_suppression(b, scores, 0.5), [3, 2])
    np.testing.assert_array_equal(utils.non_max_suppression(b, scores, 0.7), [3, 1, 2])
    with pytest.raises(ValueError, match="at least one box"):
        utils.non_max_suppression(np.zeros((0, 4)), np.zeros(0), 0.5)


def test_box_refinement_and_apply_deltas_hand_computed():
    box = np.array([[0, 0, 10, 10]])
    gt = np.array([[2, 4, 12, 24]])
    deltas = utils.box_refinement(box, gt)
    assert deltas.dtype == np.float32
    np.testing.assert_allclose(deltas, [[0.2, 0.9, 0.0, math.log(2)]], rtol=1e-6)
    np.testing.assert_allclose(utils.apply_box_deltas(box, deltas), gt, atol=1e-5)
    np.testing.assert_allclose(utils.apply_box_deltas(box, np.array([[0.1, -0.1, math.log(3), 0]])),
                               [[-9, -1, 21, 9]], atol=1e-5)


@given(boxes(size=500))
def test_apply_box_deltas_inverts_box_refinement(b):
    rng = np.random.default_rng(len(b))
    g = b + rng.uniform(-0.3, 0.3, b.shape) * (b[:, 2:] - b[:, :2]).repeat(2, axis=0).reshape(-1, 4)
    g[:, 2:] = np.maximum(g[:, 2:], g[:, :2] + 1)
    restored = utils.apply_box_deltas(b, utils.box_refinement(b, g))
    assert restored.dtype == np.float32
    np.testing.assert_allclose(restored, g, rtol=1e-4, atol=1e-2)


# ---------------------------------------------------------------- resizing

def test_resize_image_square_downscale():
    image = np.full((100, 150, 3), 200, np.uint8)
    out, window, scale, padding, crop = utils.resize_image(image, 128, 128, 0, "square")
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(128 / 150)
    assert window == (21, 0, 106, 128)
    assert padding == [(21, 22), (0, 0), (0, 0)] and crop is None
    assert out[:21].max() == 0 and out[106:].max() == 0 and out[21:106].min() == 200


def test_resize_image_square_upscale_and_min_scale():
    image = np.ones((32, 64, 3), np.uint8)
    _, window, scale, _, _ = utils.resize_image(image, 64, 256, 0, "square")
    assert scale == 2 and window == (96, 64, 160, 192)
    _, window, scale, _, _ = utils.resize_image(image, None, 256, 3, "square")
    assert scale == 3 and window == (80, 32, 176, 224)


def test_resize_image_pad64_none_crop():
    image = np.ones((100, 130, 3), np.uint8)
    out, window, scale, padding, _ = utils.resize_image(image, 64, 1024, 0, "pad64")
    assert out.shape == (128, 192, 3) and scale == 1
    assert padding == [(14, 14), (31, 31), (0, 0)] and window == (14, 31, 114, 161)

    out, window, scale, padding, crop = utils.resize_image(image, 64, 128, 0, "none")
    assert out is image and window == (0, 0, 100, 130) and scale == 1 and crop is None

    big = np.arange(300 * 400 * 3, dtype=np.uint16).reshape(300, 400, 3)
    out, window, scale, padding, crop = utils.resize_image(big, 256, None, 0, "crop")
    y, x, h, w = crop
    assert out.shape == (256, 256, 3) and out.dtype == np.uint16 and window == (0, 0, 256, 256)
    np.testing.assert_array_equal(out, big[y:y + 256, x:x + 256])

    with pytest.raises(ValueError, match="mode"):
        utils.resize_image(image, 64, 128, 0, "stretch")
    with pytest.raises(ValueError, match="multiple of 64"):
        utils.resize_image(image, 100, 128, 0, "pad64")


def test_resize_mask_follows_resize_image():
    mask = np.zeros((100, 150, 2), bool)
    mask[10:30, 20:60, 0] = True
    mask[50:100, 100:150, 1] = True
    _, window, scale, padding, crop = utils.resize_image(np.zeros((100, 150, 3), np.uint8), 128, 128)
    out = utils.resize_mask(mask, scale, padding, crop)
    assert out.shape == (128, 128, 2) and out.dtype == bool
    boxes = utils.extract_bboxes(out)
    expected = np.array([[10, 20, 30, 60], [50, 100, 100, 150]]) * scale + [21, 0, 21, 0]
    np.testing.assert_allclose(boxes, expected, atol=1.5)


def test_minimize_expand_round_trip():
    mask = np.zeros((128, 128, 2), bool)
    mask[10:50, 20:90, 0] = True
    yy, xx = np.mgrid[:128, :128]
    mask[..., 1] = (yy - 80) ** 2 + (xx - 70) ** 2 < 30 ** 2
    bbox = utils.extract_bboxes(mask)
    mini = utils.minimize_mask(bbox, mask, (56, 56))
    assert mini.shape == (56, 56, 2) and mini.dtype == bool and mini[..., 0].all()
    back = utils.expand_mask(bbox, mini, mask.shape)
    assert back.shape == mask.shape and back.dtype == bool
    np.testing.assert_array_equal(back[..., 0], mask[..., 0])
    assert utils.compute_overlaps_masks(back[..., 1:], mask[..., 1:])[0, 0] > 0.95
    with pytest.raises(ValueError, match="zero area"):
        utils.minimize_mask(np.array([[5, 5, 5, 9]]), mask[..., :1], (56, 56))


def test_unmold_mask_places_thresholded_mask_in_box():
    small = np.zeros((28, 28), np.float32)
    small[:, :14] = 0.9
    full = utils.unmold_mask(small, (10, 20, 38, 76), (100, 100, 3))
    assert full.shape == (100, 100) and full.dtype == bool
    assert full[10:38, 20:48].all() and not full[10:38, 48:76].any()
    assert full.sum() == 28 * 28


# ---------------------------------------------------------------- anchors

def test_pyramid_anchors_for_the_128px_shapes_config():
    class Shapes(Config):
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    c = Shapes()
    shapes = [[int(math.ceil(128 / s))] * 2 for s in c.BACKBONE_STRIDES]
    anchors = utils.generate_pyramid_anchors(c.RPN_ANCHOR_SCALES, c.RPN_ANCHOR_RATIOS, shapes,
                                             c.BACKBONE_STRIDES, c.RPN_ANCHOR_STRIDE)
    counts = [3 * h * w for h, w in shapes]
    assert counts == [3072, 768, 192, 48, 12] and anchors.shape == (4092, 4)
    # The first anchors of each level: centred on cell (0, 0), ratios 0.5, 1, 2 of that level's scale.
    start = 0
    for scale, count in zip(c.RPN_ANCHOR_SCALES, counts):
        level = anchors[start:start + count]
        heights = level[:3, 2] - level[:3, 0]
        widths = level[:3, 3] - level[:3, 1]
        np.testing.assert_allclose(heights, scale / np.sqrt([0.5, 1, 2]))
        np.testing.assert_allclose(widths, scale * np.sqrt([0.5, 1, 2]))
        np.testing.assert_allclose((level[:3, 0] + level[:3, 2]) / 2, 0)
        start += count
    # Level P2 (stride 4): the 4th anchor is centred one cell to the right.
    np.testing.assert_allclose((anchors[3, 1] + anchors[3, 3]) / 2, 4)
    np.testing.assert_allclose((anchors[3 * 32, 0] + anchors[3 * 32, 2]) / 2, 4)


def test_anchor_stride_two_halves_each_side():
    a = utils.generate_anchors([32], [1], [8, 8], 4, 2)
    assert a.shape == (16, 4)
    np.testing.assert_allclose(a[1], [-16, -8, 16, 24])


# ---------------------------------------------------------------- misc

def test_trim_zeros_and_norm_boxes():
    x = np.array([[0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]])
    np.testing.assert_array_equal(utils.trim_zeros(x), [[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="2-D"):
        utils.trim_zeros(np.zeros(3))
    b = np.array([[0, 0, 128, 128], [10, 20, 30, 40]])
    n = utils.norm_boxes(b, (128, 128))
    assert n.dtype == np.float32
    np.testing.assert_allclose(n[0], [0, 0, 1, 1])
    np.testing.assert_allclose(n[1], [10 / 127, 20 / 127, 29 / 127, 39 / 127], rtol=1e-6)
    d = utils.denorm_boxes(n, (128, 128))
    assert d.dtype == np.int32
    np.testing.assert_array_equal(d, b)


def test_compute_recall():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = np.array([[0, 0, 10, 9], [50, 50, 60, 60], [0, 0, 10, 10]])
    recall, positive = utils.compute_recall(pred, gt, 0.5)
    assert recall == 0.5
    np.testing.assert_array_equal(positive, [0, 2])


def test_batch_slice_stacks_per_item_results():
    tf = pytest.importorskip("tensorflow")
    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    y = tf.constant([1.0, 2.0, 3.0])
    a, b = utils.batch_slice([x, y], lambda xi, yi: (xi * yi, tf.reduce_sum(xi)), 3)
    np.testing.assert_allclose(a.numpy(), x.numpy() * y.numpy()[:, None])
    np.testing.assert_allclose(b.numpy(), [6, 22, 38])


# ---------------------------------------------------------------- AP

def _masks_from_boxes(boxes, shape=(64, 64)):
    masks = np.zeros(shape + (len(boxes),), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    return masks


GT_BOXES = np.array([[0, 0, 20, 20], [30, 30, 60, 60]])
PRED_BOXES = np.array([[0, 0, 20, 19], [40, 0, 60, 20], [31, 30, 60, 60]])
PRED_SCORES = np.array([0.9, 0.8, 0.7])


def test_compute_ap_hand_worked():
    # Ranked: TP (recall .5, precision 1), FP (.5, .5), TP (1, 2/3).
    # Monotone precision: 1 up to recall .5, 2/3 up to recall 1 -> AP = .5 + .5 * 2/3.
    ap, precisions, recalls, overlaps = utils.compute_ap(
        GT_BOXES, np.array([1, 1]), _masks_from_boxes(GT_BOXES),
        PRED_BOXES, np.array([1, 1, 1]), PRED_SCORES, _masks_from_boxes(PRED_BOXES))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    np.testing.assert_allclose(recalls, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(precisions, [1, 1, 2 / 3, 2 / 3, 0])
    assert overlaps.shape == (3, 2)
    # A wrong class turns the last TP into a FP.
    ap, *_ = utils.compute_ap(
        GT_BOXES, np.array([1, 2]), _masks_from_boxes(GT_BOXES),
        PRED_BOXES, np.array([1, 1, 1]), PRED_SCORES, _masks_from_boxes(PRED_BOXES))
    assert ap == pytest.approx(0.5)


def test_compute_matches_ignores_padding_and_sorts_by_score():
    gt = np.vstack([GT_BOXES, np.zeros((2, 4), int)])
    gt_masks = np.concatenate([_masks_from_boxes(GT_BOXES), np.zeros((64, 64, 2), bool)], -1)
    order = [2, 0, 1]
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt, np.array([1, 1, 0, 0]), gt_masks, PRED_BOXES[order], np.array([1, 1, 1]),
        PRED_SCORES[order], _masks_from_boxes(PRED_BOXES[order]))
    np.testing.assert_array_equal(gt_match, [0, 2])
    np.testing.assert_array_equal(pred_match, [0, -1, 1])


def test_compute_ap_range_averages_thresholds(capsys):
    args = (GT_BOXES, np.array([1, 1]), _masks_from_boxes(GT_BOXES),
            PRED_BOXES, np.array([1, 1, 1]), PRED_SCORES, _masks_from_boxes(PRED_BOXES))
    per_threshold = [utils.compute_ap(*args, iou_threshold=t)[0] for t in np.arange(0.5, 1.0, 0.05)]
    assert utils.compute_ap_range(*args, verbose=1) == pytest.approx(np.mean(per_threshold))
    assert "AP @0.50-0.95" in capsys.readouterr().out
    assert utils.compute_ap_range(*args, iou_thresholds=[0.5], verbose=0) == pytest.approx(5 / 6)


def _cocoeval_ap50(gt_boxes, pred_boxes, scores, shape=(64, 64)):
    """AP@0.5 (segm) of one image, one class, by pycocotools' COCOeval."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m):
        r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode("ascii")
        return r

    gt_masks, pred_masks = _masks_from_boxes(gt_boxes, shape), _masks_from_boxes(pred_boxes, shape)
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle(gt_masks[..., i]),
             "area": float(gt_masks[..., i].sum()), "bbox": [float(b[1]), float(b[0]), float(b[3] - b[1]),
                                                            float(b[2] - b[0])]}
            for i, b in enumerate(gt_boxes)]
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": shape[0], "width": shape[1]}],
                    "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    coco.createIndex()
    dets = coco.loadRes([{"image_id": 1, "category_id": 1, "score": float(s), "segmentation": rle(pred_masks[..., i])}
                         for i, s in enumerate(scores)])
    ev = COCOeval(coco, dets, "segm")
    ev.params.iouThrs = np.array([0.5])
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, 0, 0, -1]  # [recall points] at IoU .5, class 1, all areas, maxDets 100
    return float(np.mean(precision[precision > -1]))


def test_compute_ap_against_cocoeval():
    """Same matches, different interpolation.

    compute_ap integrates the monotone precision over every recall step (VOC
    2010+); COCOeval samples it at 101 recall points 0, .01, ..., 1. They agree
    on perfect and on hopeless detections, and differ by the sampling error
    otherwise (here 5/6 = .8333 against (51 + 50 * 2/3) / 101 = .8350).
    """
    ours = utils.compute_ap(GT_BOXES, np.array([1, 1]), _masks_from_boxes(GT_BOXES),
                            PRED_BOXES, np.array([1, 1, 1]), PRED_SCORES, _masks_from_boxes(PRED_BOXES))[0]
    theirs = _cocoeval_ap50(GT_BOXES, PRED_BOXES, PRED_SCORES)
    assert ours == pytest.approx(5 / 6)
    assert theirs == pytest.approx((51 + 50 * 2 / 3) / 101)

    perfect = utils.compute_ap(GT_BOXES, np.array([1, 1]), _masks_from_boxes(GT_BOXES),
                               GT_BOXES, np.array([1, 1]), np.array([0.9, 0.8]), _masks_from_boxes(GT_BOXES))[0]
    assert perfect == pytest.approx(1.0) == _cocoeval_ap50(GT_BOXES, GT_BOXES, [0.9, 0.8])

    miss = np.array([[40, 0, 60, 20]])
    assert utils.compute_ap(GT_BOXES, np.array([1, 1]), _masks_from_boxes(GT_BOXES),
                            miss, np.array([1]), np.array([0.9]), _masks_from_boxes(miss))[0] == 0
    assert _cocoeval_ap50(GT_BOXES, miss, [0.9]) == 0

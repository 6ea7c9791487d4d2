"""Box geometry, anchors and the image meta layout: each numpy function and its TensorFlow twin
give the same values on the same inputs (with leading batch dimensions on the TF side), and
every anchor or meta reader uses the one owner in mrcnn.geometry / mrcnn.image_meta."""

import types

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import export, geometry, image_meta, images, utils
from mrcnn import model as modellib
from mrcnn.backbone import compute_backbone_shapes
from mrcnn.rpn import AnchorsLayer
from tests.conftest import TinyConfig

EPS32 = np.finfo(np.float32).eps
HEIGHT, WIDTH = 128, 96
LEADS = [(), (3,), (2, 3)]


def random_boxes(rng, lead, n=12, height=HEIGHT, width=WIDTH, integer=False):
    """Boxes [*lead, n, 4] in an image: random ones, and in every row the edge cases a box on
    the image border (the whole image), a 1x1 box, zero height and zero width."""
    corners = rng.uniform(0, [height, width], lead + (n, 2, 2))
    boxes = np.concatenate([corners.min(-2), corners.max(-2)], -1)
    boxes = np.round(boxes) if integer else boxes
    boxes[..., 0, :] = (0, 0, height, width)
    boxes[..., 1, :] = (5, 7, 6, 8)
    boxes[..., 2, :] = (9, 3, 9, 40)
    boxes[..., 3, :] = (20, 30, 50, 30)
    return boxes.astype(np.float32)


def per_item(fn, lead, *arrays):
    """numpy `fn` applied to each leading index of the arrays, stacked back to [*lead, ...]."""
    if not lead:
        return fn(*arrays)
    flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in arrays]
    out = np.stack([fn(*items) for items in zip(*flat)])
    return out.reshape(lead + out.shape[1:])


def assert_twins(expected, got, exact=True, maxulp_of=None):
    """Equal values (NaN where numpy has NaN), exactly or within a few float32 ulps of
    `maxulp_of`'s magnitude."""
    got = np.asarray(got)
    assert got.shape == expected.shape
    if exact:
        np.testing.assert_array_equal(got, expected)
    else:
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(got), finite)
        np.testing.assert_array_equal(got[~finite], expected[~finite])
        atol = 8 * EPS32 * np.max(np.abs(maxulp_of[np.isfinite(maxulp_of)]))
        np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=atol)


# ------------------------------------------------------------------------- numpy / TF twins
#
# Exact where both sides do the same IEEE operations in the same dtypes. np.exp / np.log and
# TensorFlow's differ by a few float32 ulps (measured over 10^6 values: exp up to 3 ulps on
# 41% of inputs in [-3, 3], log up to 4 ulps): the columns they touch are compared to within
# 8 ulps of the largest magnitude involved, all others exactly.

@pytest.mark.parametrize("lead", LEADS)
def test_box_refinement_twins(lead):
    rng = np.random.default_rng(len(lead))
    boxes = random_boxes(rng, lead)
    gt = random_boxes(rng, lead)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = per_item(geometry.box_refinement, lead, boxes, gt)
    got = geometry.box_refinement_graph(boxes, gt).numpy()
    assert expected.dtype == got.dtype == np.float32
    assert_twins(expected[..., :2], got[..., :2])                   # dy, dx: no transcendental
    # Zero-size boxes give the same infinities and NaNs on both sides.
    assert not np.all(np.isfinite(expected))
    assert_twins(expected[..., 2:], got[..., 2:], exact=False, maxulp_of=expected[..., 2:])
    # The graph's deltas turn the boxes (those of positive size) into their GT boxes.
    sized = (slice(None),) * len(lead) + (slice(4, None),)
    np.testing.assert_allclose(geometry.apply_box_deltas_graph(boxes[sized], got[sized]),
                               gt[sized], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("lead", LEADS)
def test_apply_box_deltas_twins(lead):
    rng = np.random.default_rng(10 + len(lead))
    boxes = random_boxes(rng, lead)
    deltas = rng.normal(0, 0.5, boxes.shape).astype(np.float32)
    expected = per_item(geometry.apply_box_deltas, lead, boxes, deltas)
    got = geometry.apply_box_deltas_graph(boxes, deltas).numpy()
    assert expected.dtype == got.dtype == np.float32
    assert_twins(expected, got, exact=False, maxulp_of=expected)
    # Without size changes exp is out of the way: bit for bit.
    deltas[..., 2:] = 0
    assert_twins(per_item(geometry.apply_box_deltas, lead, boxes, deltas),
                 geometry.apply_box_deltas_graph(boxes, deltas).numpy())


@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("integer", [True, False])
def test_norm_boxes_twins(lead, integer):
    rng = np.random.default_rng(20 + len(lead))
    boxes = random_boxes(rng, lead, integer=integer)
    for pixels in (boxes, boxes.astype(np.float64), boxes.astype(np.int32) if integer else boxes):
        expected = per_item(lambda b: geometry.norm_boxes(b, (HEIGHT, WIDTH)), lead, pixels)
        got = geometry.norm_boxes_graph(pixels, (HEIGHT, WIDTH)).numpy()
        assert expected.dtype == got.dtype == np.float32
        assert_twins(expected, got)
    if integer:   # integer pixel boxes survive the round trip through the graph
        assert_twins(boxes.astype(np.int32),
                     geometry.denorm_boxes_graph(got, (HEIGHT, WIDTH)).numpy())
    # A 1x1 image has no extent to normalise by: both sides give the same inf / NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = geometry.norm_boxes(boxes, (1, 1))
    assert_twins(expected, geometry.norm_boxes_graph(boxes, (1, 1)).numpy())


@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (129, 65), (1, 1), (1, 7)])
def test_denorm_boxes_twins(lead, shape):
    """Rounding corners at k + 0.5 pixels, and one float32 step either side of them: there a
    float32 product (the graph's before it computed in float64) rounds the other way (on
    128 x 96, 227 of these 1200 values moved a corner by one pixel)."""
    rng = np.random.default_rng(30 + len(lead))
    extent = np.maximum(np.array(shape * 2) - 1, 1)
    near = ((np.arange(100)[:, None] % extent + 0.5) / extent).astype(np.float32)
    normalised = np.concatenate([
        near, np.nextafter(near, np.float32(0)), np.nextafter(near, np.float32(2)),
        [(0, 0, 1, 1)],                                           # the image border
        rng.uniform(-0.1, 1.1, (40, 4))]).astype(np.float32)
    normalised = np.broadcast_to(normalised, lead + normalised.shape).copy()
    expected = per_item(lambda b: geometry.denorm_boxes(b, shape), lead, normalised)
    got = geometry.denorm_boxes_graph(normalised, shape).numpy()
    assert expected.dtype == got.dtype == np.int32
    assert_twins(expected, got)


@pytest.mark.parametrize("lead", LEADS)
def test_compute_overlaps_twins(lead):
    rng = np.random.default_rng(40 + len(lead))
    boxes1 = random_boxes(rng, lead, n=9)
    boxes2 = random_boxes(rng, lead, n=7, integer=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = per_item(geometry.compute_overlaps, lead, boxes1, boxes2)
    got = geometry.overlaps_graph(boxes1, boxes2).numpy()
    # numpy stores its float32 IoUs in a float64 matrix; the values are the same float32s.
    assert expected.dtype == np.float64 and got.dtype == np.float32
    assert np.isnan(expected).any()       # a zero-area box against itself: 0 / 0 on both sides
    assert_twins(expected, got.astype(np.float64))


@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("original", [(300, 200), (50, 70), (1, 1)])
def test_unmold_boxes_twins(lead, original):
    """The window arithmetic of unmold_detections (numpy) and of the SavedModel (TF)."""
    rng = np.random.default_rng(50 + len(lead))
    molded = (320, 320, 3)
    normalised = rng.uniform(0, 1, lead + (30, 4)).astype(np.float32)
    normalised = np.concatenate([np.minimum(normalised[..., :2], normalised[..., 2:]),
                                 np.maximum(normalised[..., :2], normalised[..., 2:])], -1)
    normalised[..., 0, :] = (0, 0, 1, 1)                       # the whole molded image
    windows = np.broadcast_to(np.array([10, 60, 310, 260]), lead + (4,)).copy()
    if lead:
        windows.reshape(-1, 4)[0] = (0, 0, 320, 320)          # no padding at all
    expected = per_item(lambda b, w: geometry.unmold_boxes(b, w, molded, original),
                        lead, normalised, windows)
    got = geometry.unmold_boxes_graph(normalised, windows, molded, original).numpy()
    assert expected.dtype == got.dtype == np.int32
    assert_twins(expected, got)
    # The window itself maps to the whole original image.
    window = geometry.norm_boxes(np.array([10, 60, 310, 260]), molded[:2])
    assert geometry.unmold_boxes(window[None], [10, 60, 310, 260], molded, original).tolist() == \
        [[0, 0, original[0], original[1]]]


def meta_fields(rng, lead, num_classes, original=(96, 64, 3)):
    """Random field values [*lead, length] (image_id and scale [*lead]) for an image meta."""
    return (rng.integers(0, 1000, lead), np.broadcast_to(original, lead + (3,)),
            np.broadcast_to((128, 128, 3), lead + (3,)),
            rng.integers(0, 128, lead + (4,)), rng.uniform(0.1, 4, lead),
            rng.integers(0, 2, lead + (num_classes,)))


@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("original", [(96, 64, 3), (1, 1, 3)])
def test_image_meta_twins(lead, original):
    rng = np.random.default_rng(60 + len(lead))
    fields = meta_fields(rng, lead, 5, original)
    expected = per_item(image_meta.compose_image_meta, lead, *fields)
    assert expected.shape == lead + (image_meta.meta_size(5),) and expected.dtype == np.float64
    assert_twins(expected, image_meta.compose_image_meta_graph(*fields, dtype=tf.float64).numpy())
    assert_twins(expected.astype(np.float32), image_meta.compose_image_meta_graph(*fields).numpy())

    parsed = image_meta.parse_image_meta(expected)
    parsed_graph = image_meta.parse_image_meta_graph(tf.constant(expected))
    assert list(parsed) == list(parsed_graph) == [name for name, _, _ in image_meta.META_FIELDS]
    for (name, _, dtype), value in zip(image_meta.META_FIELDS, fields):
        assert parsed[name].dtype == dtype
        assert_twins(parsed[name], parsed_graph[name].numpy().astype(dtype))
        assert_twins(np.asarray(value).astype(dtype), parsed[name])   # the round trip


# ------------------------------------------------------------------------- the meta layout

def test_image_meta_roundtrip():
    meta = image_meta.compose_image_meta(7, (96, 64, 3), (128, 128, 3), (0, 21, 128, 107), 4 / 3,
                                         np.array([1, 0, 1], np.int32))
    assert meta.shape == (12 + 3,) and meta.dtype == np.float64
    for parsed, index in ((image_meta.parse_image_meta(meta[np.newaxis]), (0,)),
                          (image_meta.parse_image_meta(meta), ())):
        assert parsed["image_id"][index] == 7
        assert list(parsed["original_image_shape"][index]) == [96, 64, 3]
        assert list(parsed["image_shape"][index]) == [128, 128, 3]
        assert list(parsed["window"][index]) == [0, 21, 128, 107]
        assert parsed["scale"][index] == pytest.approx(4 / 3)
        assert list(parsed["active_class_ids"][index]) == [1, 0, 1]


def test_parse_image_meta_graph_on_a_batch():
    metas = np.stack([image_meta.compose_image_meta(0, (64, 96, 3), (64, 96, 3), (1, 2, 60, 90),
                                                    1.0, [1, 0, 1, 1])] * 2).astype(np.float32)
    metas[1, 0] = 7
    parsed = {k: v.numpy() for k, v in image_meta.parse_image_meta_graph(tf.constant(metas)).items()}
    assert parsed["image_id"].tolist() == [0, 7]
    assert parsed["image_shape"][0].tolist() == [64, 96, 3]
    assert parsed["window"][1].tolist() == [1, 2, 60, 90]
    assert parsed["scale"].tolist() == [1, 1]
    assert parsed["active_class_ids"][0].tolist() == [1, 0, 1, 1]


def test_the_layout_is_stated_once():
    assert image_meta.meta_size(4) == 1 + 3 + 3 + 4 + 1 + 4 == TinyConfig().IMAGE_META_SIZE
    starts = np.cumsum([0] + [length or 0 for _, length, _ in image_meta.META_FIELDS])
    for (name, length, _), start in zip(image_meta.META_FIELDS, starts):
        index = image_meta.META_INDEX[name]
        assert index == (start if length == 1 else slice(start, start + length if length else None))


@pytest.mark.parametrize("compose", [image_meta.compose_image_meta,
                                     image_meta.compose_image_meta_graph])
def test_meta_fields_of_the_wrong_length_are_refused(compose):
    with pytest.raises(ValueError, match=r"original_image_shape has 2 values; it needs 3 \[H, W, C\]"):
        compose(0, (96, 64), (128, 128, 3), (0, 0, 128, 128), 1.0, [1, 1])
    with pytest.raises(ValueError, match=r"window has 3 values; it needs 4 \(y1, x1, y2, x2\)"):
        compose(0, (96, 64, 3), (128, 128, 3), (0, 0, 128), 1.0, [1, 1])


@pytest.mark.parametrize("shape", [(1, 1), (50, 70), (300, 200), (128, 128)])
def test_export_molds_and_composes_the_meta_of_mold_inputs(shape):
    """ServingModule._mold (TF) against mold_inputs' numpy steps: same molded image, meta, window."""
    config = TinyConfig()
    image = np.random.default_rng(shape[0]).integers(0, 256, shape + (3,), dtype=np.uint8)
    molded, window, scale, _, _ = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
    molded = images.mold_image(molded, config)
    meta = image_meta.compose_image_meta(0, image.shape, molded.shape, window, scale,
                                         np.zeros([config.NUM_CLASSES], np.int32))
    got_molded, got_meta, got_window = export.ServingModule(None, config)._mold(tf.constant(image))
    assert_twins(molded.astype(np.float32), got_molded.numpy())
    assert_twins(meta.astype(np.float32), got_meta.numpy())
    assert_twins(np.asarray(window), got_window.numpy())


# ------------------------------------------------------------------------- anchors

@pytest.fixture
def config():
    return TinyConfig()


def test_compute_anchors_is_cached_and_matches_the_pyramid(config):
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    shapes = compute_backbone_shapes(config, config.IMAGE_SHAPE)
    assert shapes.tolist() == [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2]]
    assert anchors is geometry.compute_anchors(config, config.IMAGE_SHAPE)
    assert not anchors.flags.writeable
    assert np.array_equal(anchors, utils.generate_pyramid_anchors(
        config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes, config.BACKBONE_STRIDES, 1))
    assert anchors.shape == (3 * (32 * 32 + 16 * 16 + 64 + 16 + 4), 4)


def test_normalized_anchors_have_one_owner(config):
    """get_anchors, AnchorsLayer and the export all hold geometry.normalized_anchors' array."""
    anchors = geometry.normalized_anchors(config, config.IMAGE_SHAPE)
    assert anchors.dtype == np.float32 and not anchors.flags.writeable
    np.testing.assert_array_equal(anchors, utils.norm_boxes(
        geometry.compute_anchors(config, config.IMAGE_SHAPE), (128, 128)))
    assert modellib.MaskRCNN.get_anchors(types.SimpleNamespace(config=config), (128, 128, 3)) \
        is anchors
    layer = AnchorsLayer(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                         compute_backbone_shapes(config, config.IMAGE_SHAPE),
                         config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE, config.IMAGE_SHAPE)
    assert layer.anchors is anchors
    assert np.shares_memory(export.ServingModule(None, config)._anchors, anchors)
    # Other settings or shapes: other arrays.
    assert geometry.normalized_anchors(config, (64, 64)).shape == (3 * (256 + 64 + 16 + 4 + 1), 4)
    config.RPN_ANCHOR_STRIDE = 2
    assert geometry.normalized_anchors(config, config.IMAGE_SHAPE).shape[0] < anchors.shape[0]


def test_anchors_layer_is_a_broadcast_constant(config):
    layer = AnchorsLayer(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                         compute_backbone_shapes(config, config.IMAGE_SHAPE),
                         config.BACKBONE_STRIDES, 1, config.IMAGE_SHAPE)
    expected = utils.norm_boxes(utils.generate_pyramid_anchors(
        config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
        compute_backbone_shapes(config, config.IMAGE_SHAPE), config.BACKBONE_STRIDES, 1),
        (128, 128))
    for batch in (1, 2):
        out = layer(np.zeros((batch, 128, 128, 3), np.float32)).numpy()
        assert out.shape == (batch, 4092, 4)
        np.testing.assert_array_equal(out[-1], expected)
    assert not layer.weights
    np.testing.assert_array_equal(AnchorsLayer.from_config(layer.get_config()).anchors,
                                  layer.anchors)


# ------------------------------------------------------------------------- box deltas

def test_rpn_deltas_are_box_deltas_in_float64(config):
    """build_rpn_targets' float64 deltas come from geometry.box_deltas; box_refinement is
    the same formula on float32 inputs."""
    rng = np.random.default_rng(3)
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    gt = np.array([[10, 12, 50, 60], [70, 20, 120, 90]], np.int32)
    for boxes in (anchors[:50], anchors[rng.choice(len(anchors), 50)]):
        pairs = gt[rng.integers(0, 2, 50)]
        d64 = geometry.box_deltas(boxes, pairs)
        assert d64.dtype == np.float64
        d32 = geometry.box_refinement(boxes, pairs)
        assert d32.dtype == np.float32
        np.testing.assert_array_equal(
            d32, geometry.box_deltas(boxes.astype(np.float32), pairs.astype(np.float32)))
        np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=1e-6)


def test_clip_boxes_graph_per_image_window():
    clipped = geometry.clip_boxes_graph(
        tf.constant([[[-0.5, 0.2, 0.7, 1.5]], [[0.1, 0.1, 0.2, 0.2]]]),
        tf.constant([[[0., 0., 1., 1.]], [[0.15, 0., 1., 1.]]]))
    np.testing.assert_allclose(clipped, [[[0, 0.2, 0.7, 1]], [[0.15, 0.1, 0.2, 0.2]]])

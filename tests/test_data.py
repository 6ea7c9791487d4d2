"""mrcnn.ground_truth, mrcnn.targets and data_generator: ground truth, augmentation, targets, batches."""

import logging
import sys
import types

import numpy as np
import pytest

from mrcnn import geometry, ground_truth, image_meta, images, pipeline, targets, utils
from tests.conftest import SmallConfig


class ShapesDataset(utils.Dataset):
    """2-4 squares (class 1) and discs (class 2) per image, drawn with numpy.

    `shapes` overrides the random ones: {index: [(class_id, cy, cx, half_size), ...]}.
    """

    def __init__(self, count=6, size=(128, 128), seed=0, shapes=None, source="shapes"):
        super().__init__()
        rng = np.random.RandomState(seed)
        self.add_class(source, 1, "square")
        self.add_class(source, 2, "disc")
        for i in range(count):
            spec = (shapes or {}).get(i)
            if spec is None:
                spec = [(rng.randint(1, 3), rng.randint(20, size[0] - 20),
                         rng.randint(20, size[1] - 20), rng.randint(6, 16))
                        for _ in range(rng.randint(2, 5))]
            self.add_image(source, image_id=i, path=None, size=size, shapes=spec)
        self.prepare()

    def load_image(self, image_id):
        mask, class_ids = ShapesDataset.load_mask(self, image_id)
        image = np.full(self.image_info[image_id]["size"] + (3,), 20, np.uint8)
        for k in range(mask.shape[-1]):
            image[mask[:, :, k]] = ((60 * (k + 1)) % 256, 200 if class_ids[k] == 1 else 40, 90)
        return image

    def load_mask(self, image_id):
        h, w = self.image_info[image_id]["size"]
        yy, xx = np.mgrid[:h, :w]
        masks, class_ids = [], []
        for class_id, cy, cx, r in self.image_info[image_id]["shapes"]:
            if class_id == 1:
                masks.append((yy >= cy - r) & (yy < cy + r) & (xx >= cx - r) & (xx < cx + r))
            else:
                masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
            class_ids.append(class_id)
        if not masks:
            return np.zeros((h, w, 0), bool), np.zeros([0], np.int32)
        return np.stack(masks, axis=-1), np.array(class_ids, np.int32)


@pytest.fixture
def config():
    return SmallConfig()


def one_square_dataset(**kw):
    """Image 0: a square rows 10..29, cols 40..69 (class 1) and a disc (class 2)."""
    return ShapesDataset(count=2, shapes={0: [(1, 20, 50, 10), (2, 80, 80, 12)]}, **kw)


############################################################
#  Molding (the meta layout: tests/test_geometry.py)
############################################################

def test_mold_and_unmold_image(config):
    image = np.random.RandomState(0).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    molded = images.mold_image(image, config)
    assert np.allclose(molded, image - config.MEAN_PIXEL)
    # Stored as float32 (as batches are), matterport's truncation lost 1 on many values.
    assert np.array_equal(images.unmold_image(molded.astype(np.float32), config), image)


############################################################
#  load_image_gt
############################################################

def test_load_image_gt_shapes_dtypes_and_meta(config):
    ds = one_square_dataset()
    image, meta, class_ids, bbox, mask = ground_truth.load_image_gt(ds, config, 0, use_mini_mask=False)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert class_ids.dtype == np.int32 and list(class_ids) == [1, 2]
    assert bbox.dtype == np.int32 and bbox.tolist() == [[10, 40, 30, 60], [68, 68, 93, 93]]
    assert mask.dtype == bool and mask.shape == (128, 128, 2)
    assert mask[10:30, 40:60, 0].all() and mask[:, :, 0].sum() == 400
    p = image_meta.parse_image_meta(meta)
    assert p["image_id"] == 0 and list(p["window"]) == [0, 0, 128, 128] and p["scale"] == 1
    assert list(p["active_class_ids"]) == [1, 1, 1]


def test_load_image_gt_resizes_and_pads_like_resize_image(config):
    ds = ShapesDataset(count=1, size=(96, 64), shapes={0: [(1, 48, 32, 12)]})
    image, meta, class_ids, bbox, mask = ground_truth.load_image_gt(ds, config, 0, use_mini_mask=False)
    expected, window, scale, padding, _ = utils.resize_image(
        ds.load_image(0), min_dim=128, max_dim=128, mode="square")
    assert np.array_equal(image, expected)
    p = image_meta.parse_image_meta(meta)
    assert list(p["original_image_shape"]) == [96, 64, 3]
    assert list(p["image_shape"]) == [128, 128, 3]
    assert tuple(p["window"]) == window == (0, 21, 128, 106)
    assert p["scale"] == pytest.approx(scale) == pytest.approx(4 / 3)
    assert np.array_equal(mask[..., 0], utils.resize_mask(ds.load_mask(0)[0], scale, padding)[..., 0])
    # The 24x24 square at rows 36..59, cols 20..43 scaled by 4/3 and shifted by the left padding.
    assert np.allclose(bbox[0], [36 * scale, 20 * scale + 21, 60 * scale, 44 * scale + 21], atol=1)


def test_mini_masks_crop_each_instance_to_its_box(config):
    ds = one_square_dataset()
    _, _, _, bbox, full = ground_truth.load_image_gt(ds, config, 0, use_mini_mask=False)
    _, _, _, mini_bbox, mini = ground_truth.load_image_gt(ds, config, 0)  # None -> USE_MINI_MASK (True)
    assert mini.shape == (56, 56, 2) and mini.dtype == bool
    assert np.array_equal(bbox, mini_bbox)
    assert mini[..., 0].all()  # the square fills its box
    assert 0.7 < mini[..., 1].mean() < 0.85  # a disc covers pi/4 of its box
    restored = utils.expand_mask(mini_bbox, mini, (128, 128))
    assert utils.compute_overlaps_masks(restored, full).diagonal().min() > 0.95


def test_active_class_ids_follow_the_image_source(config):
    ds = ShapesDataset(count=1, source="a")
    ds.add_class("b", 1, "other")
    ds.add_image("b", image_id=0, path=None, size=(128, 128), shapes=[(1, 50, 50, 10)])
    ds.prepare()
    config.NUM_CLASSES = 4
    _, meta, _, _, _ = ground_truth.load_image_gt(ds, config, 1)
    assert list(image_meta.parse_image_meta(meta)["active_class_ids"]) == [1, 0, 0, 1]


def test_crowd_class_ids_are_kept(config):
    class Crowd(ShapesDataset):
        def load_mask(self, image_id):
            mask, class_ids = super().load_mask(image_id)
            return mask, -class_ids

    _, _, class_ids, _, _ = ground_truth.load_image_gt(Crowd(count=1, shapes={0: [(2, 50, 50, 9)]}), config, 0)
    assert list(class_ids) == [-2]


############################################################
#  Augmentation
############################################################

def hflip(image, masks):
    return image[:, ::-1], masks[:, ::-1]


def test_callable_augmentation_moves_image_and_masks_together(config):
    ds = one_square_dataset()
    image, _, class_ids, bbox, mask = ground_truth.load_image_gt(ds, config, 0, augmentation=hflip,
                                                         use_mini_mask=False)
    plain, _, _, plain_bbox, plain_mask = ground_truth.load_image_gt(ds, config, 0, use_mini_mask=False)
    assert np.array_equal(image, plain[:, ::-1])
    assert np.array_equal(mask, plain_mask[:, ::-1])
    y1, x1, y2, x2 = plain_bbox.T
    assert np.array_equal(bbox, np.stack([y1, 128 - x2, y2, 128 - x1], axis=1))
    assert list(class_ids) == [1, 2]
    # The flipped square's pixels still carry the square's colour.
    assert (image[mask[..., 0]] == plain[plain_mask[..., 0]][0]).all()


def test_instances_emptied_by_augmentation_are_dropped_with_their_class(config):
    ds = ShapesDataset(count=1, shapes={0: [(1, 20, 20, 8), (2, 60, 60, 9), (1, 100, 100, 8)]})

    def erase_middle(image, masks):
        image, masks = image.copy(), masks.copy()
        image[40:80, 40:80] = 0
        masks[40:80, 40:80] = False
        return image, masks

    _, _, class_ids, bbox, mask = ground_truth.load_image_gt(ds, config, 0, augmentation=erase_middle)
    assert list(class_ids) == [1, 1]
    assert bbox.tolist() == [[12, 12, 28, 28], [92, 92, 108, 108]]
    assert mask.shape == (56, 56, 2) and mask.all()


def test_deprecated_augment_flips_half_of_the_time(config):
    ds = one_square_dataset()
    plain = ground_truth.load_image_gt(ds, config, 0)[0]
    np.random.seed(0)
    with pytest.warns(FutureWarning, match="'augment' is deprecated"):
        images = [ground_truth.load_image_gt(ds, config, 0, augment=True)[0] for _ in range(8)]
    flipped = [np.array_equal(image, plain[:, ::-1]) for image in images]
    assert all(f or np.array_equal(image, plain) for f, image in zip(flipped, images))
    assert 0 < sum(flipped) < 8


def test_augmentation_that_breaks_the_contract_is_refused(config):
    ds = one_square_dataset()
    with pytest.raises(ValueError, match="changed the image shape"):
        ground_truth.load_image_gt(ds, config, 0, augmentation=lambda i, m: (i[:64], m[:64]))
    with pytest.raises(ValueError, match="masks of shape"):
        ground_truth.load_image_gt(ds, config, 0, augmentation=lambda i, m: (i, m[..., :1]))
    with pytest.raises(ValueError, match="imgaug augmenter or a callable"):
        ground_truth.load_image_gt(ds, config, 0, augmentation="fliplr")


def test_float_masks_from_augmentation_are_thresholded(config):
    ds = one_square_dataset()
    _, _, _, bbox, _ = ground_truth.load_image_gt(
        ds, config, 0, augmentation=lambda i, m: (i, m * 0.6 + 0.3 * np.roll(m, 5, axis=0)))
    assert bbox.tolist() == [[10, 40, 30, 60], [68, 68, 93, 93]]


def test_imgaug_hook_applies_only_geometric_augmenters_to_masks(config, monkeypatch):
    calls = []

    class HooksImages:
        def __init__(self, activator):
            self.activator = activator

    class Fliplr:
        def apply(self, x):
            return x[:, ::-1]

    class Multiply:
        def apply(self, x):
            return (x // 2).astype(x.dtype)

    class Deterministic:
        children = (Fliplr(), Multiply())

        def augment_image(self, image, hooks=None):
            calls.append(image.dtype)
            for child in self.children:
                if hooks is None or hooks.activator([image], child, [], True):
                    image = child.apply(image)
            return image

    class Sequential:
        def to_deterministic(self):
            return Deterministic()

    monkeypatch.setitem(sys.modules, "imgaug", types.SimpleNamespace(HooksImages=HooksImages))
    ds = one_square_dataset()
    plain, _, _, _, plain_mask = ground_truth.load_image_gt(ds, config, 0, use_mini_mask=False)
    image, _, _, bbox, mask = ground_truth.load_image_gt(ds, config, 0, augmentation=Sequential(),
                                                 use_mini_mask=False)
    assert calls == [np.uint8, np.uint8]  # image, then masks as uint8 (imgaug has no bool)
    assert np.array_equal(image, plain[:, ::-1] // 2)
    assert np.array_equal(mask, plain_mask[:, ::-1])
    assert bbox[0].tolist() == [10, 68, 30, 88]


############################################################
#  Bad dataset output
############################################################

class Broken(ShapesDataset):
    def __init__(self, fault, **kw):
        self.fault = fault
        super().__init__(count=3, **kw)

    def load_mask(self, image_id):
        mask, class_ids = super().load_mask(image_id)
        if self.fault == "size":
            return mask[:100], class_ids
        if self.fault == "count":
            return mask, class_ids[:-1]
        if self.fault == "zero":
            return mask, class_ids * 0
        if self.fault == "high":
            return mask, class_ids + 5
        if self.fault == "2d":
            return mask[..., 0], class_ids[:1]
        return mask, class_ids


@pytest.mark.parametrize("fault, message", [
    ("size", r"Image 0 \(source .*\): load_mask returned masks of size \(100, 128\) for an image of size \(128, 128\)"),
    ("count", r"Image 0 \(source .*\): load_mask returned \d masks but \d class ids"),
    ("zero", r"Image 0 \(source .*\): load_mask returned class ids \[0\] outside 1..2"),
    ("high", r"Image 0 \(source .*\): .*class ids \[7\] outside 1..2 \(NUM_CLASSES is 3"),
    ("2d", r"Image 0 \(source .*\): .*shape \(128, 128\).*np.newaxis"),
])
def test_bad_load_mask_output_is_explained(config, fault, message):
    with pytest.raises(ValueError, match=message):
        ground_truth.load_image_gt(Broken(fault), config, 0)


def test_dataset_config_class_mismatch_is_explained(config):
    config.NUM_CLASSES = 5
    with pytest.raises(ValueError, match="dataset has 3 classes.*NUM_CLASSES is 5"):
        ground_truth.load_image_gt(ShapesDataset(count=1), config, 0)


def test_generator_raises_the_real_error_after_repeated_failures(config, caplog):
    gen = pipeline.data_generator(Broken("size"), config, batch_size=2)
    with caplog.at_level(logging.ERROR, logger="mrcnn.ground_truth"):
        with pytest.raises(ValueError, match="masks of size") as info:
            next(gen)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == ground_truth.MAX_CONSECUTIVE_ERRORS + 1
    assert all(r.exc_info and "masks of size" in str(r.exc_info[1]) for r in failures)
    assert any("in a row failed" in note for note in info.value.__notes__)


############################################################
#  RPN targets
############################################################

def test_rpn_targets_on_hand_made_boxes(config):
    gt_boxes = np.array([[0, 0, 10, 10], [30, 30, 40, 44], [80, 80, 100, 100]], np.int32)
    gt_class_ids = np.array([1, 2, -1], np.int32)  # the third is a crowd
    anchors = np.array([
        [0, 0, 10, 10],      # IoU 1 with GT 0             -> positive
        [0, 0, 10, 12],      # IoU 0.83 with GT 0          -> positive
        [0, 0, 10, 20],      # IoU 0.5                     -> neutral
        [50, 50, 60, 60],    # IoU 0                       -> negative
        [28, 30, 40, 50],    # IoU 0.58, GT 1's best       -> positive
        [26, 30, 40, 50],    # IoU 0.5, not the best       -> neutral
        [85, 85, 95, 95],    # IoU 0 but inside the crowd  -> neutral
        [100, 100, 110, 110],  # touches the crowd's corner -> negative
        [80, 80, 100, 100],  # the crowd box itself        -> neutral, never positive
    ], np.float64)
    rpn_match, rpn_bbox = targets.build_rpn_targets((128, 128, 3), anchors, gt_class_ids, gt_boxes, config)
    assert rpn_match.dtype == np.int32
    assert rpn_match.tolist() == [1, 1, 0, -1, 1, 0, 0, -1, 0]
    assert rpn_bbox.shape == (64, 4)
    expected = utils.box_refinement(anchors[[0, 1, 4]], gt_boxes[[0, 0, 1]]) / config.RPN_BBOX_STD_DEV
    assert np.allclose(rpn_bbox[:3], expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(rpn_bbox[1], [0, -1 / 12 / 0.1, 0, np.log(10 / 12) / 0.2])
    assert not rpn_bbox[3:].any()


def test_rpn_targets_are_balanced(config):
    rng = np.random.RandomState(1)
    gt_boxes = np.array([[20, 20, 80, 80]], np.int32)
    near = gt_boxes + rng.randint(-2, 3, (200, 4))      # 200 anchors with IoU > 0.85
    far = np.array([[100, 100, 120, 120]] * 500)        # 500 negatives
    anchors = np.concatenate([near, far]).astype(np.float64)
    np.random.seed(0)
    rpn_match, rpn_bbox = targets.build_rpn_targets((128, 128, 3), anchors, np.array([1]), gt_boxes, config)
    positives = np.where(rpn_match == 1)[0]
    assert len(positives) == 32 and np.sum(rpn_match == -1) == 32
    assert positives.max() < 200 and np.all(rpn_match[:200] >= 0)
    expected = utils.box_refinement(anchors[positives], gt_boxes[[0] * 32]) / config.RPN_BBOX_STD_DEV
    assert np.allclose(rpn_bbox[:32], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(rpn_bbox[:32]).sum() > 0


def test_rpn_targets_with_degenerate_ground_truth(config):
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    # A zero-area box overlaps nothing: matterport made every anchor positive with -inf deltas.
    match, bbox = targets.build_rpn_targets((128, 128, 3), anchors, np.array([1]),
                                         np.array([[5, 5, 5, 9]]), config)
    assert not np.any(match == 1) and np.sum(match == -1) == 64 and np.isfinite(bbox).all()
    # Only crowds: no positives, no negatives on the crowd, no crash.
    crowd = np.array([[0, 0, 64, 64]])
    match, _ = targets.build_rpn_targets((128, 128, 3), anchors, np.array([-1]), crowd, config)
    touching = utils.compute_overlaps(anchors, crowd)[:, 0] >= 0.001
    assert not np.any(match == 1) and not np.any(match[touching] == -1)


############################################################
#  Head targets
############################################################

def test_generate_random_rois():
    gt_boxes = np.array([[10, 10, 30, 40], [60, 70, 100, 90]], np.int32)
    np.random.seed(3)
    rois = targets.generate_random_rois((128, 128, 3), 50, np.array([1, 2]), gt_boxes)
    assert rois.shape == (50, 4) and rois.dtype == np.int32
    assert np.all(rois[:, 2] > rois[:, 0]) and np.all(rois[:, 3] > rois[:, 1])
    assert rois.min() >= 0 and rois[:, [0, 2]].max() < 128 and rois[:, [1, 3]].max() < 128
    # int(0.9 * 50 / 2) = 22 per box, drawn inside the box grown by its size.
    assert np.all(rois[:22] >= [0, 0, 0, 0]) and np.all(rois[:22, [2, 3]] < [50, 70])
    assert np.all(rois[22:44, :2] >= [20, 50]) and np.all(rois[22:44, [2, 3]] < [128, 110])


def test_build_detection_targets(config):
    ds = one_square_dataset()
    config.USE_MINI_MASK = True
    _, _, class_ids, gt_boxes, mini = ground_truth.load_image_gt(ds, config, 0)
    rois = np.concatenate([gt_boxes, gt_boxes + [0, 0, 1, 1],
                           [[100, 0, 120, 20], [0, 100, 20, 120], [110, 110, 127, 127]]]).astype(np.int32)
    np.random.seed(0)
    out_rois, out_ids, deltas, masks = targets.build_detection_targets(rois, class_ids, gt_boxes, mini, config)
    assert out_rois.shape == (32, 4) and out_ids.shape == (32,) and out_ids.dtype == np.int32
    assert deltas.shape == (32, 3, 4) and deltas.dtype == np.float32
    assert masks.shape == (32, 28, 28, 3) and masks.dtype == np.float32
    assert sorted(out_ids[:4].tolist()) == [1, 1, 2, 2] and not out_ids[4:].any()
    assert all(tuple(r) in {(100, 0, 120, 20), (0, 100, 20, 120), (110, 110, 127, 127)}
               for r in out_rois[4:])
    for i in range(4):
        gt = np.argmax(utils.compute_overlaps(out_rois[i:i + 1], gt_boxes))
        expected = utils.box_refinement(out_rois[i:i + 1], gt_boxes[gt:gt + 1])[0] / config.BBOX_STD_DEV
        assert np.allclose(deltas[i, out_ids[i]], expected)
        assert not np.delete(deltas[i], out_ids[i], axis=0).any()
    exact = [i for i in range(4) if tuple(out_rois[i]) == tuple(gt_boxes[0])][0]
    assert masks[exact, :, :, 1].min() == 1 and not masks[exact, :, :, [0, 2]].any()
    assert not masks[4:].any()
    # Only positives (matterport crashed): they are repeated to fill the rows.
    only_fg = np.repeat(gt_boxes, 3, axis=0)
    _, ids, _, _ = targets.build_detection_targets(only_fg, class_ids, gt_boxes, mini, config)
    assert ids.shape == (32,) and np.all(ids > 0)


############################################################
#  data_generator
############################################################

def test_generator_batches(config):
    ds = ShapesDataset(count=5)
    inputs, outputs = next(pipeline.data_generator(ds, config, shuffle=False, batch_size=2))
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    assert outputs == []
    expected = [((2, 128, 128, 3), np.float32), ((2, 15), np.float64),
                ((2, len(anchors), 1), np.int32), ((2, 64, 4), np.float64),
                ((2, 10), np.int32), ((2, 10, 4), np.int32), ((2, 56, 56, 10), bool)]
    assert [(x.shape, x.dtype) for x in inputs] == expected
    spec = pipeline.batch_spec(config)       # the named batch, in its order and shapes
    assert [x.shape[1:] for x in inputs] == [shape for _, _, shape in spec]
    for b in range(2):
        image, meta, class_ids, boxes, masks = ground_truth.load_image_gt(ds, config, b)
        n = len(class_ids)
        assert np.allclose(inputs[0][b], images.mold_image(image, config))
        assert np.array_equal(inputs[1][b], meta)
        assert inputs[4][b, :n].tolist() == class_ids.tolist() and not inputs[4][b, n:].any()
        assert np.array_equal(inputs[5][b, :n], boxes) and not inputs[5][b, n:].any()
        assert np.array_equal(inputs[6][b, :, :, :n], masks) and not inputs[6][b, :, :, n:].any()
        match, _ = targets.build_rpn_targets(image.shape, anchors, class_ids, boxes, config)
        positives = np.where(match == 1)[0]
        assert 0 < len(positives) < 32  # so not subsampled at random
        assert np.array_equal(np.where(inputs[2][b, :, 0] == 1)[0], positives)
        assert np.sum(inputs[2][b] == -1) == 64 - len(positives)


def test_generator_random_rois_and_detection_targets(config):
    inputs, outputs = next(pipeline.data_generator(ShapesDataset(count=3), config, batch_size=2,
                                               random_rois=40, detection_targets=True))
    assert len(inputs) == 9 and len(outputs) == 3
    assert inputs[7].shape == (2, 40, 4) and inputs[8].shape == (2, 32, 4)
    assert outputs[0].shape == (2, 32, 1) and outputs[1].shape == (2, 32, 3, 4)
    assert outputs[2].shape == (2, 32, 28, 28, 3)
    assert np.all(outputs[0][:, :, 0] >= 0) and outputs[0].max() > 0
    assert np.all(np.isin(inputs[8].reshape(-1, 4), inputs[7].reshape(-1, 4)).all(axis=1))
    spec = pipeline.batch_spec(config, 40, detection_targets=True)
    names = [name for name, _, _ in spec]
    assert names[7:9] == ["input_roi", "target_rois"] and tuple(names[9:]) == pipeline.TARGET_OUTPUTS
    assert [x.shape[1:] for x in inputs + outputs] == [shape for _, _, shape in spec]


def test_generator_skips_images_without_instances(config, caplog):
    ds = ShapesDataset(count=4, shapes={0: [], 2: []})
    with caplog.at_level(logging.WARNING, logger="mrcnn.ground_truth"):
        gen = pipeline.data_generator(ds, config, shuffle=False, batch_size=2)
        inputs, _ = next(gen)
    assert image_meta.parse_image_meta(inputs[1])["image_id"].tolist() == [1, 3]
    assert sum("no instances" in r.getMessage() for r in caplog.records) == 2
    assert "(2 skipped so far)" in caplog.records[-1].getMessage()
    with pytest.raises(ValueError, match="no image of the dataset has instances"):
        next(pipeline.data_generator(ShapesDataset(count=2, shapes={0: [], 1: []}), config))


def test_skip_rules_count_failures_in_a_row_and_keep_the_fatal_error(config, caplog):
    """The rules both batching loops follow (`ground_truth.SkipRules`)."""
    class EveryOtherBroken(ShapesDataset):
        def load_image(self, image_id):
            if image_id % 2:
                raise OSError(f"cannot read image {image_id}")
            return super().load_image(image_id)

    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    rules = ground_truth.SkipRules("test", EveryOtherBroken(count=4), config)
    with caplog.at_level(logging.ERROR, logger="mrcnn.ground_truth"):
        loaded = [rules.load(i % 4, anchors, None, 0) for i in range(4 * ground_truth.MAX_CONSECUTIVE_ERRORS)]
    assert [s is None for s in loaded] == [False, True] * (2 * ground_truth.MAX_CONSECUTIVE_ERRORS)
    assert loaded[0].gt_class_ids.shape[0] == loaded[0].gt_boxes.shape[0] > 0 and rules.error is None
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 2 * ground_truth.MAX_CONSECUTIVE_ERRORS
    config.IMAGE_RESIZE_MODE = "pad64"
    wrong = ground_truth.SkipRules("test", ShapesDataset(count=1, size=(128, 96)), config)
    with pytest.raises(ground_truth.TrainingShapeError) as info:
        wrong.load(0, anchors, None, 0)
    assert wrong.error is info.value


def test_generator_leaves_listed_sources_unaugmented(config):
    ds = ShapesDataset(count=2)
    plain = pipeline.data_generator(ds, config, shuffle=False, batch_size=2)
    flipped = pipeline.data_generator(ds, config, shuffle=False, batch_size=2, augmentation=hflip)
    excluded = pipeline.data_generator(ds, config, shuffle=False, batch_size=2, augmentation=hflip,
                                   no_augmentation_sources=["shapes"])
    a, b, c = next(plain)[0][0], next(flipped)[0][0], next(excluded)[0][0]
    assert np.array_equal(b, a[:, :, ::-1]) and np.array_equal(c, a)

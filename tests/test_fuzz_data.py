"""Issue 15: a careless dataset costs a clear message, never a TensorFlow stack trace or a
silent wrong result. Hypothesis searches (derandomized, bounded) over what `load_image` /
`load_mask` return, over damaged annotation files, over Config values and over image paths.

Each generated case ends in one of: correct handling (checked against the input), a
ValueError / AnnotationError naming the item and the fix, or, in the training loops, the
image skipped with one log record and counted."""

import copy
import json
import logging
import math
import os
import pathlib
import warnings

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mrcnn import ground_truth, pipeline, utils
from mrcnn.config import INT32_MAX
from mrcnn.formats import AnnotationError, CocoDataset, LabelmeDataset, ViaDataset, load_dataset
from mrcnn.formats import common
from mrcnn.geometry import compute_anchors
from tests.conftest import TinyConfig

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
CONFIG = TinyConfig()
ANCHORS = compute_anchors(CONFIG, CONFIG.IMAGE_SHAPE)


############################################################
#  Dataset outputs: load_image / load_mask of a user's Dataset
############################################################

class Returns(utils.Dataset):
    """One image per (image, masks, class_ids) triple: load_image / load_mask return them as given."""

    def __init__(self, *outputs):
        super().__init__()
        for class_id in (1, 2, 3):
            self.add_class("user", class_id, f"c{class_id}")
        for i, output in enumerate(outputs):
            self.add_image("user", image_id=f"src-{i}", path=None, output=output)
        self.prepare()

    def load_image(self, image_id):
        return self.image_info[image_id]["output"][0]

    def load_mask(self, image_id):
        return self.image_info[image_id]["output"][1:]


@st.composite
def good_outputs(draw, min_instances=0):
    """A valid (image, bool masks [H, W, N], int32 class ids [N]): boxes of random size."""
    h, w = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    n = draw(st.integers(min_instances, 12))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((h, w, n), bool)
    for i in range(n):
        y, x = rng.integers(0, h), rng.integers(0, w)
        masks[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, w + 1), i] = True
    return image, masks, rng.integers(1, 4, n).astype(np.int32)


# Faults of load_mask's output: (name, mutate(image, masks, ids, rng) -> output, message part).
def _soft(m, rng):
    soft = m.astype(np.float32)
    soft[m] = rng.uniform(0.01, 0.99)
    return soft


def _with_nan(image, rng):
    image = image / 255.0
    image.flat[rng.integers(image.size)] = np.nan
    return image


MASK_FAULTS = [
    ("soft float mask", lambda i, m, c, r: (i, _soft(m, r), c), "float masks with values other"),
    ("NaN float mask", lambda i, m, c, r: (i, np.where(m, np.nan, 0.0), c), "e.g. nan"),
    ("object mask", lambda i, m, c, r: (i, m.astype(object), c), "masks of dtype object"),
    ("string ids", lambda i, m, c, r: (i, m, c.astype(str)), "non-integer class ids"),
    ("fractional ids", lambda i, m, c, r: (i, m, c + 0.5), "non-integer class ids"),
    ("HxW mask", lambda i, m, c, r: (i, m.any(axis=-1), c), "masks of shape"),
    ("one id too many", lambda i, m, c, r: (i, m, np.append(c, 1)), "class ids. Return one class"),
    ("mask of another size", lambda i, m, c, r: (i, np.pad(m, ((0, 1), (0, 0), (0, 0))), c),
     "for an image of size"),
    ("background id", lambda i, m, c, r: (i, m, np.where(np.arange(c.size) == 0, 0, c)),
     "outside 1..3"),
    ("id >= NUM_CLASSES", lambda i, m, c, r: (i, m, c + 3), "outside 1..3"),
    ("id wrapping int32", lambda i, m, c, r: (i, m, c.astype(np.int64) + 2 ** 32), "outside 1..3"),
    ("NaN pixel", lambda i, m, c, r: (_with_nan(i, r), m, c), "NaN or infinite"),
    ("inf image", lambda i, m, c, r: (np.full(i.shape, np.inf, np.float32), m, c),
     "NaN or infinite"),
    ("not a pair", lambda i, m, c, r: (i, m), "not (masks, class_ids)"),
]


def _load(dataset, image_id=0):
    """load_image_gt's output, and the training Sample (None: skipped) from SkipRules."""
    gt = ground_truth.load_image_gt(dataset, CONFIG, image_id)
    return gt, ground_truth.SkipRules("fuzz", dataset, CONFIG).load(image_id, ANCHORS, None, 0)


@FUZZ
@given(good_outputs(min_instances=1), st.sampled_from(MASK_FAULTS), st.integers(0, 2 ** 16))
def test_bad_load_mask_output_is_a_value_error_naming_image_source_id_and_fix(output, fault,
                                                                             seed):
    name, mutate, message = fault
    dataset = Returns(mutate(*output, np.random.default_rng(seed)))
    with pytest.raises(ValueError) as info:
        ground_truth.load_image_gt(dataset, CONFIG, 0)
    text = str(info.value)
    assert message in text, (name, text)
    assert text.startswith("Image 0 (source 'user', id 'src-0'"), text
    assert any(fix in text for fix in ("Return", "threshold", "raise NUM_CLASSES", "Replace")), text


def _as(kind, masks):
    """The same masks in another accepted encoding."""
    return {"bool": masks, "uint8 0/255": masks.astype(np.uint8) * 255,
            "float 0/1": masks.astype(np.float32), "int64": masks.astype(np.int64)}[kind]


@FUZZ
@given(good_outputs(), st.sampled_from(["bool", "uint8 0/255", "float 0/1", "int64"]),
       st.sampled_from([np.int32, np.int64, np.uint8, np.float64]), st.booleans())
def test_accepted_outputs_keep_every_drawn_instance_with_its_class(output, encoding, id_dtype,
                                                                  crowd):
    """Masks as bool, integers (non-zero set) or 0/1 floats and ids of any integer dtype (or
    integral floats) give the same result; empty masks are dropped with their ids; an image
    with no (non-crowd) instance is skipped by SkipRules."""
    image, masks, ids = output
    ids = -ids if crowd and id_dtype is not np.uint8 else ids
    _, _, class_ids, boxes, mini = ground_truth.load_image_gt(
        Returns((image, masks, ids)), CONFIG, 0, use_mini_mask=False)
    (_, _, same_ids, same_boxes, _), sample = _load(
        Returns((image, _as(encoding, masks), ids.astype(id_dtype))))
    assert class_ids.dtype == same_ids.dtype == np.int32 and mini.dtype == bool
    np.testing.assert_array_equal(same_ids, class_ids)
    np.testing.assert_array_equal(same_boxes, boxes)
    kept = masks.any(axis=(0, 1))   # every drawn box has a pixel, resized or not
    np.testing.assert_array_equal(class_ids, ids[kept])
    assert mini.shape == (128, 128, kept.sum()) and mini.any(axis=(0, 1)).all()
    assert np.all((boxes[:, :2] < boxes[:, 2:]) & (boxes[:, 2:] <= 128))
    if not np.any(class_ids > 0):
        assert sample is None
    else:
        assert 0 < len(sample.gt_class_ids) <= min(CONFIG.MAX_GT_INSTANCES, kept.sum())
        assert set(sample.gt_class_ids.tolist()) <= set(class_ids.tolist())


@settings(FUZZ, max_examples=30)
@given(st.integers(1, 12000), st.integers(1, 64), st.booleans())
def test_any_image_size_resizes_or_is_refused_by_name(long, short, tall):
    """1x1 up to 12000x64 images: resized into 128x128, or (too elongated to keep a pixel
    across) a ValueError naming the image and the fix."""
    h, w = (long, short) if tall else (short, long)
    dataset = Returns((np.zeros((h, w), np.uint8), np.ones((h, w, 1), bool), np.array([2])))
    scale = 128 / max(h, w)
    if round(min(h, w) * scale) == 0:
        with pytest.raises(ValueError, match=r"Image 0 \(source 'user', id 'src-0'.*is "
                                             rf"{h}x{w} pixels.*Crop or tile"):
            ground_truth.load_image_gt(dataset, CONFIG, 0)
    else:
        (image, meta, ids, boxes, _), sample = _load(dataset)
        assert image.shape == (128, 128, 3) and ids.tolist() == [2] == sample.gt_class_ids.tolist()
        y1, x1, y2, x2 = boxes[0]
        # The mask fills the resized image, to a pixel (matterport's mask zoom rounds apart).
        assert abs((y2 - y1) - round(h * scale)) <= 1 and abs((x2 - x1) - round(w * scale)) <= 1


def test_more_instances_than_max_gt_instances_keep_a_random_subset():
    """As matterport: MAX_GT_INSTANCES of them, drawn at random, each with its own class."""
    masks = np.zeros((64, 64, 20), bool)
    for i in range(20):
        masks[3 * i:3 * i + 2, 3 * i:3 * i + 2, i] = True
    ids = np.arange(20) % 3 + 1
    sample = ground_truth.SkipRules("t", Returns((np.zeros((64, 64, 3), np.uint8), masks, ids)),
                                    CONFIG).load(0, ANCHORS, None, 0, rng=np.random.RandomState(0))
    rows = sample.gt_boxes[:, 0] // 6          # instance i starts at row 3 * i * 2 (scale 2)
    assert len(rows) == CONFIG.MAX_GT_INSTANCES == len(set(rows.tolist()))
    np.testing.assert_array_equal(sample.gt_class_ids, ids[rows])


GOOD = (np.zeros((64, 64, 3), np.uint8), np.pad(np.ones((8, 8, 1), bool), ((4, 52), (4, 52), (0, 0))),
        np.array([1], np.int32))
BAD = {"soft mask": (GOOD[0], GOOD[1] * 0.7, GOOD[2]), "N differs": (*GOOD[:2], np.array([1, 2])),
       "id 9": (*GOOD[:2], np.array([9])), "NaN image": (GOOD[0] * np.nan, *GOOD[1:])}
EMPTY = {"no instances": (GOOD[0], np.zeros((64, 64, 0), bool), np.zeros(0, np.int32)),
         "all-zero mask": (GOOD[0], np.zeros((64, 64, 1), bool), np.array([2])),
         "crowd only": (*GOOD[:2], np.array([-1]))}
KINDS = ["good"] + sorted(BAD) + sorted(EMPTY)


def _outputs(kinds):
    return [GOOD if k == "good" else BAD.get(k) or EMPTY[k] for k in kinds]


@FUZZ
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=10).filter(
    lambda kinds: "good" in kinds and "good good good good good good" not in " ".join(kinds)))
def test_data_generator_skips_each_bad_image_once_with_one_record_and_counts_it(kinds, caplog):
    """Bad and empty images among good ones: batches hold only the good ones, each skipped
    image costs one log record with the running totals, which SkipRules keeps."""
    dataset = Returns(*_outputs(kinds))
    rules = []
    real = ground_truth.SkipRules
    pipeline.SkipRules = lambda *a: rules.append(real(*a)) or rules[-1]   # to read its counts
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mrcnn.ground_truth"):
        try:
            generator = pipeline.data_generator(dataset, CONFIG, shuffle=False, batch_size=1)
            batches = [next(generator)[0] for _ in range(kinds.count("good"))]
        finally:
            pipeline.SkipRules = real
    seen = [int(b[1][0, 0]) for b in batches]   # image_meta[0] is the image id
    assert seen == [i for i, k in enumerate(kinds) if k == "good"]
    last_good = max(seen)
    skipped = [i for i, k in enumerate(kinds[:last_good]) if k != "good"]
    records = [r for r in caplog.records if r.name == "mrcnn.ground_truth"]
    assert [int(r.args[0].split()[0]) for r in records] == skipped
    failed = [i for i in skipped if kinds[i] in BAD]
    assert (rules[0].failed, rules[0].no_instances) == (len(failed), len(skipped) - len(failed))
    if failed:
        last = [r for r in records if int(r.args[0].split()[0]) == failed[-1]][0]
        assert f"({len(failed)} failed to load so far)" in last.getMessage()
        assert "id 'src-" in last.getMessage() and last.exc_info[0] is ValueError


def test_training_pipeline_skips_bad_images_without_a_tensorflow_error(caplog):
    """The tf.data pipeline follows the same rules: only good images reach the batches."""
    kinds = ["soft mask", "good", "crowd only", "id 9", "good", "NaN image", "good", "good"]
    with caplog.at_level(logging.WARNING, logger="mrcnn.ground_truth"):
        data, loader = pipeline.build_pipeline(Returns(*_outputs(kinds)), CONFIG, shuffle=False,
                                               steps=2, workers=1)
        batches = list(data.take(2))
    ids = [int(v) for b in batches for v in b["input_image_meta"][:, 0].numpy()]
    assert ids == [1, 4, 6, 7]
    records = [r for r in caplog.records if r.name == "mrcnn.ground_truth"]
    # Prefetching may have loaded the next epoch's first images too.
    assert {int(r.args[0].split()[0]) for r in records} == {0, 2, 3, 5}
    errors = sum(r.levelno == logging.ERROR for r in records)
    assert (loader.rules.failed, loader.rules.no_instances) == (errors, len(records) - errors)
    assert loader.rules.failed >= 3 and loader.rules.no_instances >= 1 and loader.rules.error is None

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
import pathlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mrcnn import ground_truth, pipeline, utils
from mrcnn.config import INT32_MAX
from mrcnn.formats import AnnotationError, CocoDataset, LabelmeDataset, load_dataset
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


############################################################
#  Annotation files: COCO, VIA, labelme
############################################################

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([2 ** 40, -2 ** 40]),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                 st.lists(st.one_of(st.integers(-2, 50), st.text(max_size=2)), max_size=4),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _places(data, prefix=()):
    """Every (path of keys) inside a JSON value."""
    if isinstance(data, dict | list):
        for key, value in (data.items() if isinstance(data, dict) else enumerate(data)):
            yield prefix + (key,)
            yield from _places(value, prefix + (key,))


@st.composite
def damaged(draw, data):
    """`data` with 1-3 values replaced by junk or deleted."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        places = list(_places(data))
        if not places:
            break
        *parents, key = draw(st.sampled_from(places))
        holder = data
        for k in parents:
            holder = holder[k]
        if draw(st.booleans()) and draw(st.booleans()):
            del holder[key]
        else:
            holder[key] = draw(JUNK)
    return data


def _load_all(format, path, **options):
    """Load, then load_mask every image; the masks must fit the images' declared size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = load_dataset(format, path, **options)
    for image_id in dataset.image_ids:
        info = dataset.image_info[image_id]
        masks, ids = dataset.load_mask(image_id)
        assert masks.dtype == bool and ids.dtype == np.int32
        assert masks.shape == (info["height"], info["width"], len(ids))
        assert np.all((np.abs(ids) >= 1) & (np.abs(ids) < dataset.num_classes))
    for problem in dataset.problems:
        assert str(problem).startswith(problem.file) and problem.kind in common.__dict__.values()
    return dataset


def _check_damaged_load(format, path, named, on_error, **options):
    """A damaged file loads (documented handling, checked by _load_all) or raises a
    ValueError / FileNotFoundError / AnnotationError naming the file."""
    try:
        _load_all(format, path, on_error=on_error, **options)
    except (ValueError, FileNotFoundError) as e:   # AnnotationError is a ValueError
        assert named in str(e), str(e)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    from tests import test_formats as tf
    root = tmp_path_factory.mktemp("formats")
    tf.write_coco(root / "coco")
    tf.write_via(root / "via", 2)
    tf.write_labelme(root / "labelme")
    return root, tf


@FUZZ
@given(data=st.data(), on_error=st.sampled_from(["skip", "raise"]))
def test_damaged_coco_file_is_reported_by_file_and_id(fixtures, data, on_error):
    root, tf = fixtures
    path = root / "coco" / "annotations.json"
    path.write_text(json.dumps(data.draw(damaged(tf.coco_data()))))
    _check_damaged_load("coco", path, "annotations.json", on_error, image_dir=root / "coco" / "images")


@FUZZ
@given(data=st.data(), version=st.sampled_from([1, 2]), on_error=st.sampled_from(["skip", "raise"]))
def test_damaged_via_file_is_reported_by_file_and_id(fixtures, data, version, on_error):
    root, tf = fixtures
    path = root / "via" / "via_region_data.json"
    path.write_text(json.dumps(data.draw(damaged(tf.via_entries(version)))))
    _check_damaged_load("via", path, "via_region_data.json", on_error, class_attribute="name")


@FUZZ
@given(data=st.data(), on_error=st.sampled_from(["skip", "raise"]))
def test_damaged_labelme_file_is_reported_by_file_and_id(fixtures, data, on_error):
    root, _ = fixtures
    folder = root / "labelme"
    original = (folder / "a.json").read_text()
    try:
        (folder / "a.json").write_text(json.dumps(data.draw(damaged(json.loads(original)))))
        _check_damaged_load("labelme", folder, "labelme", on_error)
    finally:
        (folder / "a.json").write_text(original)


@FUZZ
@given(cut=st.integers(0, 400))
def test_truncated_json_names_the_file(fixtures, cut):
    root, tf = fixtures
    path = root / "coco" / "annotations.json"
    text = json.dumps(tf.coco_data())
    path.write_text(text[:cut])
    with pytest.raises(ValueError, match=r"annotations.json.*not a (JSON|COCO)"):
        CocoDataset().load_coco_json(path, root / "coco" / "images")


@pytest.mark.parametrize("change, kind, text", [
    (lambda d: d["annotations"][0]["segmentation"][0].__setitem__(1, float("nan")), "polygon",
     "non-numeric"),
    (lambda d: d["annotations"][0]["segmentation"].__setitem__(0, [100, 100, 120, 100, 120, 130]),
     "outside", "outside the 60x40 image"),
    (lambda d: d["annotations"][1]["segmentation"].__setitem__("counts", "0"), "segmentation",
     "summing to height * width = 2400"),
    (lambda d: d["annotations"][1]["segmentation"].__setitem__("counts", "zz"), "segmentation",
     "not a COCO RLE string"),
    (lambda d: d["annotations"][2]["segmentation"]["counts"].__setitem__(0, -5), "segmentation",
     "non-negative"),
    (lambda d: d["annotations"][1].__setitem__("id", 11), "annotation", "listed twice"),
    (lambda d: d["images"].append(dict(d["images"][0])), "image", "listed twice"),
    (lambda d: d["images"][1].__setitem__("file_name", "gone.png"), "missing_image", "not found"),
    (lambda d: d["annotations"][0].__setitem__("category_id", True), "category", "unknown category"),
    (lambda d: d["annotations"][0].__setitem__("iscrowd", "yes"), "segmentation", "iscrowd"),
])
def test_each_bad_coco_item_names_file_image_and_annotation(tmp_path, change, kind, text):
    from tests import test_formats as tf
    data = tf.coco_data()
    change(data)
    path = tf.write_coco(tmp_path, data)
    with pytest.raises(AnnotationError) as info:
        CocoDataset().load_coco_json(path, tmp_path / "images", on_error="raise")
    problem = info.value.problem
    assert (problem.kind, problem.file) == (kind, str(path)) and text in problem.problem
    assert str(path) in str(info.value) and f"image {problem.image!r}" in str(info.value)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dataset = CocoDataset()
        dataset.load_coco_json(path, tmp_path / "images")
    assert [p.kind for p in dataset.problems] == [kind]


def test_bad_categories_are_a_value_error_naming_the_entry(tmp_path):
    from tests import test_formats as tf
    for categories, text in (([{"id": 1}], r"categories\[0\].*'name'"),
                             ([{"id": "1", "name": "a"}], "integer 'id'"),
                             ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "listed twice")):
        data = tf.coco_data()
        data["categories"] = categories
        with pytest.raises(ValueError, match=rf"annotations.json: .*{text}"):
            CocoDataset().load_coco_json(tf.write_coco(tmp_path, data), tmp_path / "images")


def test_rle_string_counts_agree_with_pycocotools():
    from pycocotools import mask as mask_utils
    from tests.test_formats import uncompressed_rle
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random(tuple(rng.integers(1, 30, 2))) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert common.rle_string_counts(rle["counts"].decode()) == uncompressed_rle(mask)["counts"]
    assert common.rle_string_counts("") == [] and common.rle_string_counts("a") is None


############################################################
#  Config: every public setting, wrong type or range
############################################################

NOT_NUMBER = st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                       st.just(object()), st.just(np.array([1.0, 2.0])))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def bad_int(minimum):
    return st.one_of(NOT_NUMBER, st.booleans(), NON_FINITE, st.integers(max_value=minimum - 1),
                     st.integers(min_value=INT32_MAX + 1),
                     st.floats(minimum, 1e6).filter(lambda v: v != int(v)))


BAD_REAL = st.one_of(NOT_NUMBER, st.booleans(), NON_FINITE)
BAD_FLAG = st.one_of(NOT_NUMBER, st.integers(), st.floats())
BAD_CHOICE = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.just(np.array(["sgd"])))
BAD_POSITIVES = st.one_of(NOT_NUMBER.filter(lambda v: not isinstance(v, list | np.ndarray)),
                          st.integers(), st.just([]), st.lists(st.sampled_from(
                              [0, -1, math.nan, "a", None, [1]]), min_size=1, max_size=5))
COUNTS = ("GPU_COUNT IMAGES_PER_GPU STEPS_PER_EPOCH NUM_CLASSES RPN_ANCHOR_STRIDE "
          "RPN_TRAIN_ANCHORS_PER_IMAGE PRE_NMS_LIMIT POST_NMS_ROIS_TRAINING POST_NMS_ROIS_INFERENCE "
          "TRAIN_ROIS_PER_IMAGE POOL_SIZE MASK_POOL_SIZE MAX_GT_INSTANCES DETECTION_MAX_INSTANCES "
          "FPN_CLASSIF_FC_LAYERS_SIZE TOP_DOWN_PYRAMID_SIZE IMAGE_CHANNEL_COUNT IMAGE_MAX_DIM "
          "ROI_ALIGN_SAMPLING_RATIO").split()
BAD_VALUES = {  # every public setting: values that must be refused
    **{attr: bad_int(1) for attr in COUNTS},
    "VALIDATION_STEPS": bad_int(0),
    "IMAGE_MIN_DIM": bad_int(1).filter(lambda v: v is not None),
    "SEED": st.one_of(NOT_NUMBER.filter(lambda v: v is not None), st.booleans(), NON_FINITE,
                      st.integers(max_value=-1), st.integers(min_value=2 ** 32), st.just(1.5)),
    **{attr: st.one_of(BAD_REAL, st.floats(-1e6, -1e-9), st.floats(1 + 1e-9, 1e6))
       for attr in ("RPN_NMS_THRESHOLD", "ROI_POSITIVE_RATIO", "DETECTION_MIN_CONFIDENCE",
                    "DETECTION_NMS_THRESHOLD")},
    "LEARNING_MOMENTUM": st.one_of(BAD_REAL, st.floats(-1e6, -1e-9), st.floats(1, 1e6)),
    "LEARNING_RATE": st.one_of(BAD_REAL, st.floats(-1e6, 0)),
    **{attr: st.one_of(BAD_REAL, st.floats(-1e6, -1e-9))
       for attr in ("WEIGHT_DECAY", "IMAGE_MIN_SCALE")},
    "GRADIENT_CLIP_NORM": st.one_of(BAD_REAL.filter(lambda v: v is not None), st.floats(-1e6, -1e-9)),
    **{attr: BAD_FLAG for attr in ("ROI_ALIGN_ALIGNED", "SYNC_BATCH_NORM", "SCALE_LEARNING_RATE",
                                   "XLA", "USE_MINI_MASK", "USE_RPN_ROIS")},
    "TRAIN_BN": BAD_FLAG.filter(lambda v: v is not None),
    **{attr: BAD_CHOICE for attr in ("OPTIMIZER", "STRATEGY", "IMAGE_RESIZE_MODE",
                                     "DETECTION_CLASS_MODE")},
    "MIXED_PRECISION": BAD_CHOICE.filter(lambda v: v is not None),
    "BACKBONE": st.one_of(BAD_CHOICE, st.just(np.array([1]))),
    "COMPUTE_BACKBONE_SHAPE": st.one_of(st.text(max_size=3), st.integers(), st.just([1])),
    "NAME": st.one_of(st.integers(), st.booleans(), st.lists(st.text(), max_size=1),
                      st.just(""), st.just("a/b"), st.just("..\\x")),
    **{attr: BAD_POSITIVES for attr in ("BACKBONE_STRIDES", "RPN_ANCHOR_SCALES",
                                        "RPN_ANCHOR_RATIOS")},
    **{attr: st.one_of(BAD_POSITIVES, st.just([28, 28, 28]), st.just([28.5, 28]))
       for attr in ("MINI_MASK_SHAPE", "MASK_SHAPE")},
    **{attr: st.one_of(NOT_NUMBER, st.just([0.1, 0.1, math.nan, 0.2]), st.just([0.1, 0, 1, 1]),
                       st.just(np.array([0.1, 0.1, 0.2])))
       for attr in ("RPN_BBOX_STD_DEV", "BBOX_STD_DEV")},
    "MEAN_PIXEL": st.one_of(NOT_NUMBER.filter(lambda v: not isinstance(v, list | np.ndarray)),
                            st.just([1, 2]), st.just([1, math.nan, 3]), st.just(["a", "b", "c"])),
    "LOSS_WEIGHTS": st.one_of(NOT_NUMBER.filter(lambda v: not isinstance(v, dict)),
                              st.just({"rpn_class_loss": 1.0}),
                              st.sampled_from([math.nan, -1.0, "1", None]).map(
                                  lambda v: {**TinyConfig.LOSS_WEIGHTS, "mrcnn_mask_loss": v})),
}


def test_every_public_setting_is_fuzzed():
    public = {a for a in dir(TinyConfig) if a.isupper()} - {"BATCH_SIZE", "IMAGE_SHAPE",
                                                             "IMAGE_META_SIZE"}
    assert public == set(BAD_VALUES)


@settings(FUZZ, max_examples=400)
@given(data=st.data(), attr=st.sampled_from(sorted(BAD_VALUES)))
def test_a_bad_setting_is_a_value_error_naming_it(data, attr):
    value = data.draw(BAD_VALUES[attr], label=attr)
    with pytest.raises(ValueError) as info:
        type("Fuzzed", (TinyConfig,), {attr: value})()
    assert f"Fuzzed.{attr}" in str(info.value) or attr in str(info.value)
    config = TinyConfig()
    setattr(config, attr, value)             # changed on an instance, checked by validate()
    with pytest.raises(ValueError, match=attr):
        config.validate()


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "LEARNING_RATE": st.floats(1e-6, 1), "WEIGHT_DECAY": st.floats(0, 0.1),
    "LEARNING_MOMENTUM": st.floats(0, 0.999), "GRADIENT_CLIP_NORM": st.one_of(
        st.none(), st.floats(0, 100)), "DETECTION_MIN_CONFIDENCE": st.floats(0, 1),
    "IMAGES_PER_GPU": st.integers(1, 64), "NUM_CLASSES": st.integers(1, 1000),
    "SEED": st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)), "TRAIN_BN": st.sampled_from(
        [None, True, False]), "NAME": st.one_of(st.none(), st.from_regex(r"[a-z0-9_.-]{1,12}",
                                                                          fullmatch=True)),
    "RPN_ANCHOR_RATIOS": st.lists(st.floats(0.1, 10), min_size=1, max_size=5),
    "MEAN_PIXEL": st.lists(st.floats(0, 255), min_size=3, max_size=3).map(np.array)}))
def test_sensible_settings_are_accepted(attrs):
    config = type("Fine", (TinyConfig,), attrs)()
    config.validate()
    assert config.BATCH_SIZE == config.IMAGES_PER_GPU * config.GPU_COUNT


############################################################
#  Paths (§3): image paths of annotation files stay inside image_dir
############################################################

SEGMENT = st.sampled_from(["..", ".", "images", "sub", "a.png", "secret.png", ""])


@st.composite
def written_paths(draw):
    parts = draw(st.lists(SEGMENT, min_size=1, max_size=5))
    sep = draw(st.sampled_from(["/", "\\"]))
    start = draw(st.sampled_from(["", "", "/", "C:" + sep, "{root}" + sep]))
    return start + sep.join(parts)


@FUZZ
@given(written=written_paths(), format=st.sampled_from(["coco", "via"]))
def test_image_paths_outside_image_dir_are_refused_unless_allowed(tmp_path, written, format):
    """An image path resolving outside image_dir (absolute, drive letter, or ".." out of it)
    is a Problem of kind "path" naming the file, the image and the path; with
    allow_outside_image_dir=True it is read as written."""
    from tests import test_formats as tf
    root = tmp_path / f"case{abs(hash(written)) % 10 ** 8}"
    images = root / "images"
    tf.write_image(images / "a.png", 1)
    tf.write_image(images / "sub" / "a.png", 1)
    tf.write_image(images / "b.png", 3)
    tf.write_image(root / "secret.png", 2)
    name = written.replace("{root}", str(root))
    if format == "coco":
        data = tf.coco_data()
        data["images"][0]["file_name"] = name
        data["images"][1]["file_name"] = "a.png"
        path, options = tf.write_json(root / "ann.json", data), {"image_dir": images}
    else:
        entries = tf.via_entries(2)
        entries["a.png123"]["filename"] = name
        path, options = tf.write_json(images / "via.json", entries), {"class_attribute": "name"}
    target = pathlib.Path(common.resolve(name, images))
    outside = (name.replace("\\", "/").startswith(("/", "C:"))
               or not target.resolve().is_relative_to(images.resolve()))
    image_id = 101 if format == "coco" else name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if outside:
            with pytest.raises(AnnotationError) as info:
                load_dataset(format, path, on_error="raise", **options)
            assert info.value.problem.kind == "path" and info.value.problem.image == image_id
            assert str(path) in str(info.value) and repr(name) in str(info.value)
            assert "allow_outside_image_dir=True" in str(info.value)
        dataset = load_dataset(format, path, on_error="skip", allow_outside_image_dir=outside,
                               **options)
    paths = [info["path"] for info in dataset.image_info]
    if target.is_file() and not name.startswith("C:"):
        assert str(target) in paths
        image = dataset.load_image(paths.index(str(target)))
        assert image.shape == (40, 60, 3)
    else:
        assert [p.kind for p in dataset.problems if p.image == image_id] == ["missing_image"]


def test_labelme_image_outside_its_folder_falls_back_to_image_data_or_is_refused(tmp_path):
    from tests import test_formats as tf
    tf.write_labelme(tmp_path / "json")
    tf.write_image(tmp_path / "a.png", 1)
    for name in ("a.json", "b.json"):       # a: file only; b: imageData embedded too
        record = json.loads((tmp_path / "json" / name).read_text())
        record["imagePath"] = "../a.png"
        tf.write_json(tmp_path / "json" / name, record)
    with pytest.warns(UserWarning, match=r"skipped 1 bad.*1 path"):
        dataset = LabelmeDataset()
        dataset.load_labelme(tmp_path / "json")
    assert [(p.image, p.kind) for p in dataset.problems] == [("a", "path")]
    assert "'../a.png' leads outside" in dataset.problems[0].problem
    embedded = dataset.image_info[[i["id"] for i in dataset.image_info].index("b")]
    assert embedded["embedded"] and embedded["path"].endswith("b.json")
    allowed = LabelmeDataset()
    allowed.load_labelme(tmp_path / "json", allow_outside_image_dir=True)
    assert allowed.image_info[0]["path"] == str(tmp_path / "a.png") and not allowed.problems

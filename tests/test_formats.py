"""Dataset loaders of mrcnn.formats: fixtures in each format written here, loaded and
round-tripped through load_mask against the masks they were drawn from."""

import base64
import io
import json
import warnings

import matplotlib.path
import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as mask_utils

from mrcnn.formats import (AnnotationError, CocoDataset, LabelmeDataset, MaskFolderDataset,
                           ViaDataset, load_dataset)
from samples.balloon.balloon import BalloonConfig, BalloonDataset
from samples.coco.coco import CocoConfig
from samples.coco.coco import CocoDataset as SampleCocoDataset
from samples.nucleus.nucleus import VAL_IMAGE_IDS, NucleusConfig, NucleusDataset

H, W = 40, 60
rows, cols = np.mgrid[:H, :W]


def rect(x1, y1, x2, y2):
    """Pixels of the rectangle x1..x2, y1..y2 in pixel-corner coordinates."""
    return (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)


def disk(cx, cy, r):
    return (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= r ** 2


def polygon(xs, ys):
    """Pixels whose centres matplotlib finds inside the polygon (an independent rasteriser)."""
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    return matplotlib.path.Path(np.stack([xs, ys], axis=1)).contains_points(centres).reshape(H, W)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


TRI_X, TRI_Y = [4, 34, 19], [38, 38, 22]
TRIANGLE = polygon(TRI_X, TRI_Y)


def write_image(path, seed=0, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return pixels


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": [H, W], "counts": ([0] + counts) if flat[0] else counts}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


############################################################
#  COCO
############################################################

COCO_MASKS = {  # annotation id: (mask, category, crowd)
    11: (rect(10, 5, 30, 25) | rect(40, 30, 50, 38), 5, 0),
    12: (disk(40, 12, 8), 90, 0),
    13: (TRIANGLE, 1, 0),
    14: (rect(0, 0, 60, 4), 1, 1),
}


def coco_data():
    segmentations = {11: [[10, 5, 30, 5, 30, 25, 10, 25], [40, 30, 50, 30, 50, 38, 40, 38]],
                     12: compressed_rle(COCO_MASKS[12][0]),
                     13: uncompressed_rle(TRIANGLE),
                     14: uncompressed_rle(COCO_MASKS[14][0])}
    annotations = [{"id": i, "image_id": 101, "category_id": cat, "iscrowd": crowd,
                    "segmentation": segmentations[i], "bbox": [0, 0, 10, 10], "area": 1}
                   for i, (_, cat, crowd) in COCO_MASKS.items()]
    return {"images": [{"id": 101, "file_name": "a.png", "height": H, "width": W,
                        "coco_url": "http://example.org/a.png"},
                       {"id": 202, "file_name": "b.png", "height": H, "width": W}],
            "annotations": annotations,
            "categories": [{"id": 90, "name": "ninety"}, {"id": 1, "name": "one"},
                           {"id": 5, "name": "five"}]}


def write_coco(folder, data=None):
    write_image(folder / "images" / "a.png", 1)
    write_image(folder / "images" / "b.png", 2)
    return write_json(folder / "annotations.json", coco_data() if data is None else data)


def test_coco_round_trip_polygon_rle_crowd_and_id_maps(tmp_path):
    ds = CocoDataset()
    coco = ds.load_coco_json(write_coco(tmp_path), tmp_path / "images", return_coco=True)
    ds.prepare()
    # Categories 1, 5, 90 become 1, 2, 3 and map back.
    assert ds.class_names == ["BG", "one", "five", "ninety"]
    assert [ds.map_source_class_id(f"coco.{c}") for c in (1, 5, 90)] == [1, 2, 3]
    assert [ds.get_source_class_id(k, "coco") for k in (1, 2, 3)] == [1, 5, 90]
    assert [info["id"] for info in ds.image_info] == [101, 202]
    assert sorted(coco.getImgIds()) == [101, 202] and len(coco.getAnnIds()) == 4

    masks, class_ids = ds.load_mask(0)
    assert masks.dtype == bool and masks.shape == (H, W, 4) and class_ids.dtype == np.int32
    assert class_ids.tolist() == [2, 3, 1, -1]  # the crowd is negative
    assert iou(masks[..., 0], COCO_MASKS[11][0]) > 0.95  # polygon, two parts merged
    for k, ann_id in enumerate((12, 13, 14)):  # RLE: exact
        assert np.array_equal(masks[..., k + 1], COCO_MASKS[ann_id][0])
    assert ds.image_reference(0) == "http://example.org/a.png"
    assert ds.image_reference(1).endswith("b.png")
    assert ds.load_image(1).shape == (H, W, 3)

    # An image without annotations is kept, with no instances and not trained by default.
    masks, class_ids = ds.load_mask(1)
    assert masks.shape == (H, W, 0) and masks.dtype == bool and class_ids.shape == (0,)
    assert ds.image_info[1]["train_empty"] is False


def test_coco_class_ids_select_images_and_train_empty_marks_empty_images(tmp_path):
    path = write_coco(tmp_path)
    ds = CocoDataset()
    ds.load_coco_json(path, tmp_path / "images", class_ids=[5])
    ds.prepare()
    assert ds.class_names == ["BG", "five"] and len(ds.image_info) == 1  # as matterport
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [1] and iou(masks[..., 0], COCO_MASKS[11][0]) > 0.95

    ds = load_dataset("coco", path, image_dir=tmp_path / "images", train_empty=True)
    assert [info["train_empty"] for info in ds.image_info] == [False, True]


def test_coco_matterport_layout_and_sample_wrapper(tmp_path):
    write_image(tmp_path / "val2017" / "a.png", 1)
    write_image(tmp_path / "val2017" / "b.png", 2)
    write_json(tmp_path / "annotations" / "instances_minival2017.json", coco_data())
    ds = SampleCocoDataset()
    ds.load_coco(str(tmp_path), "minival", year="2017")  # minival reads val2017's images
    ds.prepare()
    assert ds.num_images == 2 and ds.load_mask(0)[1].tolist() == [2, 3, 1, -1]
    assert load_dataset("coco", tmp_path, "minival", year="2017").num_images == 2
    assert CocoConfig().NUM_CLASSES == 81 and CocoConfig.NAME == "coco"
    assert CocoConfig.IMAGES_PER_GPU == 2


def bad_coco(kind):
    data = coco_data()
    ann = data["annotations"][0]
    if kind == "polygon":
        ann["segmentation"] = [[10, 5, 30, 5]]
    elif kind == "outside":
        ann["bbox"] = [100, 5, 20, 20]
    elif kind == "category":
        ann["category_id"] = 7
    elif kind == "missing_image":
        data["images"][1]["file_name"] = "gone.png"
    return data


@pytest.mark.parametrize("kind, image, annotation, text", [
    ("polygon", 101, 11, "polygon has 2 points; at least 3"),
    ("outside", 101, 11, "bbox .* outside the 60x40 image"),
    ("category", 101, 11, "unknown category id 7"),
    ("missing_image", 202, None, "gone.png' not found"),
])
def test_coco_bad_annotations_skip_or_raise(tmp_path, kind, image, annotation, text):
    path = write_coco(tmp_path, bad_coco(kind))
    ds = CocoDataset()
    with pytest.warns(UserWarning, match=f"skipped 1 bad annotations or images \\(1 {kind}\\)"):
        ds.load_coco_json(path, tmp_path / "images")
    [problem] = ds.problems
    assert (problem.file, problem.image, problem.annotation, problem.kind) == (
        str(path), image, annotation, kind)
    ds.prepare()
    if kind == "missing_image":
        assert ds.num_images == 1
    else:
        assert ds.load_mask(0)[1].tolist() == [3, 1, -1]  # the bad annotation is left out

    where = f"image {image}" + ("" if annotation is None else f", annotation {annotation}")
    with pytest.raises(AnnotationError, match=f"annotations.json: {where}: .*{text}"):
        CocoDataset().load_coco_json(path, tmp_path / "images", on_error="raise")


def test_coco_bad_files_and_class_clashes(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO annotation file .*nope.json"):
        CocoDataset().load_coco_json(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a JSON file"):
        CocoDataset().load_coco_json(tmp_path / "broken.json")
    via = write_json(tmp_path / "via.json", {"a.png1": {"filename": "a.png", "regions": []}})
    with pytest.raises(ValueError, match="via.json is not a COCO .*looks like a via file"):
        CocoDataset().load_coco_json(via)
    data = coco_data()
    data["images"], data["annotations"] = [], []
    with pytest.raises(ValueError, match="no image loaded: it lists none"):
        CocoDataset().load_coco_json(write_coco(tmp_path, data))
    data = coco_data()
    data["categories"].append({"id": 2, "name": "one"})
    with pytest.raises(ValueError, match="'one' is given to categories 1 and 2"):
        CocoDataset().load_coco_json(write_coco(tmp_path, data))
    ds = CocoDataset()
    ds.load_coco_json(write_coco(tmp_path), tmp_path / "images")
    data = coco_data()
    data["categories"][0]["name"] = "renamed"
    with pytest.raises(ValueError, match="category 90 is named 'renamed' but source 'coco'"):
        ds.load_coco_json(write_coco(tmp_path, data), tmp_path / "images")
    with pytest.raises(ValueError, match=r"class_ids \[3\] are not category ids"):
        CocoDataset().load_coco_json(write_coco(tmp_path), tmp_path / "images", class_ids=[3])
    with pytest.raises(ValueError, match="on_error='ignore'; use 'skip'"):
        CocoDataset().load_coco_json(write_coco(tmp_path), tmp_path / "images", on_error="ignore")
    with pytest.raises(ValueError, match="Unknown dataset format 'yolo'"):
        load_dataset("yolo", tmp_path)
    with pytest.raises(ValueError, match="image_dir is not used for format 'labelme'"):
        load_dataset("labelme", tmp_path, image_dir=tmp_path)


############################################################
#  VIA
############################################################

VIA_SHAPES = [  # (shape_attributes, class, mask)
    ({"name": "polygon", "all_points_x": TRI_X, "all_points_y": TRI_Y}, "cat", TRIANGLE),
    ({"name": "rect", "x": 10, "y": 5, "width": 20, "height": 10}, "dog", rect(10, 5, 30, 15)),
    ({"name": "circle", "cx": 45, "cy": 20, "r": 9}, "cat", disk(45, 20, 9)),
    ({"name": "ellipse", "cx": 30, "cy": 30, "rx": 6, "ry": 6}, "dog", disk(30, 30, 6)),
]


def via_entries(version):
    regions = [{"shape_attributes": dict(s), "region_attributes": {"name": c}}
               for s, c, _ in VIA_SHAPES]
    if version == 1:
        regions = {str(i): r for i, r in enumerate(regions)}
    return {"a.png123": {"filename": "a.png", "size": 123, "regions": regions,
                         "file_attributes": {}},
            "b.png456": {"filename": "b.png", "size": 456, "regions": {} if version == 1 else [],
                         "file_attributes": {}}}


def write_via(folder, version=2, project=False, entries=None):
    write_image(folder / "a.png", 1)
    write_image(folder / "b.png", 2)
    data = via_entries(version) if entries is None else entries
    if project:
        data = {"_via_settings": {}, "_via_img_metadata": data, "_via_attributes": {
            "region": {"name": {"type": "dropdown", "options": {"dog": "", "cat": ""}}}}}
    return write_json(folder / "via_region_data.json", data)


@pytest.mark.parametrize("version, project", [(1, False), (2, False), (2, True)])
def test_via_round_trip(tmp_path, version, project):
    ds = ViaDataset()
    ds.load_via(write_via(tmp_path, version, project), class_attribute="name")
    ds.prepare()
    # A VIA 2 project's dropdown options give the class order, else names are sorted.
    names = ["dog", "cat"] if project else ["cat", "dog"]
    assert ds.class_names == ["BG"] + names
    assert [info["id"] for info in ds.image_info] == ["a.png", "b.png"]
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [names.index(c) + 1 for _, c, _ in VIA_SHAPES]
    assert iou(masks[..., 0], TRIANGLE) > 0.9
    for k in (1, 2, 3):  # rect, circle, ellipse: exact
        assert np.array_equal(masks[..., k], VIA_SHAPES[k][2])
    assert ds.load_mask(1)[0].shape == (H, W, 0)  # an image without regions is kept


def test_via_rotated_ellipse_checkbox_attribute_and_clipping(tmp_path):
    shapes = [{"name": "ellipse", "cx": 30, "cy": 20, "rx": 12, "ry": 3, "theta": np.pi / 2},
              {"name": "polygon", "all_points_x": [50, 70, 70, 50], "all_points_y": [-5, -5, 10, 10]}]
    regions = [{"shape_attributes": s, "region_attributes": {"kind": {"thing": True, "x": False}}}
               for s in shapes]
    path = write_via(tmp_path, entries={"a": {"filename": "a.png", "regions": regions}})
    ds = load_dataset("via", path, class_attribute="kind")
    masks, class_ids = ds.load_mask(0)
    assert ds.class_names == ["BG", "thing"] and class_ids.tolist() == [1, 1]
    # Rotated by 90 degrees, the long axis is vertical.
    vertical = ((cols + 0.5 - 30) / 3) ** 2 + ((rows + 0.5 - 20) / 12) ** 2 <= 1
    assert np.array_equal(masks[..., 0], vertical)
    assert np.array_equal(masks[..., 1], rect(50, 0, 60, 10))  # clipped to the image


def test_via_single_class_and_balloon_layout(tmp_path):
    write_via(tmp_path / "train", version=1)
    ds = BalloonDataset()
    ds.load_balloon(str(tmp_path), "train")
    ds.prepare()
    assert ds.class_names == ["BG", "balloon"] and ds.sources == ["", "balloon"]
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [1, 1, 1, 1] and np.array_equal(masks[..., 1], rect(10, 5, 30, 15))
    assert ds.image_reference(0).endswith("a.png")
    with pytest.raises(ValueError, match="subset 'test'; use 'train' or 'val'"):
        BalloonDataset().load_balloon(str(tmp_path), "test")
    assert BalloonConfig.NUM_CLASSES == 2 and BalloonConfig.DETECTION_MIN_CONFIDENCE == 0.9
    via = load_dataset("via", tmp_path, "train", class_names=["object"])
    assert via.class_names == ["BG", "object"]
    with pytest.raises(ValueError, match="class_attribute is None"):
        load_dataset("via", tmp_path, "train", class_names=["a", "b"])


def bad_via(kind):
    entries = via_entries(2)
    region = entries["a.png123"]["regions"][1]
    if kind == "polygon":
        region["shape_attributes"] = {"name": "polygon", "all_points_x": [1, 2],
                                      "all_points_y": [1, 2]}
    elif kind == "outside":
        region["shape_attributes"]["x"] = 80
    elif kind == "category":
        region["region_attributes"]["name"] = "cow"
    elif kind == "shape":
        region["shape_attributes"] = {"name": "point", "cx": 3, "cy": 4}
    elif kind == "missing_image":
        entries["b.png456"]["filename"] = "gone.png"
    return entries


@pytest.mark.parametrize("kind, image, annotation, text", [
    ("polygon", "a.png", 1, "polygon has 2 points"),
    ("outside", "a.png", 1, "polygon .* outside the 60x40 image"),
    ("category", "a.png", 1, "unknown class 'cow'; classes are \\['cat', 'dog'\\]"),
    ("shape", "a.png", 1, "shape 'point' is no area"),
    ("missing_image", "gone.png", None, "gone.png' not found"),
])
def test_via_bad_annotations_skip_or_raise(tmp_path, kind, image, annotation, text):
    path = write_via(tmp_path, entries=bad_via(kind))
    ds = ViaDataset()
    with pytest.warns(UserWarning, match=f"\\(1 {kind}\\)"):
        ds.load_via(path, class_attribute="name", class_names=["cat", "dog"])
    [problem] = ds.problems
    assert (problem.file, problem.image, problem.annotation, problem.kind) == (
        str(path), image, annotation, kind)
    where = f"image '{image}'" + ("" if annotation is None else f", annotation {annotation}")
    with pytest.raises(AnnotationError, match=f"{where}: .*{text}"):
        ViaDataset().load_via(path, class_attribute="name", class_names=["cat", "dog"],
                              on_error="raise")


def test_via_loader_refuses_other_formats(tmp_path):
    coco = write_coco(tmp_path)
    with pytest.raises(ValueError, match="is not a VIA .*looks like a coco file"):
        ViaDataset().load_via(coco)
    with pytest.raises(FileNotFoundError, match="VIA annotation file"):
        load_dataset("via", tmp_path, "val")


############################################################
#  labelme
############################################################

def labelme_shape(label, points, shape_type="polygon", group_id=None):
    return {"label": label, "points": points, "shape_type": shape_type, "group_id": group_id,
            "flags": {}}


def write_labelme(folder):
    """a.json: image file in a subfolder (Windows path), four instances, one drawn in two parts;
    b.json: the image only as imageData; c.json: no shapes."""
    write_image(folder / "images" / "a.png", 1)
    write_json(folder / "a.json", {
        "version": "5.4.1", "imagePath": "images\\a.png", "imageData": None,
        "imageHeight": H, "imageWidth": W, "shapes": [
            labelme_shape("cat", [[x, y] for x, y in zip(TRI_X, TRI_Y)]),
            labelme_shape("dog", [[30, 15], [10, 5]], "rectangle"),
            labelme_shape("cat", [[45, 20], [45, 29]], "circle"),
            labelme_shape("dog", [[40, 30], [50, 30], [50, 38], [40, 38]], group_id=1),
            labelme_shape("dog", [[52, 30], [58, 30], [58, 38], [52, 38]], group_id=1)]})
    pixels = np.random.default_rng(5).integers(0, 255, (H, W, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    write_json(folder / "b.json", {
        "imagePath": "b.png", "imageData": base64.b64encode(buffer.getvalue()).decode(),
        "shapes": [labelme_shape("dog", [[0, 0], [6, 8]], "rectangle")]})
    write_image(folder / "c.png", 3)
    write_json(folder / "c.json", {"imagePath": "c.png", "imageData": None, "shapes": []})
    return pixels


def test_labelme_round_trip_groups_and_embedded_image(tmp_path):
    pixels = write_labelme(tmp_path)
    ds = LabelmeDataset()
    ds.load_labelme(tmp_path)
    ds.prepare()
    assert ds.class_names == ["BG", "cat", "dog"]
    assert [info["id"] for info in ds.image_info] == ["a", "b", "c"]
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [1, 2, 1, 2]
    assert iou(masks[..., 0], TRIANGLE) > 0.9
    assert np.array_equal(masks[..., 1], rect(10, 5, 30, 15))
    assert np.array_equal(masks[..., 2], disk(45, 20, 9))
    assert np.array_equal(masks[..., 3], rect(40, 30, 50, 38) | rect(52, 30, 58, 38))
    assert ds.load_image(0).shape == (H, W, 3)
    # b.png does not exist: its pixels come from imageData.
    assert np.array_equal(ds.load_image(1), pixels)
    assert np.array_equal(ds.load_mask(1)[0][..., 0], rect(0, 0, 6, 8))
    assert ds.image_reference(1).endswith("b.json")
    assert ds.load_mask(2)[0].shape == (H, W, 0)


def test_labelme_bad_items_and_folders(tmp_path):
    write_labelme(tmp_path)
    data = json.loads((tmp_path / "a.json").read_text())
    data["shapes"][2] = labelme_shape("cat", [[1, 1], [5, 5]], "line")
    write_json(tmp_path / "a.json", data)
    write_json(tmp_path / "d.json", {"imagePath": "d.png", "imageData": None, "shapes": []})
    write_json(tmp_path / "e.json", coco_data())
    ds = LabelmeDataset()
    with pytest.warns(UserWarning, match="skipped 3 .*1 file, 1 missing_image, 1 shape"):
        ds.load_labelme(tmp_path)
    found = {(p.file.rsplit("/", 1)[-1], p.image, p.annotation, p.kind) for p in ds.problems}
    assert found == {("a.json", "a", 2, "shape"), ("d.json", "d", None, "missing_image"),
                     ("e.json", "e", None, "file")}
    assert "looks like a coco file" in next(p.problem for p in ds.problems if p.kind == "file")
    with pytest.raises(AnnotationError, match="a.json: image 'a', annotation 0: unknown label 'cat'"):
        LabelmeDataset().load_labelme(tmp_path, class_names=["dog"], on_error="raise")
    with pytest.raises(FileNotFoundError, match="labelme folder .*nowhere"):
        LabelmeDataset().load_labelme(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no .json files"):
        load_dataset("labelme", tmp_path, "empty")
    with pytest.raises(ValueError, match="given more than once"):
        LabelmeDataset().load_labelme(tmp_path, class_names=["dog", "dog"])


############################################################
#  Mask folders
############################################################

def write_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_mask_folder_single_and_per_class_subfolders(tmp_path):
    write_image(tmp_path / "s1" / "images" / "s1.png", 1)
    write_mask(tmp_path / "s1" / "masks" / "m0.png", rect(10, 5, 30, 15))
    write_mask(tmp_path / "s1" / "masks" / "m1.png", TRIANGLE)
    write_image(tmp_path / "s2" / "images" / "s2.png", 2)  # no masks/: no instances
    ds = load_dataset("masks", tmp_path)
    assert ds.class_names == ["BG", "masks"] and [i["id"] for i in ds.image_info] == ["s1", "s2"]
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [1, 1]
    assert np.array_equal(masks[..., 0], rect(10, 5, 30, 15))
    assert np.array_equal(masks[..., 1], TRIANGLE)
    assert ds.load_mask(1)[0].shape == (H, W, 0)

    write_mask(tmp_path / "s3" / "masks" / "dog" / "0.png", disk(20, 20, 5))
    write_mask(tmp_path / "s3" / "masks" / "cat" / "0.png", rect(0, 0, 5, 5))
    write_image(tmp_path / "s3" / "images" / "s3.png", 3)
    ds = MaskFolderDataset()
    ds.load_mask_folder(tmp_path, class_names=["dog", "cat"], image_ids=["s3"])
    ds.prepare()
    masks, class_ids = ds.load_mask(0)
    assert ds.class_names == ["BG", "dog", "cat"] and class_ids.tolist() == [2, 1]
    assert np.array_equal(masks[..., 0], rect(0, 0, 5, 5))
    assert np.array_equal(masks[..., 1], disk(20, 20, 5))


def test_mask_folder_bad_items(tmp_path):
    write_image(tmp_path / "s1" / "images" / "s1.png", 1)
    write_mask(tmp_path / "s1" / "masks" / "small.png", np.ones((10, 10), bool))
    write_mask(tmp_path / "s1" / "masks" / "ok.png", rect(0, 0, 5, 5))
    write_mask(tmp_path / "s2" / "masks" / "m.png", rect(0, 0, 5, 5))  # no image
    ds = MaskFolderDataset()
    with pytest.warns(UserWarning, match="1 mask, 1 missing_image"):
        ds.load_mask_folder(tmp_path)
    assert {(p.file, p.image, p.annotation, p.kind) for p in ds.problems} == {
        (str(tmp_path / "s1" / "masks" / "small.png"), "s1", "small.png", "mask"),
        (str(tmp_path / "s2"), "s2", None, "missing_image")}
    ds.prepare()
    assert ds.load_mask(0)[1].tolist() == [1]
    with pytest.raises(AnnotationError, match="small.png: image 's1', annotation 'small.png': "
                                              "mask is 10x10, the image 60x40"):
        MaskFolderDataset().load_mask_folder(tmp_path, on_error="raise")
    with pytest.raises(FileNotFoundError, match="Mask folder"):
        MaskFolderDataset().load_mask_folder(tmp_path / "nowhere")


def test_nucleus_sample_splits(tmp_path):
    train = tmp_path / "stage1_train"
    for sample in ("plain", VAL_IMAGE_IDS[0]):
        write_image(train / sample / "images" / f"{sample}.png", 1)
        write_mask(train / sample / "masks" / "a.png", rect(5, 5, 15, 15))
    ds = NucleusDataset()
    ds.load_nucleus(str(tmp_path), "train")
    ds.prepare()
    assert [i["id"] for i in ds.image_info] == ["plain"] and ds.class_names == ["BG", "nucleus"]
    assert np.array_equal(ds.load_mask(0)[0][..., 0], rect(5, 5, 15, 15))
    val = NucleusDataset()
    with pytest.warns(UserWarning, match=f"skipped {len(VAL_IMAGE_IDS) - 1} "):
        val.load_nucleus(str(tmp_path), "val")  # the fixture has one of the 25 ids
    assert [i["id"] for i in val.image_info] == [VAL_IMAGE_IDS[0]]
    assert NucleusConfig.STEPS_PER_EPOCH == (657 - 25) // 6 and NucleusConfig.BACKBONE == "resnet50"


############################################################
#  Several formats in one dataset; training as background
############################################################

class CocoAndVia(CocoDataset, ViaDataset):
    """One dataset with images from a COCO file and a VIA file."""


def test_one_dataset_of_two_formats_sends_each_image_to_its_loader(tmp_path):
    ds = CocoAndVia()
    ds.load_coco_json(write_coco(tmp_path / "coco"), tmp_path / "coco" / "images")
    ds.load_via(write_via(tmp_path / "via"), class_attribute="name")
    ds.prepare()
    assert ds.class_names == ["BG", "one", "five", "ninety", "cat", "dog"]
    assert ds.load_mask(0)[1].tolist() == [2, 3, 1, -1]
    assert ds.load_mask(2)[1].tolist() == [4, 5, 4, 5]


@pytest.mark.large
def test_train_empty_images_are_trained_as_background(tmp_path, tiny_config):
    from mrcnn import geometry, ground_truth, model as modellib
    from samples.shapes.shapes import FastShapesConfig

    write_image(tmp_path / "images" / "a.png", 1, size=(128, 128))
    write_image(tmp_path / "images" / "b.png", 2, size=(128, 128))
    images = [{"id": i, "file_name": f, "height": 128, "width": 128}
              for i, f in ((1, "a.png"), (2, "b.png"))]
    categories = [{"id": i, "name": str(i)} for i in (1, 2, 3)]
    annotations = [{"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0,
                    "segmentation": [[20, 20, 80, 20, 80, 90, 20, 90]]}]
    path = write_json(tmp_path / "c.json", {"images": images, "annotations": annotations,
                                            "categories": categories})
    anchors = geometry.compute_anchors(tiny_config, tiny_config.IMAGE_SHAPE)
    for train_empty in (False, True):
        ds = load_dataset("coco", path, image_dir=tmp_path / "images", train_empty=train_empty)
        assert ground_truth._load_sample(ds, tiny_config, 0, anchors, None, 0, False) is not None
        sample = ground_truth._load_sample(ds, tiny_config, 1, anchors, None, 0, False)
        assert (sample is not None) == train_empty
    rpn_match, gt_class_ids = sample.rpn_match, sample.gt_class_ids
    assert gt_class_ids.shape == (0,) and not np.any(rpn_match == 1) and np.any(rpn_match == -1)

    # Every batch of two holds the background image: training stays finite (no NaN from zero GT).
    class Small(FastShapesConfig):
        NAME, IMAGES_PER_GPU, STEPS_PER_EPOCH, VALIDATION_STEPS = "bg", 2, 2, 0
        POST_NMS_ROIS_TRAINING, TRAIN_ROIS_PER_IMAGE = 64, 16
    history = modellib.MaskRCNN("training", Small(), str(tmp_path / "logs")).train(
        ds, None, 0.001, epochs=1, layers="all", workers=1).history
    losses = {k: v[0] for k, v in history.items() if k.endswith("loss")}
    assert len(losses) == 6 and all(np.isfinite(v) for v in losses.values()), losses
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file loads without warnings
        load_dataset("coco", path, image_dir=tmp_path / "images")

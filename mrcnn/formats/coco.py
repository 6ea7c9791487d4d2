"""COCO instance annotations (JSON) as a `utils.Dataset`, compatible with matterport's
samples/coco/coco.py `CocoDataset`.

Class ids: the COCO categories (all, or `class_ids`) are registered in
ascending id order under the source "coco", so after `prepare()` they are the
contiguous ids 1..K; `dataset.map_source_class_id("coco.90")` gives our id of
category 90 and `dataset.get_source_class_id(k, "coco")` the category id of
our class k. `image_info[i]["id"]` is the COCO image id.
"""

import contextlib
import io
import os

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn.formats import common

__all__ = [
    "DEFAULT_DATASET_YEAR", "CocoDataset",
]

DEFAULT_DATASET_YEAR = "2014"


class CocoDataset(common.FormatDataset):
    """Images and instance masks of a COCO-format annotation file.

    Masks are decoded on demand by `load_mask` from polygons, compressed RLE
    (string or bytes counts) or uncompressed RLE (list counts), with
    pycocotools as matterport did. Crowd annotations (iscrowd=1) get the
    negative class id, so the training targets exclude them (the RPN and the
    RoI sampler do not use their area as background either). Annotations whose
    mask covers no pixel are dropped, as in matterport.
    """

    def load_coco(self, dataset_dir, subset, year=DEFAULT_DATASET_YEAR, class_ids=None, *,
                  return_coco=False, train_empty=False, on_error="skip", source="coco",
                  allow_outside_image_dir=False):
        """Load a COCO subset from matterport's folder layout.

        Annotations: {dataset_dir}/annotations/instances_{subset}{year}.json;
        images: {dataset_dir}/{subset}{year}/ ("minival" and "valminusminival"
        use the images of val{year}). The other arguments are those of
        `load_coco_json`. matterport's `auto_download` is not offered.
        """
        annotation_file = os.path.join(dataset_dir, "annotations", f"instances_{subset}{year}.json")
        image_subset = "val" if subset in ("minival", "valminusminival") else subset
        image_dir = os.path.join(dataset_dir, f"{image_subset}{year}")
        return self.load_coco_json(annotation_file, image_dir, class_ids, return_coco=return_coco,
                                   train_empty=train_empty, on_error=on_error, source=source,
                                   allow_outside_image_dir=allow_outside_image_dir)

    def load_coco_json(self, annotation_file, image_dir=None, class_ids=None, *,
                       return_coco=False, train_empty=False, on_error="skip", source="coco",
                       allow_outside_image_dir=False):
        """Add the images and annotations of a COCO JSON file.

        image_dir: folder of the images' `file_name`s (default: the JSON's folder).
        class_ids: COCO category ids to load (in this order); then, as in
            matterport, only images with at least one annotation of these
            categories are added. None loads all categories and all images,
            including those without annotations.
        return_coco: also return the file as a pycocotools `COCO` object (for
            COCOeval).
        train_empty: images without any annotation are always added (they
            count in evaluation); with train_empty=True training also uses
            them as pure background (image_info["train_empty"]), otherwise the
            training pipeline skips them as it skips every image without
            instances. Images whose annotations were all skipped as bad are
            never trained as background.
        on_error: "skip" reports bad annotations and images in
            `self.problems` and leaves them out (one warning per call);
            "raise" raises `AnnotationError` at the first one. Checked: image
            file missing, image or annotation entry that is not an object or
            whose id is repeated or not an int or string, unknown category or
            image id, polygon with < 3 points or non-finite coordinates, bbox
            or polygon outside the image, RLE of another size or whose counts
            do not cover the image, annotation without segmentation, iscrowd
            other than 0 or 1. An image whose height and width are not
            positive integers gets its size from the image file.
        source: the source name of the classes and images.
        allow_outside_image_dir: image `file_name`s must lie inside image_dir
            (no absolute path, no ".." out of it); others are reported (kind
            "path") unless this is True.

        Raises FileNotFoundError for a missing file, ValueError for a file
        that is not COCO, a category that is not {"id": int, "name": str},
        a category id listed twice or a category name given to two ids,
        unknown `class_ids`, or when no image is loaded.
        """
        data = _read_coco(annotation_file)
        loading = common.Loading(self, annotation_file, on_error, allow_outside_image_dir)
        if image_dir is None:
            image_dir = os.path.dirname(os.path.abspath(annotation_file))
        categories = _categories(annotation_file, data["categories"])
        selected = _selected_categories(annotation_file, categories, class_ids)
        self._add_categories(annotation_file, source, {i: categories[i] for i in selected})

        by_image = _annotations_by_image(data, loading)
        selected = set(selected)
        seen = set()
        for index, image in enumerate(data["images"]):
            if not (isinstance(image, dict) and common.is_id(image.get("id"))):
                loading.report(image.get("id") if isinstance(image, dict) else None, None,
                               common.IMAGE, f"images[{index}] is not an object with an int or "
                               f"string 'id': {str(image)[:80]}")
                continue
            image_id = image["id"]
            if image_id in seen:
                loading.report(image_id, None, common.IMAGE, "image id listed twice in 'images'")
                continue
            seen.add(image_id)
            anns = by_image[image_id]
            if class_ids and not any(a.get("category_id") in selected for a in anns):
                continue
            self._add_coco_image(image, anns, image_dir, categories, selected, loading, source,
                                 train_empty)
        loading.finish()
        if return_coco:
            coco = COCO()
            coco.dataset = data
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            return coco

    def _add_coco_image(self, image, anns, image_dir, categories, selected, loading, source,
                        train_empty):
        """Add one entry of 'images' with its usable annotations of the `selected` categories."""
        image_id = image["id"]
        path = loading.image_path(image_id, image.get("file_name"), image_dir)
        if path is None:
            return
        size = loading.image_size(image_id, path,
                                  common.declared_size(image.get("height"), image.get("width")))
        if size is None:
            return
        height, width = size
        good = []
        for ann in anns:
            category_id = ann.get("category_id")
            if not (common.is_id(category_id) and category_id in categories):
                loading.report(image_id, ann.get("id"), common.CATEGORY,
                               f"unknown category id {category_id!r}; the file's categories "
                               f"are {sorted(categories)}")
            elif category_id in selected:
                bad = _check_annotation(ann, height, width)
                if bad:
                    loading.report(image_id, ann.get("id"), *bad)
                else:
                    good.append(ann)
        self.add_image(source, image_id=image_id, path=path, width=width, height=height,
                       annotations=good, coco_url=image.get("coco_url"), format="coco",
                       train_empty=train_empty and not anns)

    def _add_categories(self, annotation_file, source, categories):
        """Register {category id: name}; a name given to two ids, or an id renamed, is an error."""
        owners = {}
        for info in self.class_info:
            if info["source"] == source:
                owners.setdefault(info["name"], info["id"])
                if info["id"] in categories and categories[info["id"]] != info["name"]:
                    raise ValueError(f"{annotation_file}: category {info['id']} is named "
                                     f"{categories[info['id']]!r} but source {source!r} already "
                                     f"has it as {info['name']!r}. Load files with different "
                                     "categories with different `source` names.")
        for category_id, name in categories.items():
            if owners.setdefault(name, category_id) != category_id:
                raise ValueError(f"{annotation_file}: class name {name!r} is given to categories "
                                 f"{owners[name]} and {category_id}. Rename one, or pass "
                                 "class_ids to load only one of them.")
            self.add_class(source, category_id, name)

    def load_mask(self, image_id):
        """Masks [H, W, N] bool and class ids [N] int32 (negative for crowds) of a COCO image."""
        info = self.image_info[image_id]
        if info.get("format") != "coco":
            return super().load_mask(image_id)
        h, w = info["height"], info["width"]
        return self._pack(info, ((a["category_id"], a.get("iscrowd", 0), self.annToMask(a, h, w))
                                 for a in info["annotations"]))

    def annToRLE(self, ann, height, width):
        """RLE of an annotation's polygons (all parts merged), uncompressed or compressed RLE."""
        segm = ann["segmentation"]
        if isinstance(segm, list):
            return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        if isinstance(segm["counts"], list):
            return mask_utils.frPyObjects(segm, height, width)
        return segm

    def annToMask(self, ann, height, width):
        """Binary mask [height, width] (uint8) of an annotation."""
        return mask_utils.decode(self.annToRLE(ann, height, width))


def _read_coco(annotation_file):
    """The JSON of a COCO annotation file, checked to have its three lists."""
    data = common.read_json(annotation_file, "COCO")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)
            and isinstance(data.get("categories"), list)):
        raise common.wrong_format(annotation_file, data, "COCO",
                                  "with 'images', 'annotations' and 'categories' lists")
    return data


def _selected_categories(annotation_file, categories, class_ids):
    """The category ids to load: `class_ids` (all known to the file), else all in ascending order."""
    if class_ids:
        unknown = [i for i in class_ids if i not in categories]
        if unknown:
            raise ValueError(f"{annotation_file}: class_ids {unknown} are not category ids of "
                             f"the file (those are {sorted(categories)}).")
        return list(class_ids)
    return sorted(categories)


def _categories(annotation_file, entries):
    """{category id: name} of the 'categories' list; ValueError naming a bad or repeated entry."""
    categories = {}
    for index, c in enumerate(entries):
        if not (isinstance(c, dict) and common.is_id(c.get("id")) and not isinstance(c["id"], str)
                and isinstance(c.get("name"), str) and c["name"].strip()):
            raise ValueError(f"{annotation_file}: categories[{index}] is {str(c)[:80]}; each "
                             "category needs an integer 'id' and a non-empty string 'name'.")
        if c["id"] in categories:
            raise ValueError(f"{annotation_file}: category id {c['id']} is listed twice (as "
                             f"{categories[c['id']]!r} and {c['name']!r}); give each category "
                             "its own id.")
        categories[c["id"]] = c["name"]
    return categories


def _annotations_by_image(data, loading):
    """{image id: [annotation]} for every image of 'images'. Reported: entries that are not
    objects, repeated annotation ids (the later entries), annotations of other image ids."""
    by_image = {image["id"]: [] for image in data["images"]
                if isinstance(image, dict) and common.is_id(image.get("id"))}
    seen = set()
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            loading.report(None, None, common.ANNOTATION,
                           f"annotations[{index}] is not an object: {str(ann)[:80]}")
            continue
        image_id, ann_id = ann.get("image_id"), ann.get("id")
        if not common.is_id(ann_id) or ann_id in seen:
            loading.report(image_id if common.is_id(image_id) else None, ann_id,
                           common.ANNOTATION, f"annotations[{index}]'s id {ann_id!r} is "
                           + ("listed twice" if common.is_id(ann_id) else "not an int or string"))
            continue
        seen.add(ann_id)
        if common.is_id(image_id) and image_id in by_image:
            by_image[image_id].append(ann)
        else:
            loading.report(image_id, ann_id, common.IMAGE,
                           f"annotation of image id {image_id!r}, which 'images' does not list")
    return by_image


def _check_annotation(ann, height, width):
    """(kind, message) of what makes an annotation unusable, or None."""
    segm = ann.get("segmentation")
    bbox = ann.get("bbox")
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), float):
        return common.SEGMENTATION, f"iscrowd is {ann.get('iscrowd')!r}, not 0 or 1"
    if isinstance(bbox, list) and len(bbox) == 4 and all(common.is_number(v) for v in bbox):
        x, y, w, h = bbox
        bad = common.check_box(x, y, x + w, y + h, height, width, what="bbox")
        if bad:
            return bad
    if not segm:
        return common.SEGMENTATION, "no segmentation; Mask R-CNN needs a polygon or RLE mask"
    if isinstance(segm, list):
        for part in segm:
            if not isinstance(part, list) or len(part) % 2:
                return common.POLYGON, "polygon is not a flat list of x, y pairs"
            bad = common.check_shape(("polygon", part[0::2], part[1::2]), height, width)
            if bad:
                return bad
        return None
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        return common.SEGMENTATION, ("segmentation is neither polygons nor an RLE with 'counts' "
                                     "and 'size'")
    if segm["size"] != [height, width]:
        return common.SEGMENTATION, (f"RLE size {segm['size']!r} differs from the image's "
                                     f"[height, width] [{height}, {width}]")
    counts = segm["counts"]
    if isinstance(counts, str):
        counts = common.rle_string_counts(counts)
        if counts is None:
            return common.SEGMENTATION, "compressed RLE counts are not a COCO RLE string"
    elif not isinstance(counts, list):
        return common.SEGMENTATION, (f"RLE counts is a {type(counts).__name__}; use a list of "
                                     "run lengths or a compressed RLE string")
    if not all(common.is_id(c) and not isinstance(c, str) and c >= 0 for c in counts) \
            or sum(counts) != height * width:
        return common.SEGMENTATION, (f"RLE counts must be non-negative integers summing to "
                                     f"height * width = {height * width}")
    return None

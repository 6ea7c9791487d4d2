"""Datasets in common annotation formats: COCO JSON, VIA 1.x/2.x JSON, labelme
folders and per-instance mask folders.

Each loader is a `utils.Dataset` subclass, usable as-is or subclassed::

    from mrcnn.formats import CocoDataset, load_dataset
    train = load_dataset("coco", "annotations/instances_train.json", image_dir="images/")
    val = CocoDataset(); val.load_coco("/data/coco", "val", "2017"); val.prepare()

Shared behaviour:

- `load_mask` returns bool masks [H, W, N] and int32 class ids [N]; COCO
  crowds have negative ids. An image without instances gives [H, W, 0].
- Images without annotations are kept (evaluation counts false positives on
  them); with `train_empty=True` the training pipeline also trains them as
  pure background, otherwise it skips them.
- Bad annotations and images (polygon with < 3 points, box or shape outside
  the image, unknown category, missing image file, ...) are reported as
  `Problem`s naming the file, image id and annotation id. `on_error="skip"`
  (default) leaves them out, lists them in `dataset.problems` and warns once
  per load call; `on_error="raise"` raises `AnnotationError` at the first one.
- Image paths in COCO, VIA and labelme files must lie inside the images'
  folder (no absolute path, no ".." out of it): others are a problem of kind
  "path" unless the loader gets `allow_outside_image_dir=True`.
"""

import os

from mrcnn.formats.coco import CocoDataset
from mrcnn.formats.common import AnnotationError, Problem
from mrcnn.formats.labelme import LabelmeDataset
from mrcnn.formats.masks import MaskFolderDataset
from mrcnn.formats.via import ViaDataset

FORMATS = ("coco", "via", "labelme", "masks")

__all__ = ["AnnotationError", "CocoDataset", "FORMATS", "LabelmeDataset", "MaskFolderDataset",
           "Problem", "ViaDataset", "load_dataset"]


def load_dataset(format, path, subset=None, image_dir=None, **options):
    """A prepared dataset of `format` ("coco", "via", "labelme" or "masks").

    path: the annotation file for "coco" and "via", the folder for "labelme"
        and "masks".
    subset: None, or a subset in matterport's layouts under the folder `path`:
        coco: `CocoDataset.load_coco(path, subset, year)` (option `year`,
        default "2014"); via: {path}/{subset}/via_region_data.json (the
        balloon layout); labelme and masks: the folder {path}/{subset}.
    image_dir: the images' folder for "coco" (without subset) and "via";
        None: the annotation file's folder. labelme and mask folders say
        where their images are, so they take none.
    options: keyword arguments of the loader (`load_coco_json`/`load_coco`,
        `load_via`, `load_labelme`, `load_mask_folder`), e.g. class_ids,
        class_attribute, class_names, train_empty, on_error, source.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown dataset format {format!r}; use one of {FORMATS}.")
    if image_dir is not None and (format in ("labelme", "masks") or
                                  (format == "coco" and subset is not None)):
        raise ValueError(f"image_dir is not used for format {format!r}"
                         + (" with a subset" if format == "coco" else "")
                         + "; the images' place follows from the dataset's layout.")
    if format == "coco":
        dataset = CocoDataset()
        if subset is None:
            dataset.load_coco_json(path, image_dir, **options)
        else:
            dataset.load_coco(path, subset, **options)
    elif format == "via":
        dataset = ViaDataset()
        dataset.load_via(path if subset is None else
                         os.path.join(path, subset, "via_region_data.json"), image_dir, **options)
    elif format == "labelme":
        dataset = LabelmeDataset()
        dataset.load_labelme(path if subset is None else os.path.join(path, subset), **options)
    else:
        dataset = MaskFolderDataset()
        dataset.load_mask_folder(path if subset is None else os.path.join(path, subset),
                                 **options)
    dataset.prepare()
    return dataset

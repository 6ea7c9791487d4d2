"""A folder of per-instance mask images as a `utils.Dataset` (the layout of the 2018
Data Science Bowl nuclei that matterport's nucleus sample reads)::

    root/<id>/images/<id>.png          the image (any format the base class reads)
    root/<id>/masks/*.png              one binary mask per instance: default class
    root/<id>/masks/<class>/*.png      masks in a subfolder: the class named like it

A mask pixel is set where it is non-zero (any of the R, G, B channels for a
colour mask). A sample without a masks/ folder has no instances (test images).
"""

import os

import numpy as np
import skimage.io

from mrcnn.formats import common

__all__ = [
    "MASK_EXTENSIONS", "MaskFolderDataset", "sample_names",
]

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")  # lossless formats only


class MaskFolderDataset(common.FormatDataset):
    """Images and instance masks of a per-instance mask folder; masks are read on demand."""

    def load_mask_folder(self, root, class_names=None, *, image_ids=None, train_empty=False,
                         on_error="skip", source="masks"):
        """Add the samples (subfolders) of `root`, in name order.

        class_names: the classes, ids 1..K in this order; masks of other
            classes are reported. Masks directly in masks/ have the default
            class: class_names[0] when one name is given, else the source name
            (the nucleus sample's class "nucleus" is source="nucleus").
            Default: the sorted class names found. Pass it when loading
            train and val separately, so that both get the same ids.
        image_ids: the sample names to load (default: every subfolder not
            starting with "."); a listed sample that is missing is reported.
        train_empty, on_error, source: as for `CocoDataset.load_coco_json`; a
            sample without masks is an image without annotations.

        Each mask file is checked to be readable and of the image's size. A
        problem's `file` is the mask file, or the sample folder for the image.
        Raises FileNotFoundError when `root` is not a folder, ValueError
        when no image is loaded.
        """
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Mask folder {root!r} does not exist or is not a folder.")
        loading = common.Loading(self, root, on_error)
        default = class_names[0] if class_names and len(class_names) == 1 else source
        if image_ids is None:
            image_ids = sample_names(root)

        samples = []  # pass 1: each sample's image (None if missing) and (class, mask file) pairs
        for sample in image_ids:
            folder = os.path.join(root, sample)
            path = _image_file(os.path.join(folder, "images"), sample)
            masks_dir = os.path.join(folder, "masks")
            masks = []
            for entry in sorted(os.listdir(masks_dir)) if os.path.isdir(masks_dir) else []:
                full = os.path.join(masks_dir, entry)
                if os.path.isdir(full):
                    masks += [(entry, os.path.join(full, f)) for f in sorted(os.listdir(full))
                              if f.lower().endswith(MASK_EXTENSIONS)]
                elif entry.lower().endswith(MASK_EXTENSIONS):
                    masks.append((default, full))
            samples.append((sample, path, masks))
        names = list(class_names) if class_names else sorted({c for s in samples for c, _ in s[2]})
        ids = self._add_classes(source, names)

        for sample, path, masks in samples:
            if path is None:
                loading.report(sample, None, common.MISSING_IMAGE,
                               f"no image {sample}.* (or single image) in its images/ folder",
                               file=os.path.join(root, sample))
                continue
            size = loading.image_size(sample, path, file=os.path.join(root, sample))
            if size is None:
                continue
            instances = []
            for class_name, mask_path in masks:
                name = os.path.relpath(mask_path, os.path.join(root, sample, "masks"))
                if class_name not in ids:
                    loading.report(sample, name, common.CATEGORY,
                                   f"unknown class {class_name!r}; classes are {names}",
                                   file=mask_path)
                    continue
                try:
                    mask_size = common.image_size(mask_path)
                except OSError as e:
                    loading.report(sample, name, common.MASK, f"cannot read mask ({e})",
                                   file=mask_path)
                    continue
                if mask_size != size:
                    loading.report(sample, name, common.MASK,
                                   f"mask is {mask_size[1]}x{mask_size[0]}, the image "
                                   f"{size[1]}x{size[0]}", file=mask_path)
                    continue
                instances.append({"id": name, "class_id": ids[class_name], "file": mask_path})
            self.add_image(source, image_id=sample, path=path, width=size[1], height=size[0],
                           instances=instances, format="masks",
                           train_empty=train_empty and not masks)
        loading.finish()

    def load_mask(self, image_id):
        """Masks [H, W, N] bool and class ids [N] int32 of a mask-folder sample."""
        info = self.image_info[image_id]
        if info.get("format") != "masks":
            return super().load_mask(image_id)
        return self._pack(info, ((i["class_id"], False, _read_mask(i["file"]))
                                 for i in info["instances"]))


def sample_names(root):
    """The sample folders of `root` in name order, hidden ones (".*") left out."""
    return sorted(d for d in os.listdir(root)
                  if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))


def _image_file(images_dir, sample):
    """The sample's image: images/<sample>.<ext>, or the only file in images/; None if neither."""
    files = sorted(os.listdir(images_dir)) if os.path.isdir(images_dir) else []
    named = [f for f in files if os.path.splitext(f)[0] == sample]
    chosen = named or (files if len(files) == 1 else [])
    return os.path.join(images_dir, chosen[0]) if chosen else None


def _read_mask(path):
    """A mask file as bool [H, W]: non-zero pixels (in any colour channel) are set."""
    mask = skimage.io.imread(path)
    if mask.ndim == 3:
        mask = np.any(mask[..., :3], axis=-1)
    return mask > 0

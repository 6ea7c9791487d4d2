"""labelme annotations (a folder of JSON files, one per image) as a `utils.Dataset`.

Shapes: polygon, rectangle (two corners), circle (centre and a point on the
circle) and mask (labelme 5.3+: a base64 PNG over a box); point, line,
linestrip and points are no area and are reported. Shapes that share a label
and a `group_id` form one instance (labelme's way to draw an occluded object
in parts); shapes without a group_id are one instance each.
"""

import glob
import json
import os

from mrcnn.images import to_rgb_uint8
from mrcnn.formats import common

__all__ = [
    "LabelmeDataset",
]


class LabelmeDataset(common.FormatDataset):
    """Images and shape masks of a labelme folder; masks are drawn on demand."""

    def load_labelme(self, folder, class_names=None, *, train_empty=False, on_error="skip",
                     source="labelme", allow_outside_image_dir=False):
        """Add every labelme JSON file of `folder` (not its subfolders), in name order.

        The image is `imagePath`, relative to the JSON file (Windows
        separators accepted); when that file is missing, the base64
        `imageData` embedded in the JSON is used instead (labelme itself
        prefers imageData; both normally hold the same image, and the file is
        faster to read). The image id is the
        JSON file's name without ".json".
        class_names: the labels, ids 1..K in this order; shapes with other
            labels are reported. Default: the sorted labels found. Pass it
            when loading train and val separately, so that both get the same ids.
        train_empty, on_error, source: as for `CocoDataset.load_coco_json`; a
            JSON without shapes is an image without annotations.
        allow_outside_image_dir: an imagePath must lie inside `folder` (no
            absolute path, no ".." out of it); otherwise its imageData is used
            when it has one, else the image is reported (kind "path"). True
            reads such paths (e.g. JSONs in a folder beside "../images").

        Raises FileNotFoundError when `folder` is not a folder, ValueError
        when it has no JSON file or no image is loaded. A JSON file that is
        not labelme is reported (kind "file") and skipped.
        """
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"labelme folder {folder!r} does not exist or is not a folder.")
        files = sorted(glob.glob(os.path.join(folder, "*.json")))
        if not files:
            raise ValueError(f"labelme folder {folder!r} has no .json files; labelme saves one "
                             "JSON per image next to it (or in its output folder).")
        loading = common.Loading(self, folder, on_error, allow_outside_image_dir)

        # Pass 1: parse every file, keeping its shapes but not the (large) imageData.
        records = [(file, os.path.splitext(os.path.basename(file))[0], _read(file))
                   for file in files]
        names = list(class_names) if class_names else sorted(
            {s.get("label") for _, _, r in records if isinstance(r, dict)
             for s in r["shapes"] if isinstance(s, dict) and isinstance(s.get("label"), str)}
            - {""})
        ids = self._add_classes(source, names)

        for file, image, record in records:
            if isinstance(record, str):
                loading.report(image, None, common.FILE, record, file=file)
                continue
            height, width, shapes = record["imageHeight"], record["imageWidth"], record["shapes"]
            declared = common.declared_size(height, width)
            name, base = record["imagePath"], os.path.dirname(file)
            readable = isinstance(name, str) and name.strip() and (
                allow_outside_image_dir or not common.is_outside(name, base))
            embedded = record["embedded"] and not (
                readable and os.path.isfile(common.resolve(name, base)))
            if embedded:
                path = file
                try:
                    size = declared or _embedded_image(file).shape[:2]
                except Exception as e:  # any decoding error of the base64 image
                    loading.report(image, None, common.MISSING_IMAGE,
                                   f"imageData cannot be decoded ({e})", file=file)
                    continue
            else:
                path = loading.image_path(image, name, base, file)
                size = path and loading.image_size(image, path, declared, file)
                if size is None:
                    continue
            height, width = size
            instances, groups = [], {}
            for index, s in enumerate(shapes):
                label = s.get("label") if isinstance(s, dict) else None
                if not isinstance(label, str) or label not in ids:
                    loading.report(image, index, common.CATEGORY,
                                   f"unknown label {label!r}; classes are {names}" if label
                                   else "shape without a label", file=file)
                    continue
                shape, bad = _shape(s)
                bad = bad or common.check_shape(shape, height, width)
                if bad:
                    loading.report(image, index, *bad, file=file)
                    continue
                group = s.get("group_id")
                if not (group is None or common.is_id(group)):
                    loading.report(image, index, common.SHAPE, f"group_id {group!r} is not an "
                                   "integer", file=file)
                    continue
                if group is not None and (label, group) in groups:
                    groups[(label, group)]["shapes"].append(shape)
                    continue
                instance = {"id": index, "class_id": ids[label], "shapes": [shape]}
                instances.append(instance)
                if group is not None:
                    groups[(label, group)] = instance
            self.add_image(source, image_id=image, path=path, width=width, height=height,
                           instances=instances, json_path=file, embedded=embedded,
                           format="labelme", train_empty=train_empty and not shapes)
        loading.finish()

    def load_image(self, image_id):
        """The image file, or for an image that only exists inside its JSON (image_info
        "embedded"; its path is then the JSON's), the JSON's imageData."""
        info = self.image_info[image_id]
        if info.get("format") == "labelme" and info["embedded"]:
            return to_rgb_uint8(_embedded_image(info["json_path"]),
                                f"Image {image_id} (imageData of {info['json_path']})")
        return super().load_image(image_id)

    def load_mask(self, image_id):
        """Masks [H, W, N] bool and class ids [N] int32 of a labelme image."""
        info = self.image_info[image_id]
        if info.get("format") != "labelme":
            return super().load_mask(image_id)
        return self._pack_shapes(info)


def _read(file):
    """A labelme file's imagePath, imageHeight, imageWidth and shapes, and whether it embeds
    imageData; or the message saying why it is not a labelme file."""
    try:
        data = common.read_json(file, "labelme")
    except ValueError as e:
        return str(e)
    if not (isinstance(data, dict) and isinstance(data.get("shapes"), list)):
        return str(common.wrong_format(file, data, "labelme", "with 'shapes' and 'imagePath'"))
    record = {key: data.get(key) for key in ("imagePath", "imageHeight", "imageWidth", "shapes")}
    record["embedded"] = bool(data.get("imageData"))
    return record


def _embedded_image(json_path):
    """The image array embedded as base64 imageData in a labelme JSON."""
    with open(json_path, encoding="utf-8") as f:
        return common.decode_image(json.load(f)["imageData"])


def _shape(s):
    """(common shape, None) from a labelme shape dict, or (None, (kind, message))."""
    kind = s.get("shape_type") or "polygon"
    try:
        xs = [float(p[0]) for p in s.get("points") or []]
        ys = [float(p[1]) for p in s.get("points") or []]
    except (TypeError, ValueError, IndexError):
        return None, (common.POLYGON, f"{kind} points are not [x, y] pairs of numbers")
    if kind == "polygon":
        return ("polygon", xs, ys), None
    if kind in ("rectangle", "circle", "mask") and len(xs) != 2:
        return None, (common.SHAPE, f"{kind} has {len(xs)} points; 2 are needed")
    if kind == "rectangle":
        return common.rectangle(min(xs), min(ys), max(xs), max(ys)), None
    if kind == "circle":
        r = ((xs[1] - xs[0]) ** 2 + (ys[1] - ys[0]) ** 2) ** 0.5
        return ("ellipse", xs[0], ys[0], r, r, 0.0), None
    if kind == "mask":
        try:
            common.decode_image(s.get("mask"))
        except Exception:  # missing or undecodable base64 PNG
            return None, (common.SHAPE, "mask shape without a decodable base64 PNG 'mask'")
        return ("bitmap", min(xs), min(ys), s["mask"]), None
    return None, (common.SHAPE, f"shape type {kind!r} is no area (polygon, rectangle, circle "
                                "and mask are)")

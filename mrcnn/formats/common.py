"""What the format loaders share: the bad-annotation report, class registration,
rasterisation of polygons and ellipses, and reading JSON and image sizes.

Coordinates are in pixel-corner units, as COCO, VIA and labelme write them:
the image spans x in [0, width] and y in [0, height], and pixel (row r,
column c) covers [c, c + 1) x [r, r + 1). A pixel belongs to a shape when its
centre (c + 0.5, r + 0.5) is inside, so a rectangle from x=10 to x=30 covers
exactly the 20 columns 10..29, as pycocotools rasterises it.
"""

import base64
import dataclasses
import io
import json
import math
import os
import re
import warnings
from collections import Counter

import numpy as np
import PIL.Image
import skimage.draw
import skimage.io

from mrcnn import utils

__all__ = [
    "ON_ERROR", "POLYGON", "OUTSIDE", "CATEGORY", "MISSING_IMAGE", "SHAPE", "SEGMENTATION",
    "MASK", "IMAGE", "FILE", "ANNOTATION", "PATH", "Problem", "AnnotationError", "Loading", "FormatDataset",
    "rectangle", "shape_extent", "check_shape", "check_box", "is_number", "shape_mask",
    "shapes_mask", "read_json", "guess_format", "wrong_format", "resolve", "is_outside",
    "image_size", "decode_image", "declared_size", "is_id", "rle_string_counts",
]

ON_ERROR = ("skip", "raise")

# Problem kinds (Problem.kind).
POLYGON = "polygon"              # fewer than 3 points, odd or non-numeric coordinates
OUTSIDE = "outside"              # the box or shape lies entirely outside the image
CATEGORY = "category"            # unknown, missing or ambiguous category / label
MISSING_IMAGE = "missing_image"  # image file missing or unreadable
SHAPE = "shape"                  # a shape that is no area (point, line) or has bad parameters
SEGMENTATION = "segmentation"    # COCO annotation without a usable mask (none, bad RLE)
MASK = "mask"                    # mask file unreadable or not the image's size
IMAGE = "image"                  # an annotation of an image id the file does not list
FILE = "file"                    # a file of a folder dataset that is not in the format
ANNOTATION = "annotation"        # an annotation entry that is not an object, or a repeated id
PATH = "path"                    # an image path outside the images' folder (see resolve)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad item met while loading: which file, image and annotation, and what is wrong.

    image: the image's id in its source (COCO image id, VIA file name,
    labelme JSON name, mask-folder sample name); annotation: the
    annotation's id there (COCO annotation id, region or shape index, mask
    file name), None for a problem of the whole image.
    """
    file: str
    image: object
    annotation: object
    kind: str
    problem: str

    def __str__(self):
        where = f"image {self.image!r}"
        if self.annotation is not None:
            where += f", annotation {self.annotation!r}"
        return f"{self.file}: {where}: {self.problem}"


class AnnotationError(ValueError):
    """A bad annotation met with on_error="raise"; `.problem` is the `Problem`."""

    def __init__(self, problem):
        super().__init__(f"{problem} (pass on_error='skip' to skip such items; they are then "
                         "listed in dataset.problems)")
        self.problem = problem


class Loading:
    """The problems of one load call: raised at once, or collected and summarised.

    `report()` either raises `AnnotationError` (on_error="raise") or records
    the problem in `dataset.problems` (on_error="skip"), and the caller then
    skips the item. `finish()` warns once with a summary of what was skipped
    and raises ValueError when the call registered no image at all.
    """

    def __init__(self, dataset, file, on_error, allow_outside_image_dir=False):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}; use 'skip' (report bad annotations in "
                             "dataset.problems and go on) or 'raise' (stop at the first one).")
        self.dataset, self.file, self.on_error = dataset, str(file), on_error
        self.allow_outside = allow_outside_image_dir
        self.found = []
        self.images_before = len(dataset.image_info)

    def report(self, image, annotation, kind, problem, file=None):
        problem = Problem(str(file or self.file), image, annotation, kind, problem)
        if self.on_error == "raise":
            raise AnnotationError(problem)
        self.found.append(problem)
        self.dataset.problems.append(problem)

    def image_path(self, image, name, base_dir, file=None):
        """The path of image file `name` written in an annotation file, relative to `base_dir`
        (`resolve`); None after reporting a name that is not a string, or (unless
        allow_outside_image_dir) one that `is_outside` base_dir."""
        if not isinstance(name, str) or not name.strip():
            self.report(image, None, MISSING_IMAGE, f"image file name {name!r} is not a file "
                        "name", file)
            return None
        path = resolve(name, base_dir)
        if not self.allow_outside and is_outside(name, base_dir):
            self.report(image, None, PATH, f"image path {name!r} leads outside the images' "
                        f"folder {os.fspath(base_dir)!r} (to {path!r}); pass "
                        "allow_outside_image_dir=True if the dataset is meant to read it", file)
            return None
        return path

    def image_size(self, image, path, size=None, file=None):
        """(height, width) of image file `path` (`size` when given), or None after reporting
        the file missing or unreadable (as a problem of annotation file `file`)."""
        if not os.path.isfile(path):
            self.report(image, None, MISSING_IMAGE, f"image file {path!r} not found", file)
            return None
        if size:
            return size
        try:
            return image_size(path)
        except OSError as e:
            self.report(image, None, MISSING_IMAGE, f"cannot read image {path!r} ({e})", file)
            return None

    def finish(self):
        added = len(self.dataset.image_info) - self.images_before
        if self.found:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(
                p.kind for p in self.found).items()))
            first = "; ".join(str(p) for p in self.found[:3])
            warnings.warn(f"{self.file}: skipped {len(self.found)} bad annotations or images "
                          f"({counts}); the list is in dataset.problems. First: {first}",
                          stacklevel=3)
        if added == 0:
            why = (f"all were skipped ({len(self.found)} problems; first: {self.found[0]})"
                   if self.found else "it lists none")
            raise ValueError(f"{self.file}: no image loaded: {why}. Check the path and the "
                             "format, or add images and annotations.")


class FormatDataset(utils.Dataset):
    """A `utils.Dataset` that records the problems its loaders skipped in `problems`.

    Each loader tags its images with image_info["format"], so a class that
    combines several loaders (multiple inheritance) sends every image to the
    load_mask that knows its format; other images go to the parent class.
    """

    def __init__(self, class_map=None):
        super().__init__(class_map)
        self.problems = []

    def _add_classes(self, source, names):
        """Register class names of a name-labelled source; returns {name: source class id}.

        Names already registered for `source` (an earlier load call) keep
        their id; new names get the next ids, in the order given.
        """
        if len(set(names)) != len(names):
            dupes = sorted(n for n, c in Counter(names).items() if c > 1)
            raise ValueError(f"Class names {dupes} are given more than once; class names must "
                             "be unique.")
        ids = {c["name"]: c["id"] for c in self.class_info if c["source"] == source}
        for name in names:
            if name not in ids:
                ids[name] = max(ids.values(), default=0) + 1
                self.add_class(source, ids[name], name)
        return {name: ids[name] for name in names}

    def _pack(self, info, instances):
        """load_mask's result from (source class id, is_crowd, HxW mask) triples.

        Empty masks (objects below a pixel, shapes clipped away) are dropped
        as matterport's CocoDataset drops them; crowds get the negative class
        id. No instance gives bool [H, W, 0] and int32 [0].
        """
        masks, class_ids = [], []
        for source_class_id, crowd, mask in instances:
            if not mask.any():
                continue
            class_id = self.map_source_class_id(f"{info['source']}.{source_class_id}")
            masks.append(mask.astype(bool))
            class_ids.append(-class_id if crowd else class_id)
        if not masks:
            return (np.zeros((info["height"], info["width"], 0), bool),
                    np.zeros([0], np.int32))
        return np.stack(masks, axis=-1), np.array(class_ids, np.int32)

    def _pack_shapes(self, info):
        """load_mask's result for an image whose instances are lists of drawn shapes (VIA, labelme)."""
        h, w = info["height"], info["width"]
        return self._pack(info, ((i["class_id"], False, shapes_mask(i["shapes"], h, w))
                                 for i in info["instances"]))

    def image_reference(self, image_id):
        """The image's file path (or URL) for images of these loaders."""
        info = self.image_info[image_id]
        if "format" in info:
            return info.get("coco_url") or info["path"]
        return super().image_reference(image_id)


############################################################
#  Shapes
############################################################
# A shape is a tuple that survives JSON and pickling:
#   ("polygon", xs, ys)                  vertices
#   ("ellipse", cx, cy, rx, ry, theta)   centre, radii, rotation (radians, clockwise on screen)
#   ("bitmap", x, y, png_base64)         a binary PNG whose top-left pixel is at (x, y)

def rectangle(x1, y1, x2, y2):
    """The polygon of an axis-aligned rectangle with corners (x1, y1) and (x2, y2)."""
    return ("polygon", [x1, x2, x2, x1], [y1, y1, y2, y2])


def shape_extent(shape):
    """(x1, y1, x2, y2) of a shape, for the outside-the-image check."""
    kind = shape[0]
    if kind == "polygon":
        return min(shape[1]), min(shape[2]), max(shape[1]), max(shape[2])
    if kind == "ellipse":
        _, cx, cy, rx, ry, _ = shape
        r = max(rx, ry)
        return cx - r, cy - r, cx + r, cy + r
    _, x, y, data = shape
    h, w = decode_image(data).shape[:2]
    return x, y, x + w, y + h


def check_shape(shape, height, width):
    """(kind, message) saying what is wrong with a shape, or None when it can be drawn."""
    kind = shape[0]
    if kind == "polygon":
        _, xs, ys = shape
        if len(xs) != len(ys):
            return POLYGON, f"polygon has {len(xs)} x but {len(ys)} y coordinates"
        if len(xs) < 3:
            return POLYGON, f"polygon has {len(xs)} points; at least 3 are needed"
        try:
            coords = np.asarray(list(xs) + list(ys))  # numpy: COCO has millions of coordinates
        except ValueError:  # nested lists of different lengths
            return POLYGON, "polygon has non-numeric coordinates"
        if coords.ndim != 1 or coords.dtype.kind not in "iuf" or not np.isfinite(coords).all():
            return POLYGON, "polygon has non-numeric coordinates"
    elif not all(is_number(v) for v in (shape[1:] if kind == "ellipse" else shape[1:3])):
        return SHAPE, f"{kind} has non-numeric coordinates"
    if kind == "ellipse" and min(shape[3], shape[4]) <= 0:
        return SHAPE, f"ellipse or circle with radius {min(shape[3], shape[4]):g}"
    return check_box(*shape_extent(shape), height, width, what=kind)


def check_box(x1, y1, x2, y2, height, width, what="box"):
    """(OUTSIDE, message) when the box does not overlap the image, else None."""
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return OUTSIDE, (f"{what} (x {x1:g}..{x2:g}, y {y1:g}..{y2:g}) lies outside the "
                         f"{width}x{height} image")
    return None


def is_number(v):
    """A finite int or float (not a bool), as JSON coordinates must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def shape_mask(shape, height, width):
    """Bool [height, width] mask of a shape, clipped to the image."""
    mask = np.zeros((height, width), bool)
    kind = shape[0]
    if kind == "polygon":
        _, xs, ys = shape
        rr, cc = skimage.draw.polygon(np.asarray(ys, float) - 0.5, np.asarray(xs, float) - 0.5,
                                      shape=(height, width))
        mask[rr, cc] = True
    elif kind == "ellipse":
        _, cx, cy, rx, ry, theta = shape
        r = max(rx, ry)
        y0, y1 = max(0, int(cy - r)), min(height, int(math.ceil(cy + r)) + 1)
        x0, x1 = max(0, int(cx - r)), min(width, int(math.ceil(cx + r)) + 1)
        if y0 < y1 and x0 < x1:
            dy, dx = np.mgrid[y0:y1, x0:x1] + 0.5
            dy, dx = dy - cy, dx - cx
            cos, sin = math.cos(theta), math.sin(theta)
            u, v = dx * cos + dy * sin, -dx * sin + dy * cos
            mask[y0:y1, x0:x1] = (u / rx) ** 2 + (v / ry) ** 2 <= 1
    else:
        _, x, y, data = shape
        bitmap = decode_image(data)
        bitmap = bitmap.any(axis=-1) if bitmap.ndim == 3 else bitmap > 0
        x, y = int(round(x)), int(round(y))
        h, w = bitmap.shape
        ys, xs = slice(max(0, y), min(height, y + h)), slice(max(0, x), min(width, x + w))
        mask[ys, xs] = bitmap[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
    return mask


def shapes_mask(shapes, height, width):
    """Union of the masks of an instance's shapes (one object drawn in several parts)."""
    mask = np.zeros((height, width), bool)
    for shape in shapes:
        mask |= shape_mask(shape, height, width)
    return mask


############################################################
#  Files
############################################################

def read_json(path, format_name):
    """Parse a JSON annotation file; FileNotFoundError or ValueError naming it otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{format_name} annotation file {path!r} does not exist. Check "
                                "the path (and the dataset's folder layout).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e}); expected a {format_name} annotation "
                         "file.") from e


def guess_format(data):
    """The format a parsed JSON looks like ("coco", "via", "labelme"), or None."""
    if not isinstance(data, dict):
        return None
    if "images" in data and "annotations" in data:
        return "coco"
    if "_via_img_metadata" in data:
        return "via"
    if "shapes" in data and ("imagePath" in data or "imageData" in data):
        return "labelme"
    if data and all(isinstance(v, dict) and "filename" in v and "regions" in v
                    for v in data.values()):
        return "via"
    return None


def wrong_format(path, data, format_name, expected):
    """ValueError saying that `path` is not `format_name` and what it looks like instead."""
    guess = guess_format(data)
    if guess:
        hint = f"it looks like a {guess} file; load it with format {guess!r}"
    elif isinstance(data, dict):
        hint = f"its top-level keys are {sorted(data)[:8]}"
    else:
        hint = f"it holds a JSON {type(data).__name__}"
    return ValueError(f"{path} is not a {format_name} annotation file ({expected}): {hint}.")


def resolve(path, base_dir):
    """A path written in an annotation file, relative to `base_dir`; Windows separators accepted."""
    path = str(path).replace("\\", "/")
    return os.path.normpath(os.path.join(base_dir, path))


def is_outside(path, base_dir):
    """Whether a path written in an annotation file is absolute (a drive letter counts) or
    leads out of `base_dir` with "..". Symbolic links inside base_dir are not followed."""
    path = str(path).replace("\\", "/")
    if os.path.isabs(path) or path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return True
    base = os.path.abspath(base_dir)
    return os.path.commonpath([base, os.path.abspath(resolve(path, base))]) != base


def image_size(path):
    """(height, width) of an image file from its header, without decoding the pixels."""
    with PIL.Image.open(path) as image:
        return image.height, image.width


def declared_size(height, width):
    """(height, width) as an annotation file declares them, or None unless both are positive
    integers below 2**31 (then the size is read from the image file)."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 31
             for v in (height, width))
    return (height, width) if ok else None


def is_id(value):
    """An int (not a bool) or a string: what an id in an annotation file may be."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def rle_string_counts(text):
    """The run lengths of a COCO compressed RLE string, or None when it is not one.

    Each count is written in 5-bit groups, low first, as characters 48 + group
    (+ 32 when more groups follow); bit 4 of the last group is the sign; from
    the third count on, each is stored as the difference to the count two
    before. pycocotools decodes a malformed string into garbage pixels without
    complaint, hence this check."""
    counts, value, shift = [], 0, 0
    for char in text:
        group = ord(char) - 48
        if not 0 <= group < 64:
            return None
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    return counts if shift == 0 else None


def decode_image(data):
    """An image array from base64-encoded file bytes (labelme's imageData and mask shapes)."""
    return skimage.io.imread(io.BytesIO(base64.b64decode(data)))

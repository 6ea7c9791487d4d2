"""VGG Image Annotator (VIA) 1.x and 2.x JSON as a `utils.Dataset` (matterport's
balloon sample reads such files).

Accepted files: VIA 1.x exports (a dict of images whose "regions" is a dict
keyed "0", "1", ...), VIA 2.x exports (the same with "regions" a list) and
VIA 2.x project files (images under "_via_img_metadata"). Shapes: polygon,
rect, circle and ellipse; point and polyline are no area and are reported.
"""

import os

from mrcnn.formats import common

__all__ = [
    "ViaDataset",
]


class ViaDataset(common.FormatDataset):
    """Images and region masks of a VIA annotation file; masks are drawn on demand."""

    def load_via(self, annotation_file, image_dir=None, class_attribute=None, class_names=None,
                 *, train_empty=False, on_error="skip", source="via",
                 allow_outside_image_dir=False):
        """Add the images and regions of a VIA 1.x/2.x JSON file.

        image_dir: folder of the images' `filename`s (default: the JSON's folder).
        class_attribute: the region attribute holding the class name (a text,
            dropdown or radio value, or a checkbox with exactly one option
            ticked). None: one class for every region, named class_names[0]
            when one name is given, else the source name (the balloon sample's
            single class "balloon" is source="balloon").
        class_names: the classes, ids 1..K in this order; regions of other
            classes are reported. Default: the attribute's options in a VIA 2
            project, else the sorted names found. Pass it when loading
            train and val separately, so that both get the same ids.
        train_empty, on_error, source, allow_outside_image_dir: as for
            `CocoDataset.load_coco_json` (the `filename`s must lie inside
            image_dir); images without regions are kept (VIA lists every
            image of a project, annotated or not).

        Raises FileNotFoundError for a missing file, ValueError for a file
        that is not VIA or when no image is loaded.
        """
        entries, options = _read_via(annotation_file, class_attribute)
        if class_attribute is None and class_names and len(class_names) > 1:
            raise ValueError(f"load_via: class_names {list(class_names)} has several classes but "
                             "class_attribute is None; name the region attribute that holds the "
                             "class.")
        loading = common.Loading(self, annotation_file, on_error, allow_outside_image_dir)
        if image_dir is None:
            image_dir = os.path.dirname(os.path.abspath(annotation_file))

        def label(region):
            return _label(region, class_attribute, class_names, source)

        if class_names:
            names = list(class_names)
        elif options:
            names = list(options)
        else:
            names = sorted({label(r) for e in entries.values() for _, r in _regions(e)} - {None})
        ids = self._add_classes(source, names)

        seen = set()
        for entry in entries.values():
            name = entry["filename"]
            if name in seen:
                loading.report(name, None, common.IMAGE, "image listed twice")
                continue
            seen.add(name)
            if not isinstance(entry["regions"], dict | list | None):
                loading.report(name, None, common.ANNOTATION, f"'regions' is a "
                               f"{type(entry['regions']).__name__}, not a list or dict")
                continue
            path = loading.image_path(name, name, image_dir)
            size = path and loading.image_size(name, path)
            if size is None:
                continue
            instances = []
            for region_id, region in _regions(entry):
                instance = _instance(region_id, region, label(region), ids, size, loading, name,
                                     class_attribute, names)
                if instance is not None:
                    instances.append(instance)
            self.add_image(source, image_id=name, path=path, width=size[1], height=size[0],
                           instances=instances, format="via",
                           train_empty=train_empty and not _regions(entry))
        loading.finish()

    def load_mask(self, image_id):
        """Masks [H, W, N] bool and class ids [N] int32 of a VIA image."""
        info = self.image_info[image_id]
        if info.get("format") != "via":
            return super().load_mask(image_id)
        return self._pack_shapes(info)


def _read_via(annotation_file, class_attribute):
    """(images {key: entry}, the options of `class_attribute` in a VIA 2 project or {})."""
    data = common.read_json(annotation_file, "VIA")
    entries = data.get("_via_img_metadata") if isinstance(data, dict) else None
    options = {}
    if entries is None:
        entries = data
    elif class_attribute:
        attribute = (data.get("_via_attributes") or {}).get("region", {}).get(class_attribute)
        options = (attribute or {}).get("options") or {}
    if not (isinstance(entries, dict) and all(
            isinstance(e, dict) and "filename" in e and "regions" in e for e in entries.values())):
        raise common.wrong_format(annotation_file, data, "VIA", "a dict of images with "
                                  "'filename' and 'regions', or a VIA 2 project")
    return entries, options


def _regions(entry):
    """(region id, region) pairs: the keys of VIA 1's dict, the positions of VIA 2's list."""
    r = entry["regions"]
    return list(r.items()) if isinstance(r, dict) else list(enumerate(r)) if isinstance(
        r, list) else []


def _label(region, class_attribute, class_names, source):
    """The region's class name, or None when it has no single one."""
    if class_attribute is None:
        return class_names[0] if class_names else source
    attributes = region.get("region_attributes") if isinstance(region, dict) else None
    value = attributes.get(class_attribute) if isinstance(attributes, dict) else None
    if isinstance(value, dict):  # checkbox: {"option": true, ...}
        ticked = [k for k, on in value.items() if on]
        value = ticked[0] if len(ticked) == 1 else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _instance(region_id, region, class_name, ids, size, loading, image_name, class_attribute,
              names):
    """A region as an instance {"id", "class_id", "shapes"}, or None after reporting why not."""
    if not isinstance(region, dict):
        loading.report(image_name, region_id, common.ANNOTATION, "region is not an object")
        return None
    if class_name not in ids:
        loading.report(image_name, region_id, common.CATEGORY,
                       f"no single class in region attribute {class_attribute!r}"
                       if class_name is None else
                       f"unknown class {class_name!r}; classes are {names}")
        return None
    shape, bad = _shape(region.get("shape_attributes") or {})
    bad = bad or common.check_shape(shape, *size)
    if bad:
        loading.report(image_name, region_id, *bad)
        return None
    return {"id": region_id, "class_id": ids[class_name], "shapes": [shape]}


def _shape(attributes):
    """(common shape, None) from VIA shape_attributes, or (None, (kind, message))."""
    if not isinstance(attributes, dict):
        return None, (common.SHAPE, "shape_attributes is not an object")
    kind = attributes.get("name")
    try:
        if kind == "polygon":
            return ("polygon", list(attributes["all_points_x"]),
                    list(attributes["all_points_y"])), None
        if kind == "rect":
            x, y = attributes["x"], attributes["y"]
            return common.rectangle(x, y, x + attributes["width"], y + attributes["height"]), None
        if kind == "circle":
            r = attributes["r"]
            return ("ellipse", attributes["cx"], attributes["cy"], r, r, 0.0), None
        if kind == "ellipse":
            return ("ellipse", attributes["cx"], attributes["cy"], attributes["rx"],
                    attributes["ry"], attributes.get("theta", 0.0)), None
    except KeyError as e:
        return None, (common.SHAPE, f"{kind} without {e.args[0]!r}")
    except TypeError:
        return None, (common.SHAPE, f"{kind} with non-numeric attributes")
    return None, (common.SHAPE, f"shape {kind!r} is no area (polygon, rect, circle and "
                                "ellipse are)")

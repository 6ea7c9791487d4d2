"""The `Dataset` base class (exported as `mrcnn.utils.Dataset`).

Subclass it for your data, as with matterport's library::

    class ShapesDataset(utils.Dataset):
        def load_shapes(self, count):
            self.add_class("shapes", 1, "square")
            for i in range(count):
                self.add_image("shapes", image_id=i, path=None, ...)
        def load_mask(self, image_id):
            return masks_bool_HxWxN, class_ids_int32_N

then call `prepare()` before use.
"""

import logging
import os

import numpy as np
import skimage.io

from mrcnn.images import to_rgb_uint8

__all__ = [
    "Dataset",
]


class Dataset:
    """Registry of classes and images from one or more sources.

    Class 0 is always the background "BG". Source classes are mapped to
    contiguous internal ids in the order they were added.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}

    def add_class(self, source, class_id, class_name):
        """Register class `class_id` of `source`; a repeated (source, id) pair is ignored."""
        if "." in source:
            raise ValueError(f"add_class: source name {source!r} contains a dot; "
                             "dots separate source and id in 'source.id' keys, use another name.")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image; extra keyword arguments are kept in its `image_info` dict."""
        image_info = {"id": image_id, "source": source, "path": path}
        image_info.update(kwargs)
        self.image_info.append(image_info)

    def image_reference(self, image_id):
        """A link or description that helps find the image; override for your data."""
        return ""

    def prepare(self, class_map=None):
        """Build the id maps from the registered classes and images. Call before use."""
        def clean_name(name):
            """First comma-separated part of a class name, for display."""
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {"{}.{}".format(info["source"], info["id"]): id
                                      for info, id in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {"{}.{}".format(info["source"], info["id"]): id
                                      for info, id in zip(self.image_info, self.image_ids)}

        # Each source's class ids, background included; sorted for reproducibility.
        self.sources = sorted(set(i["source"] for i in self.class_info))
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info) if i == 0 or source == info["source"]]

    def map_source_class_id(self, source_class_id):
        """Internal class id of a "source.id" key, e.g. "coco.12" -> 23."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        """The id in `source` of internal class `class_id`."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"Class {class_id} ({info['name']!r}) comes from source "
                             f"{info['source']!r}, not {source!r}.")
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        """Path or URL of the image; override to return a URL."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Load an image as an [H, W, 3] uint8 RGB array.

        Grayscale (HxW, HxWx1) is repeated to three channels, an alpha channel
        is dropped, and other dtypes are scaled to 0..255 by their type's range:
        16-bit (and any other integer type) by its maximum value (65535 -> 255),
        float images in [0, 1] by 255 (other floats are clipped to 0..255),
        bool to 0/255. A missing or unreadable file raises an error naming the
        image id and path.
        """
        info = self.image_info[image_id]
        path = info["path"]
        if path is None or not os.path.isfile(str(path)):
            raise FileNotFoundError(f"Image {image_id} (source {info['source']!r}, id {info['id']!r}): "
                                    f"no file at path {path!r}. Fix the path given to add_image() or "
                                    "override load_image() for images that are not files.")
        try:
            image = skimage.io.imread(path)
        except Exception as e:
            raise ValueError(f"Image {image_id}: could not read {path!r} as an image ({e}).") from e
        return to_rgb_uint8(image, f"Image {image_id} ({path})")

    def load_mask(self, image_id):
        """Instance masks [H, W, N] (bool) and class ids [N] (int32) of an image.

        Override for your data; the base version returns no instances.
        """
        logging.warning("You are using the default load_mask(), maybe you need to define your own one.")
        mask = np.empty([0, 0, 0])
        class_ids = np.empty([0], np.int32)
        return mask, class_ids



"""matterport's balloon sample: `BalloonConfig` and `BalloonDataset`, reading the VIA
annotations of {dataset_dir}/{train,val}/via_region_data.json (VIA 1.x or 2.x).
"""

import os

from mrcnn.config import Config
from mrcnn.formats.via import ViaDataset


class BalloonConfig(Config):
    """matterport's configuration for the balloon dataset (one class)."""
    NAME = "balloon"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 1
    STEPS_PER_EPOCH = 100
    DETECTION_MIN_CONFIDENCE = 0.9


class BalloonDataset(ViaDataset):
    """The balloon dataset: source "balloon", one class "balloon", image ids are file names."""

    def load_balloon(self, dataset_dir, subset, **options):
        """Load subset "train" or "val" of `dataset_dir`; options go to `ViaDataset.load_via`.

        Unlike matterport's, images without regions are kept (see
        `load_via`'s train_empty) and polygons are clipped to the image.
        """
        if subset not in ("train", "val"):
            raise ValueError(f"load_balloon: subset {subset!r}; use 'train' or 'val'.")
        options.setdefault("source", "balloon")
        self.load_via(os.path.join(dataset_dir, subset, "via_region_data.json"), **options)

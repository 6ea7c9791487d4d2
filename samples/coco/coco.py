"""matterport's COCO sample: `CocoConfig` and `CocoDataset`, so that code written for
samples/coco/coco.py keeps working::

    from samples.coco import coco
    dataset = coco.CocoDataset()
    coco_api = dataset.load_coco("/data/coco", "val", year="2017", return_coco=True)
    dataset.prepare()

The dataset is `mrcnn.formats.CocoDataset` (see there: crowds, empty
images, bad annotations). Evaluation and the command line live in
`mrcnn.evaluate` and `mrcnn.cli`.
"""

from mrcnn.config import Config
from mrcnn.formats.coco import DEFAULT_DATASET_YEAR, CocoDataset

__all__ = ["CocoConfig", "CocoDataset", "DEFAULT_DATASET_YEAR"]


class CocoConfig(Config):
    """matterport's configuration for MS COCO: two images per GPU, 80 classes."""
    NAME = "coco"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 80

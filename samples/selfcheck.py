"""Quick self-check of an installation: prints a configuration and checks the numpy toolbox.

    python samples/selfcheck.py

Exits non-zero if a check fails. (The shapes training demo replaces this as the
README's main job once the model lands.)
"""

import sys

import numpy as np

from mrcnn import utils
from mrcnn.config import Config


class ShapesConfig(Config):
    """matterport's shapes sample configuration (128-px images, 3 classes)."""
    NAME = "shapes"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 8
    NUM_CLASSES = 1 + 3
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TRAIN_ROIS_PER_IMAGE = 32
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5


def main():
    config = ShapesConfig()
    config.display()
    checks = []

    shapes = [[int(np.ceil(128 / s))] * 2 for s in config.BACKBONE_STRIDES]
    anchors = utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                             shapes, config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)
    checks.append(("anchors for 128 px: 4092", anchors.shape == (4092, 4)))

    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    molded, window, scale, _, _ = utils.resize_image(image, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM)
    checks.append(("square resize to 128x128", molded.shape == (128, 128, 3) and window == (21, 0, 106, 128)))

    masks = np.zeros((128, 128, 2), bool)
    masks[10:40, 10:50, 0] = masks[60:120, 70:100, 1] = True
    boxes = utils.extract_bboxes(masks)
    ap = utils.compute_ap(boxes, np.array([1, 2]), masks, boxes, np.array([1, 2]),
                          np.array([0.9, 0.8]), masks)[0]
    checks.append(("AP of perfect detections is 1", ap == 1.0))

    for name, ok in checks:
        print(f"[{'ok' if ok else 'FAILED'}] {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""mrcnn: Mask R-CNN for TensorFlow 2 / Keras 3, the maintained successor of matterport's Mask_RCNN."""

__version__ = "3.0.0.dev0"

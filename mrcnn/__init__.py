"""mrcnn: Mask R-CNN for TensorFlow 2 / Keras 3, the maintained successor of matterport's Mask_RCNN."""

import os

# TensorFlow's C++ info and warning lines are off unless the user chose a level
# (errors stay): among them dozens of Grappler "PredictCost() ... CropAndResize"
# notes per training, which nobody can act on. It takes effect when mrcnn is
# imported before tensorflow, as matterport's scripts and notebooks do.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "3.0.0.dev0"

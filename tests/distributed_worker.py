"""One training process of tests/test_distribute.py, run as `python tests/distributed_worker.py
JSON` from the repository root (TF_CONFIG in its environment for a multi-worker job).

JSON: {"strategy": Config.STRATEGY or "mirrored-cpus" (a MirroredStrategy over two logical
CPUs, entered by the caller), "images_per_gpu", "epochs", "steps", "logs" (model_dir),
"out" (an .npz of the model's weights, how far they moved, the loss history, the epoch
reached, the learning rate and the image ids this process loaded, in order), and optional
"resume", "train_bn", "sync_bn", "scale_lr"}. A tiny model trains on TinyShapes through
the public API, seeded, with RoI sampling that keeps every positive RoI and no negative
one, so that the step does not depend on how RoIs are shuffled.
"""

import json
import os
import sys

sys.path.insert(0, os.getcwd())
args = json.loads(sys.argv[1])

import tensorflow as tf  # noqa: E402

if args["strategy"] == "mirrored-cpus":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from mrcnn import model as modellib  # noqa: E402
from tests.conftest import TinyShapes  # noqa: E402
from tests.test_graph import TinyBackboneConfig  # noqa: E402

loaded = []


class LoggedShapes(TinyShapes):
    def load_image(self, image_id):
        loaded.append(int(image_id))
        return super().load_image(image_id)


class DistConfig(TinyBackboneConfig):
    NAME = "dist"
    SEED = 0
    IMAGES_PER_GPU = args["images_per_gpu"]
    STEPS_PER_EPOCH = args["steps"]
    VALIDATION_STEPS = 0
    WEIGHT_DECAY = 0.0
    ROI_POSITIVE_RATIO = 1.0          # every positive RoI, no negative one ...
    TRAIN_ROIS_PER_IMAGE = 100        # ... of the 100 random RoIs: none dropped at random
    TRAIN_BN = args.get("train_bn", False)
    SYNC_BATCH_NORM = args.get("sync_bn", False)
    SCALE_LEARNING_RATE = args.get("scale_lr", False)
    STRATEGY = "auto" if args["strategy"] == "mirrored-cpus" else args["strategy"]  # a scope wins


data = LoggedShapes()
data.load_shapes(40, seed=1)
data.prepare()
if args["strategy"] == "mirrored-cpus":
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = modellib.MaskRCNN("training", DistConfig(), args["logs"])
else:
    model = modellib.MaskRCNN("training", DistConfig(), args["logs"])
start = [w.numpy() for w in model.keras_model.weights]
history = model.train(data, None, learning_rate=0.02, epochs=args["epochs"], layers="all",
                      workers=1, verbose=0, resume=args.get("resume", False))
np.savez(args["out"], loss=np.array(history.history["loss"]), loaded=np.array(loaded),
         gpu_count=model.config.GPU_COUNT, epoch=model.epoch,
         learning_rate=model.keras_model.optimizer.learning_rate.numpy(),
         moved=max(np.abs(w.numpy() - s).max() for w, s in zip(model.keras_model.weights, start)),
         **{f"w{i:03d}": w.numpy() for i, w in enumerate(model.keras_model.weights)})
print("DONE", flush=True)

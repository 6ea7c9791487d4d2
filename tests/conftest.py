"""Shared fixtures: a tiny shapes dataset drawn with numpy, a small, fast config (and the
variants tests derive from it), and a local HTTP server for the code that downloads."""

import contextlib
import functools
import http.server
import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mrcnn import utils  # noqa: E402
from mrcnn.config import Config  # noqa: E402


class TinyConfig(Config):
    """128-px images, ResNet-50, few RoIs: a model that builds and steps in seconds on 2 cores."""
    NAME = "tiny"
    BACKBONE = "resnet50"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 3
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 128
    POST_NMS_ROIS_INFERENCE = 64
    TRAIN_ROIS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 8
    DETECTION_MAX_INSTANCES = 16
    MINI_MASK_SHAPE = (28, 28)
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    STEPS_PER_EPOCH = 5
    VALIDATION_STEPS = 1


# Variants hold only what their tests' assertions need to differ.

class GraphConfig(TinyConfig):
    """test_graph's: fewer RoIs and detections, all kept, narrower FPN/FC layers (same names)."""
    NAME = "graph_test"
    PRE_NMS_LIMIT = 500
    POST_NMS_ROIS_TRAINING = 100
    POST_NMS_ROIS_INFERENCE = 50
    MAX_GT_INSTANCES = 6
    DETECTION_MAX_INSTANCES = 10
    DETECTION_MIN_CONFIDENCE = 0.0
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64


class SmallConfig(TinyConfig):
    """test_data's: its two-class ShapesDataset, with matterport's 56x56 mini-masks."""
    NAME = "data-test"
    NUM_CLASSES = 1 + 2
    MAX_GT_INSTANCES = 10
    MINI_MASK_SHAPE = (56, 56)


class TinyShapes(utils.Dataset):
    """Squares, circles and triangles (classes 1..3) on a plain background, drawn from a seed."""

    def load_shapes(self, count, seed=0, size=128):
        for name, class_id in (("square", 1), ("circle", 2), ("triangle", 3)):
            self.add_class("shapes", class_id, name)
        rng = np.random.default_rng(seed)
        for i in range(count):
            shapes = []
            for _ in range(rng.integers(1, 4)):
                cls = int(rng.integers(1, 4))
                r = int(rng.integers(12, 28))
                cy, cx = (int(v) for v in rng.integers(r, size - r, 2))
                shapes.append((cls, cy, cx, r, tuple(int(c) for c in rng.integers(60, 255, 3))))
            bg = tuple(int(c) for c in rng.integers(0, 50, 3))
            self.add_image("shapes", image_id=i, path=None, size=size, bg=bg, shapes=shapes)

    def _draw(self, cls, cy, cx, r, size):
        yy, xx = np.mgrid[:size, :size]
        if cls == 1:
            return (abs(yy - cy) < r) & (abs(xx - cx) < r)
        if cls == 2:
            return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        return (yy < cy + r) & (yy - (cy - r) > 2 * abs(xx - cx))

    def load_image(self, image_id):
        info = self.image_info[image_id]
        image = np.empty((info["size"], info["size"], 3), np.uint8)
        image[:] = info["bg"]
        for cls, cy, cx, r, color in info["shapes"]:
            image[self._draw(cls, cy, cx, r, info["size"])] = color
        return image

    def load_mask(self, image_id):
        info = self.image_info[image_id]
        masks = np.stack([self._draw(cls, cy, cx, r, info["size"])
                          for cls, cy, cx, r, _ in info["shapes"]], axis=-1)
        # Later shapes occlude earlier ones.
        for i in range(masks.shape[-1] - 2, -1, -1):
            masks[..., i] &= ~np.any(masks[..., i + 1:], axis=-1)
        class_ids = np.array([s[0] for s in info["shapes"]], np.int32)
        keep = masks.any(axis=(0, 1))
        return masks[..., keep], class_ids[keep]


@pytest.fixture
def tiny_config():
    return TinyConfig()


@pytest.fixture(scope="session")
def shapes_train():
    ds = TinyShapes()
    ds.load_shapes(40, seed=1)
    ds.prepare()
    return ds


@pytest.fixture(scope="session")
def shapes_val():
    ds = TinyShapes()
    ds.load_shapes(8, seed=2)
    ds.prepare()
    return ds


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder's files without logging each request to stderr."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_server(directory=None, handler=None):
    """An HTTP server on 127.0.0.1 (a free port) in a thread; yields its base URL.

    Serves `directory`'s files, or answers with `handler` (a BaseHTTPRequestHandler class).
    """
    if handler is None:
        handler = functools.partial(QuietFiles, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def op_determinism_off_after_each_test():
    """A model with Config.SEED turns TensorFlow's op determinism on for the process;
    each test starts without it."""
    yield
    from tensorflow.python.framework import config as tf_config
    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()

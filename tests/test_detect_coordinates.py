"""detect() and detect_molded() on a resized and padded image: hand-made network outputs
(normalised detections, per-class masks) land on hand-computed pixel boxes and mask pixels.

The network is replaced by a function returning the hand-made outputs, so what is checked is
everything around it: mold_inputs' window and scale, unmold_detections and mask pasting.
Normalised boxes follow matterport's convention: pixel (y1, x1, y2, x2) with y2/x2 exclusive
maps to ((y1, x1, y2 - 1, x2 - 1)) / (size - 1).
"""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import model as modellib
from mrcnn.image_meta import parse_image_meta
from tests.conftest import TinyConfig


class OneImage(TinyConfig):
    IMAGES_PER_GPU = 1


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return modellib.MaskRCNN("inference", OneImage(), str(tmp_path_factory.mktemp("logs")))


def network_outputs(boxes, class_ids, config):
    """Detections [1, DETECTION_MAX_INSTANCES, 6] (zero padded) and masks [1, N, 28, 28,
    NUM_CLASSES] that are 1 on each detection's own class plane and 0 on every other."""
    n = config.DETECTION_MAX_INSTANCES
    detections = np.zeros((1, n, 6), np.float32)
    masks = np.zeros((1, n, *config.MASK_SHAPE, config.NUM_CLASSES), np.float32)
    for i, (box, class_id) in enumerate(zip(boxes, class_ids)):
        detections[0, i] = [*box, class_id, 0.9 - 0.1 * i]
        masks[0, i, :, :, class_id] = 1.0
    detections[0, len(boxes) + 1] = [0.1, 0.1, 0.5, 0.5, 1, 0.5]   # after the padding: ignored
    return detections, masks


@pytest.fixture
def fake_network(detector, monkeypatch):
    """Make the network return the given outputs; returns the inputs it was called with."""
    calls = []

    def install(boxes, class_ids):
        detections, masks = network_outputs(boxes, class_ids, detector.config)

        def predict(inputs):
            calls.append([np.asarray(x) for x in inputs])
            outputs = {"mrcnn_detection": tf.constant(detections), "mrcnn_mask": tf.constant(masks)}
            return [outputs.get(name) for name in detector.keras_model.output_names]
        monkeypatch.setattr(detector, "_predict", predict)
        return calls
    return install


def box_mask(shape, box):
    y1, x1, y2, x2 = box
    mask = np.zeros(shape, bool)
    mask[y1:y2, x1:x2] = True
    return mask


def check(result, boxes, class_ids, shape):
    np.testing.assert_array_equal(result["rois"], np.array(boxes, np.int32))
    np.testing.assert_array_equal(result["class_ids"], class_ids)
    np.testing.assert_allclose(result["scores"], [0.9, 0.8][:len(boxes)], rtol=1e-6)
    assert result["masks"].shape == shape + (len(boxes),)
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(result["masks"][..., i], box_mask(shape, box), err_msg=str(i))


def test_square_mode_300x200(detector, fake_network):
    """300x200 -> scale 128/300, resized to 128x85 (round(200 * 128 / 300) = 85), padded left
    (128 - 85) // 2 = 21 and right 22: window (0, 21, 128, 106), normalised (0, 21/127, 1, 105/127).

    Detection 1 is the molded pixel box (64, 42, 96, 84), normalised (64, 42, 95, 83) / 127.
    In the window: y (64/127) / 1, x (42 - 21) / 84; times (299, 199), rounded:
    y1 = 150.68 -> 151, x1 = 49.75 -> 50, y2 = 95/127 * 299 + 1 = 224.66 -> 225,
    x2 = 62/84 * 199 + 1 = 147.88 -> 148. Detection 2 is the window itself: the whole image.
    """
    calls = fake_network([(64 / 127, 42 / 127, 95 / 127, 83 / 127), (0, 21 / 127, 1, 105 / 127)], [2, 3])
    result = detector.detect([np.full((300, 200, 3), 100, np.uint8)])[0]
    check(result, [(151, 50, 225, 148), (0, 0, 300, 200)], [2, 3], (300, 200))
    image, meta, _ = calls[0]
    meta = parse_image_meta(meta)
    assert image.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(meta["window"][0], [0, 21, 128, 106])
    np.testing.assert_array_equal(meta["original_image_shape"][0], [300, 200, 3])
    np.testing.assert_allclose(meta["scale"][0], 128 / 300, rtol=1e-6)
    # Padding columns are zero after molding: pixel - MEAN_PIXEL, i.e. -MEAN_PIXEL.
    np.testing.assert_allclose(image[0, :, :21], np.broadcast_to(-detector.config.MEAN_PIXEL, (128, 21, 3)), rtol=1e-6)
    np.testing.assert_allclose(image[0, :, 106:], np.broadcast_to(-detector.config.MEAN_PIXEL, (128, 22, 3)), rtol=1e-6)


def test_detect_molded_gives_molded_pixels(detector, fake_network):
    """The same detection through detect_molded: the molded pixel box, (64, 42, 96, 84)."""
    fake_network([(64 / 127, 42 / 127, 95 / 127, 83 / 127)], [1])
    molded, metas, _ = detector.mold_inputs([np.full((300, 200, 3), 100, np.uint8)])
    result = detector.detect_molded(molded, metas)[0]
    check(result, [(64, 42, 96, 84)], [1], (128, 128))


def test_pad64_mode_300x200(detector, fake_network, monkeypatch):
    """pad64, IMAGE_MIN_DIM 128: scale max(1, 128/200) = 1; 300x200 padded to 320x256,
    (320 - 300) // 2 = 10 rows on top, (256 - 200) // 2 = 28 columns on the left: window
    (10, 28, 310, 228). The molded pixel box (40, 68, 160, 149) is the original (30, 40, 150, 121);
    detect_molded keeps it in molded pixels."""
    monkeypatch.setattr(detector.config, "IMAGE_RESIZE_MODE", "pad64")
    box = (40 / 319, 68 / 255, 159 / 319, 148 / 255)
    calls = fake_network([box], [2])
    image = np.full((300, 200, 3), 100, np.uint8)
    check(detector.detect([image])[0], [(30, 40, 150, 121)], [2], (300, 200))
    molded, meta, _ = calls[0]
    assert molded.shape == (1, 320, 256, 3)
    np.testing.assert_array_equal(parse_image_meta(meta)["window"][0], [10, 28, 310, 228])
    np.testing.assert_array_equal(parse_image_meta(meta)["scale"][0], 1)

    molded, metas, _ = detector.mold_inputs([image])
    check(detector.detect_molded(molded, metas)[0], [(40, 68, 160, 149)], [2], (320, 256))


def test_unmold_detections_pastes_each_mask_as_unmold_mask_does(detector):
    """Random soft masks on random boxes inside the window, one on its bottom-right corner:
    every pasted mask is matterport's utils.unmold_mask of the same mask and box."""
    from mrcnn import utils
    rng = np.random.default_rng(4)
    config, n = detector.config, 9
    window = (19, 0, 109, 128)                             # normalised: y 19/127 .. 108/127
    low, high = np.array([19, 0]) / 127, np.array([108, 127]) / 127
    y1, x1 = (rng.uniform(low[i], low[i] + 0.7 * (high[i] - low[i]), n) for i in (0, 1))
    boxes = np.stack([y1, x1, np.minimum(y1 + rng.uniform(0.05, 0.5, n), high[0]),
                      np.minimum(x1 + rng.uniform(0.05, 0.5, n), high[1])], 1)
    boxes[0, 2:] = high
    detections = np.zeros((config.DETECTION_MAX_INSTANCES, 6), np.float32)
    detections[:n] = np.concatenate([boxes, rng.integers(1, 4, (n, 1)),
                                     np.linspace(0.9, 0.5, n)[:, None]], 1)
    masks = rng.uniform(size=(config.DETECTION_MAX_INSTANCES, *config.MASK_SHAPE,
                              config.NUM_CLASSES)).astype(np.float32)
    image_shape, original = (128, 128, 3), (90, 128, 3)
    rois, class_ids, _, full = detector.unmold_detections(detections, masks, original,
                                                          image_shape, window)
    assert full.shape == (90, 128, len(rois)) and full.dtype == bool and len(rois) == n
    assert full.any(axis=(0, 1)).all()
    for i, (box, class_id) in enumerate(zip(rois, class_ids)):
        np.testing.assert_array_equal(full[..., i],
                                      utils.unmold_mask(masks[i, :, :, class_id], box, original))

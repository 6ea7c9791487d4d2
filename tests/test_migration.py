"""What a user migrating from matterport sees: imgaug on numpy 2 (the `imaug` fork) and
the console output of a staged training."""

import os

import numpy as np
import pytest

from mrcnn import ground_truth


@pytest.fixture(scope="module")
def iaa():
    """imgaug's augmenters, as matterport's samples import them (`pip install ".[imgaug]"`)."""
    try:
        from imgaug import augmenters
    except ImportError:
        pytest.skip("imgaug is not installed: pip install imaug")
    except AttributeError as error:  # imgaug 0.4.0 reads np.sctypes, removed in numpy 2
        if "sctypes" not in str(error):
            raise
        pytest.skip("the installed imgaug (0.4.0) does not import on numpy 2: "
                    "pip uninstall -y imgaug && pip install imaug")
    return augmenters


def nucleus_augmentation(iaa):
    """matterport's samples/nucleus/nucleus.py augmentation, verbatim in meaning."""
    return iaa.SomeOf((0, 2), [
        iaa.Fliplr(0.5),
        iaa.Flipud(0.5),
        iaa.OneOf([iaa.Affine(rotate=90), iaa.Affine(rotate=180), iaa.Affine(rotate=270)]),
        iaa.Multiply((0.8, 1.5)),
        iaa.GaussianBlur(sigma=(0.0, 5.0)),
    ])


def load(dataset, config, augmentation=None):
    image, _, class_ids, boxes, masks = ground_truth.load_image_gt(
        dataset, config, 0, augmentation=augmentation, use_mini_mask=False)
    return image, class_ids, boxes, masks


def test_real_imgaug_fliplr_and_multiply(iaa, shapes_train, tiny_config):
    plain, plain_ids, _, plain_masks = load(shapes_train, tiny_config)
    image, class_ids, boxes, masks = load(shapes_train, tiny_config,
                                          iaa.Sequential([iaa.Fliplr(1.0), iaa.Multiply(0.5)]))
    assert np.abs(image.astype(int) - plain[:, ::-1] // 2).max() <= 1
    assert np.array_equal(masks, plain_masks[:, ::-1])
    assert np.array_equal(class_ids, plain_ids)
    for box, mask in zip(boxes, np.moveaxis(masks, -1, 0)):
        rows, cols = np.where(mask)
        assert box.tolist() == [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]


def test_nucleus_augmenters_move_masks_with_geometry_only(iaa, shapes_train, tiny_config):
    plain, plain_ids, _, plain_masks = load(shapes_train, tiny_config)
    # Geometric augmenters move image and masks alike (imgaug rotates clockwise).
    geometric = [(iaa.Fliplr(1.0), lambda a: a[:, ::-1]), (iaa.Flipud(1.0), lambda a: a[::-1]),
                 *[(iaa.Affine(rotate=90 * k), lambda a, k=k: np.rot90(a, -k)) for k in (1, 2, 3)]]
    for augmenter, move in geometric:
        image, class_ids, _, masks = load(shapes_train, tiny_config, augmenter)
        assert np.array_equal(image, move(plain)), augmenter
        assert np.array_equal(masks, move(plain_masks)), augmenter
        assert np.array_equal(class_ids, plain_ids)
    # Colour and blur change the image only: a blurred mask would grow a fringe.
    for augmenter in (iaa.Multiply(1.5), iaa.GaussianBlur(sigma=5.0)):
        image, _, _, masks = load(shapes_train, tiny_config, augmenter)
        assert np.abs(image.astype(int) - plain).max() > 20, augmenter
        assert np.array_equal(masks, plain_masks), augmenter


def test_nucleus_augmentation_keeps_masks_on_their_objects(iaa, shapes_train, tiny_config):
    import imgaug
    imgaug.random.seed(0)
    aug = nucleus_augmentation(iaa)
    plain, _, _, plain_masks = load(shapes_train, tiny_config)
    dihedral = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for k in range(4) for f in (0, 1)]
    seen = set()
    for _ in range(24):
        image, _, _, masks = load(shapes_train, tiny_config, aug)
        # Only flips and quarter turns touch the masks: they are one of the 8 symmetries ...
        moves = [i for i, move in enumerate(dihedral) if np.array_equal(masks, move(plain_masks))]
        assert moves, "masks changed by a non-geometric augmenter"
        seen.add(moves[0])
        # ... and the image moved the same way: the bright shapes lie under their masks.
        inside = masks.any(-1)
        assert image[inside].mean() > image[~inside].mean() + 40
    assert len(seen) >= 3  # SomeOf((0, 2), ...) picked different geometric moves


def test_seeded_pipeline_repeats_imgaug_augmentation_whatever_the_workers(iaa, shapes_train,
                                                                          tiny_config):
    """Each image's augmenter copy is seeded from (SEED, epoch, position), so loading threads
    racing on the user's augmenter change nothing."""
    from mrcnn.pipeline import training_dataset
    aug = nucleus_augmentation(iaa)

    def images(workers, augmentation=aug):
        pipeline = training_dataset(shapes_train, tiny_config, steps=4, seed=7, workers=workers,
                                    augmentation=augmentation)
        return np.stack([b["input_image"].numpy() for b in pipeline.take(4)])

    one, three = images(1), images(3)
    np.testing.assert_array_equal(one, three)
    assert not np.array_equal(one, images(1, augmentation=None))


# ---------------------------------------------------------------- console output

def test_retrace_filter_drops_only_the_first_trace_after_compile():
    import logging

    import keras

    from mrcnn.model import _FirstTraceAfterCompile

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), batch_size=2, verbose=0)   # one trace
    retrace_filter = _FirstTraceAfterCompile(model)
    train_function = next(retrace_filter._compiled_functions())

    def warning_about(function):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 0,
                                 f"5 out of the last 7 calls to {function!r} triggered tf.function "
                                 "retracing. Tracing is expensive ...", None, None)

    assert not retrace_filter.filter(warning_about(train_function.python_function))
    assert retrace_filter.filter(warning_about(warning_about))             # someone else's function
    assert retrace_filter.filter(logging.LogRecord("tensorflow", logging.WARNING, __file__, 0,
                                                   "another warning", None, None))
    model.fit(np.ones((3, 3)), np.ones((3, 1)), batch_size=2, verbose=0)   # a batch of 1: a retrace
    assert train_function.experimental_get_tracing_count() == 2
    assert retrace_filter.filter(warning_about(train_function.python_function))


TRAIN_THREE_STAGES = """
import sys
from mrcnn import model as modellib   # first, as in matterport's scripts
import tensorflow as tf
sys.path.insert(0, sys.argv[1])
from conftest import TinyConfig, TinyShapes

class Config(TinyConfig):
    STEPS_PER_EPOCH = 1
    VALIDATION_STEPS = 1

dataset = TinyShapes()
dataset.load_shapes(4, seed=1)
dataset.prepare()
model = modellib.MaskRCNN("training", Config(), sys.argv[2])
for epoch, layers in enumerate(["heads", "4+", "all"], start=1):
    model.train(dataset, dataset, learning_rate=0.001, epochs=epoch, layers=layers, workers=1)

@tf.function
def user_function(x):
    return x + 1

for n in range(1, 7):  # six shapes, six traces: a retrace the user should hear about
    user_function(tf.zeros([n]))
raise ValueError("a real error after training")
"""


@pytest.mark.large
def test_three_training_stages_print_no_retrace_warning_but_real_problems(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # TF's default
    env["PYTHONPATH"] = str(tests.parent)
    result = subprocess.run([sys.executable, "-c", TRAIN_THREE_STAGES, str(tests), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=600)
    stderr = result.stderr
    assert result.returncode == 1 and "ValueError: a real error after training" in stderr
    assert "Epoch 3/3" in result.stdout                                   # all three stages ran
    assert "user_function at" in stderr and "triggered tf.function retracing" in stderr
    assert "multi_step_on_iterator" not in stderr
    assert "PredictCost" not in stderr                # Grappler's CropAndResize notes (mrcnn/__init__)

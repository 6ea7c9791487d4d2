"""The tf.data training pipeline: named full batches, skipping and errors, seeded order,
sharding by input context, and what train() accepts."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import geometry, ground_truth, image_meta, pipeline
from mrcnn import mask_rcnn
from mrcnn import model as modellib
from samples.shapes.shapes import lite_backbone, lite_backbone_shapes
from tests.conftest import SmallConfig
from tests.test_data import Broken, ShapesDataset, hflip


class LiteSmall(SmallConfig):
    """SmallConfig on the shapes sample's small backbone: models that build in a second."""
    BACKBONE = staticmethod(lite_backbone)
    COMPUTE_BACKBONE_SHAPE = staticmethod(lite_backbone_shapes)
    STEPS_PER_EPOCH = 2


@pytest.fixture
def config():
    return LiteSmall()


def image_ids(batch):
    return image_meta.parse_image_meta(batch["input_image_meta"].numpy())["image_id"].tolist()


def test_batches_are_named_full_and_cover_each_pass(config):
    ds = ShapesDataset(count=9, shapes={3: [], 7: []})
    batches = list(pipeline.training_dataset(ds, config, steps=5, seed=0).take(10))
    spec = pipeline.batch_spec(config)
    for batch in batches:
        assert list(batch) == [name for name, _, _ in spec]
        for name, dtype, shape in spec:
            assert batch[name].dtype == dtype and tuple(batch[name].shape) == (2,) + shape, name
        assert np.all((batch["input_gt_class_ids"].numpy() > 0).sum(axis=1) >= 2)
    first, second = ([i for b in batches[k:k + 5] for i in image_ids(b)] for k in (0, 5))
    # 10 images an epoch from whole permutations of the 7 with instances; epochs differ.
    assert not {3, 7} & set(first) and set(first[:7]) == set(range(9)) - {3, 7}
    assert first != second
    rpn_match = batches[0]["input_rpn_match"].numpy()
    assert rpn_match.shape == (2, geometry.compute_anchors(config, config.IMAGE_SHAPE).shape[0], 1)
    assert np.all((rpn_match == 1).sum(axis=(1, 2)) >= 1)
    unshuffled = pipeline.training_dataset(ds, config, shuffle=False, steps=2, batch_size=3)
    assert [image_ids(b) for b in unshuffled.take(2)] == [[0, 1, 2], [4, 5, 6]]
    with_rois = next(iter(pipeline.training_dataset(ds, config, random_rois=20)))
    assert with_rois["input_roi"].shape == (2, 20, 4) and with_rois["input_roi"].dtype == tf.int32


def test_batch_values_equal_the_numpy_loading_code(config):
    """The pipeline's fields are data_generator's arrays, in the model's dtypes."""
    ds = ShapesDataset(count=4)
    batch = next(iter(pipeline.training_dataset(ds, config, shuffle=False, seed=5,
                                                augmentation=hflip)))
    anchors = geometry.compute_anchors(config, config.IMAGE_SHAPE)
    for row, image_id in enumerate((0, 1)):
        rng = np.random.RandomState(np.random.SeedSequence([5, 0, row]).generate_state(4))
        sample = ground_truth._load_sample(ds, config, image_id, anchors, hflip, 0, False, rng=rng)
        expected = pipeline._collate([sample], config, pipeline.batch_spec(config))
        assert list(expected) == list(batch)
        for name, value in batch.items():
            value = value.numpy()[row]
            np.testing.assert_array_equal(value, expected[name][0].astype(value.dtype), err_msg=name)


@pytest.mark.large
def test_failed_images_are_skipped_and_repeated_failures_raise_the_real_error(config, caplog,
                                                                             tmp_path):
    class SometimesBroken(ShapesDataset):
        def load_image(self, image_id):
            if image_id % 3 == 0:
                raise OSError(f"cannot read image {image_id}")
            return super().load_image(image_id)

    ds = SometimesBroken(count=9)
    with caplog.at_level(logging.ERROR, logger="mrcnn.pipeline"):
        batches = list(pipeline.training_dataset(ds, config, steps=3, shuffle=False).take(3))
    assert [image_ids(b) for b in batches] == [[1, 2], [4, 5], [7, 8]]
    assert sum("cannot read image" in str(r.exc_info[1]) for r in caplog.records) >= 2

    model = modellib.MaskRCNN("training", config, str(tmp_path))
    with pytest.raises(ValueError, match="masks of size") as info:   # not a TensorFlow error
        model.train(Broken("size"), None, 0.001, epochs=1, layers="heads", verbose=0)
    assert any("in a row failed" in note for note in info.value.__notes__)
    empty = ShapesDataset(count=2, shapes={0: [], 1: []})
    with pytest.raises(ValueError, match="no image of the dataset has instances"):
        model.train(empty, None, 0.001, epochs=1, layers="heads", verbose=0)
    # Iterated directly, TensorFlow's error carries the message.
    with pytest.raises(tf.errors.InvalidArgumentError, match="no image of the dataset has inst"):
        next(iter(pipeline.training_dataset(empty, config)))


@pytest.mark.large
def test_wrong_image_size_stops_train_with_the_shape_error(config, tmp_path):
    config.IMAGE_RESIZE_MODE = "pad64"                            # 128x96 becomes 192x128
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    with pytest.raises(ground_truth.TrainingShapeError, match="after resizing"):
        model.train(ShapesDataset(count=2, size=(128, 96)), None, 0.001, epochs=1,
                    layers="heads", verbose=0)


def test_input_context_shards_positions_and_splits_the_batch(config):
    ds = ShapesDataset(count=8)
    whole = [i for b in pipeline.training_dataset(ds, config, steps=4, batch_size=4, seed=1,
                                                  shuffle=False).take(2) for i in image_ids(b)]
    shards = []
    for pipeline_id in (0, 1):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        fn = pipeline.dataset_fn(ds, config, steps=2, batch_size=4, seed=1, shuffle=False)
        batches = list(fn(context).take(2))
        assert all(b["input_image"].shape[0] == 2 for b in batches)
        shards.append([i for b in batches for i in image_ids(b)])
    assert shards == [whole[0::2], whole[1::2]]
    # One pipeline feeding two replicas (MirroredStrategy on one machine): each of the
    # epoch's 2 global steps takes two of its batches.
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    fn = pipeline.dataset_fn(ds, config, steps=2, batch_size=4, seed=1, shuffle=False)
    assert [i for b in fn(context).take(4) for i in image_ids(b)] == whole


@pytest.mark.large
def test_train_accepts_a_tf_data_dataset_and_a_dataset_fn(config, tmp_path):
    ds = ShapesDataset(count=4, seed=2)
    model = modellib.MaskRCNN("training", config, str(tmp_path))
    history = model.train(pipeline.training_dataset(ds, config, steps=2), None, 0.001,
                          epochs=1, layers="heads", verbose=0).history
    assert np.isfinite(history["loss"][0]) and model.epoch == 1
    history = model.train(pipeline.dataset_fn(ds, config, steps=2, epoch=1),
                          pipeline.dataset_fn(ds, config, steps=1), 0.001, epochs=2,
                          layers="heads", verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    assert model.epoch == 2
    with pytest.raises(ValueError, match="pass a prepared utils.Dataset"):
        model.train([ds], None, 0.001, epochs=3, layers="heads")
    with pytest.raises(ValueError, match="augmentation and no_augmentation_sources apply"):
        model.train(pipeline.training_dataset(ds, config), None, 0.001, epochs=3,
                    layers="heads", augmentation=hflip)


def test_fit_calls_train_step_with_the_named_inputs_and_no_targets(config):
    dataset = pipeline.training_dataset(ShapesDataset(count=4), config, steps=2, workers=2)
    spec = pipeline.batch_spec(config)
    inputs = {name: keras.Input(shape=shape, dtype=dtype.name, name=name)
              for name, dtype, shape in spec}
    probe = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inputs["input_image"]))
    seen = []

    class Probe(keras.Model):
        def train_step(self, batch):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            seen.append((sorted(x), y, sample_weight))
            return {"out": keras.ops.mean(self(x))}

    model = Probe(inputs, probe)
    model.compile(run_eagerly=True)
    model.fit(dataset, epochs=2, steps_per_epoch=2, verbose=0, shuffle=False)
    assert len(seen) == 4
    assert all(x == sorted(inputs) and y is None and sw is None for x, y, sw in seen)


@pytest.mark.parametrize("use_rpn_rois", [True, False])
def test_batch_names_are_the_training_models_inputs_in_order(config, use_rpn_rois):
    config.USE_RPN_ROIS = use_rpn_rois
    model = mask_rcnn.build_training_model(config)
    random_rois = 0 if use_rpn_rois else config.POST_NMS_ROIS_TRAINING
    spec = pipeline.batch_spec(config, random_rois)
    assert [name for name, _, _ in spec] == [t.name for t in model.inputs]
    for (name, _, shape), t in zip(spec, model.inputs):
        assert all(d is None or d == s for d, s in zip(t.shape[1:], shape)), name
    named = {name: np.zeros((1,) + shape) for name, _, shape in spec}
    assert [x is named[name] for x, (name, _, _) in
            zip(mask_rcnn.inputs_in_order(model, named), spec)] == [True] * len(spec)
    with pytest.raises(ValueError, match=r"\['input_gt_masks'\] are missing"):
        mask_rcnn.inputs_in_order(model, {k: v for k, v in named.items() if k != "input_gt_masks"})


def test_outputs_are_read_by_name():
    x = keras.Input(shape=[3], name="x")
    model = keras.Model(x, [keras.layers.Dense(1, name="first")(x),
                            keras.layers.Identity(name="second")(x)])
    assert mask_rcnn.outputs_by_name(model, ["a", "b"]) == {"first": "a", "second": "b"}
    with pytest.raises(ValueError, match=r"has 2 outputs \['first', 'second'\], got 1 values"):
        mask_rcnn.outputs_by_name(model, ["a"])

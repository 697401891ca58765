"""Tests of the quickstart's generated images and tiny hub backbone (`tfhub_ft.demo`)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft.demo import shapes, tiny_backbone

_EXPECTED_VARIABLE_NAMES = [
    f"{layer}_{suffix}:0"
    for layer in ("stem", "block_1", "block_2", "block_3", "head")
    for suffix in ("conv/kernel", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance")
]


def _uniform_images(batch_size=4, image_size=32, seed=0):
    return tf.random.stateless_uniform([batch_size, image_size, image_size, 3], seed=[seed, 0])


@pytest.fixture(scope="module")
def saved_backbone_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("backbone"))
    return tiny_backbone.build_tiny_backbone(path, constant_init=True)


# --- make_shape_images -------------------------------------------------------


def test_make_shape_images_shapes_dtypes_and_balance():
    images, labels, class_names = shapes.make_shape_images(5, 3, image_size=24, seed=0)
    assert images.shape == (15, 24, 24, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (15,)
    assert labels.dtype == np.int32
    assert np.bincount(labels).tolist() == [3, 3, 3, 3, 3]
    assert class_names == [
        "red_solid_disc",
        "green_solid_square",
        "blue_solid_triangle",
        "red_horizontal_stripes_ring",
        "green_horizontal_stripes_disc",
    ]
    # Shuffled, not grouped by class.
    assert labels.tolist() != sorted(labels.tolist())
    # Noise and clutter make every image distinct, even within a class.
    assert len({image.tobytes() for image in images}) == 15
    assert images.min() < 40 and images.max() > 200


def test_make_shape_images_is_deterministic_per_seed():
    first = shapes.make_shape_images(4, 2, image_size=16, seed=3)
    second = shapes.make_shape_images(4, 2, image_size=16, seed=3)
    other = shapes.make_shape_images(4, 2, image_size=16, seed=4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2] == other[2]
    assert not np.array_equal(first[0], other[0])


def test_make_shape_images_class_capacity_and_distinct_tasks():
    _, source_labels, source_names = shapes.make_shape_images(48, 1, image_size=8, task="source")
    _, target_labels, target_names = shapes.make_shape_images(15, 1, image_size=8, task="target")
    assert shapes.MAX_SOURCE_CLASSES == 48
    assert shapes.MAX_TARGET_CLASSES == 15
    assert sorted(source_labels.tolist()) == list(range(48))
    assert sorted(target_labels.tolist()) == list(range(15))
    assert len(set(source_names)) == 48
    assert len(set(target_names)) == 15
    assert not set(source_names) & set(target_names)
    # Target classes reuse neither a source shape nor a source texture.
    source_words = set("_".join(source_names).split("_"))
    target_words = set("_".join(target_names).split("_"))
    assert source_words & target_words == {"stripes"}
    for name in source_names + target_names:
        assert re.fullmatch(r"[a-z_]+", name)


def test_make_shape_images_source_and_target_images_differ():
    source_images, _, _ = shapes.make_shape_images(3, 2, image_size=16, seed=0, task="source")
    target_images, _, _ = shapes.make_shape_images(3, 2, image_size=16, seed=0, task="target")
    assert not np.array_equal(source_images, target_images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_classes": 1, "images_per_class": 2},
            "Invalid value for `num_classes`. Expected an integer in [2, 48]. "
            "Received: num_classes=1",
        ),
        (
            {"num_classes": 16, "images_per_class": 2, "task": "target"},
            "Invalid value for `num_classes`. Expected an integer in [2, 15]. "
            "Received: num_classes=16",
        ),
        (
            {"num_classes": 2, "images_per_class": 0},
            "Invalid value for `images_per_class`. Expected an integer >= 1. "
            "Received: images_per_class=0",
        ),
        (
            {"num_classes": 2, "images_per_class": 1, "image_size": 4},
            "Invalid value for `image_size`. Expected an integer >= 8. Received: image_size=4",
        ),
        (
            {"num_classes": 2, "images_per_class": 1, "task": "other"},
            "Invalid value for `task`. Expected one of ['source', 'target']. "
            "Received: task='other'",
        ),
        (
            {"num_classes": True, "images_per_class": 1},
            "Invalid value for `num_classes`. Expected an integer in [2, 48]. "
            "Received: num_classes=True",
        ),
    ],
)
def test_make_shape_images_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        shapes.make_shape_images(**kwargs)


# --- TinyBackbone ------------------------------------------------------------


def test_tiny_backbone_variables_are_named_and_ordered_by_block():
    module = tiny_backbone.TinyBackbone()
    assert [variable.name for variable in module.variables] == _EXPECTED_VARIABLE_NAMES
    assert [variable.name for variable in module.trainable_variables] == [
        name for name in _EXPECTED_VARIABLE_NAMES if "moving" not in name
    ]
    assert module.regularization_losses == []
    assert sum(int(np.prod(variable.shape)) for variable in module.variables) == 2588
    assert sum(int(np.prod(variable.shape)) for variable in module.trainable_variables) == 2484


def test_tiny_backbone_names_ignore_the_callers_name_scope():
    with tf.name_scope("outer"):
        module = tiny_backbone.TinyBackbone(widths=(2, 3))
    assert module.variables[0].name == "stem_conv/kernel:0"
    assert module.variables[-1].name == "head_bn/moving_variance:0"
    assert module(_uniform_images(2, 8)).shape == (2, 3)


def test_tiny_backbone_initialization_is_reproducible():
    images = _uniform_images()
    constant_features = tiny_backbone.TinyBackbone(constant_init=True)(images).numpy()
    np.testing.assert_array_equal(
        constant_features, tiny_backbone.TinyBackbone(constant_init=True)(images).numpy()
    )
    # Not degenerate: live channels differ from each other and across images
    # (a few channels are exactly 0 after the final ReLU).
    live_features = constant_features[0][constant_features[0] > 0]
    assert len(live_features) >= 8
    assert len(np.unique(live_features)) == len(live_features)
    assert not np.allclose(constant_features[0], constant_features[1])
    seeded = tiny_backbone.TinyBackbone(seed=1)(images).numpy()
    np.testing.assert_array_equal(seeded, tiny_backbone.TinyBackbone(seed=1)(images).numpy())
    assert not np.allclose(seeded, tiny_backbone.TinyBackbone(seed=2)(images).numpy())


def test_tiny_backbone_rejects_invalid_widths():
    with pytest.raises(ValueError, match=re.escape("Received: widths=(4,)")):
        tiny_backbone.TinyBackbone(widths=(4,))
    with pytest.raises(ValueError, match=re.escape("Received: widths=(4, 0)")):
        tiny_backbone.TinyBackbone(widths=(4, 0))


def test_saved_backbone_matches_hub_convention(saved_backbone_path):
    loaded = tf.saved_model.load(saved_backbone_path)
    assert [variable.name for variable in loaded.variables] == _EXPECTED_VARIABLE_NAMES
    assert [variable.trainable for variable in loaded.variables] == [
        "moving" not in name for name in _EXPECTED_VARIABLE_NAMES
    ]
    assert len(loaded.trainable_variables) == 15
    assert list(loaded.regularization_losses) == []
    images = _uniform_images()
    expected = tiny_backbone.TinyBackbone(constant_init=True)(images).numpy()
    np.testing.assert_allclose(loaded(images, training=False).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(loaded(images).numpy(), expected, rtol=1e-6)
    assert loaded(_uniform_images(3, 64), training=True).shape == (3, 16)


def test_saved_backbone_training_updates_moving_statistics_only_in_training(saved_backbone_path):
    loaded = tf.saved_model.load(saved_backbone_path)
    images = _uniform_images(8, 32)
    initial = [variable.numpy().copy() for variable in loaded.variables]
    loaded(images, training=False)
    for variable, value in zip(loaded.variables, initial):
        np.testing.assert_array_equal(variable.numpy(), value)

    loaded(images, training=True)
    changed = [
        variable.name
        for variable, value in zip(loaded.variables, initial)
        if not np.array_equal(variable.numpy(), value)
    ]
    assert changed == [name for name in _EXPECTED_VARIABLE_NAMES if "moving" in name]
    # The stem sees the raw input, so its update can be checked directly:
    # moving = 0.99 * moving + 0.01 * batch statistic.
    stem_outputs = tf.nn.conv2d(images * 2.0 - 1.0, loaded.variables[0], strides=2, padding="SAME")
    mean, variance = tf.nn.moments(stem_outputs, axes=[0, 1, 2])
    moving_mean, moving_variance = loaded.variables[3].numpy(), loaded.variables[4].numpy()
    np.testing.assert_allclose(moving_mean, 0.01 * mean.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(moving_variance, 0.99 + 0.01 * variance.numpy(), rtol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_saved_backbone_gradients_reach_every_trainable_variable(saved_backbone_path, training):
    loaded = tf.saved_model.load(saved_backbone_path)
    images = _uniform_images(8, 32)
    # Uneven channel weights: with batch statistics, a plain sum of
    # normalised outputs could have an exactly zero gradient.
    channel_weights = tf.range(1.0, 17.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loaded(images, training=training) * channel_weights)
    gradients = tape.gradient(loss, loaded.trainable_variables)
    for variable, gradient in zip(loaded.trainable_variables, gradients):
        assert gradient is not None, variable.name
        assert float(tf.reduce_max(tf.abs(gradient))) > 0.0, variable.name


def test_save_feature_vector_module_rejects_non_modules(tmp_path):
    message = "Expected a `tf.Module`. Received: module of type function"
    with pytest.raises(TypeError, match=re.escape(message)):
        tiny_backbone.save_feature_vector_module(lambda images: images, str(tmp_path))

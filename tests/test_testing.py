"""Tests for the synthetic data and tiny backbones in `tfhub_ft.testing`."""

import os
import re
import time

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import testing

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
    return testing.build_tiny_backbone(path, constant_init=True)


# --- make_shape_images -------------------------------------------------------


def test_make_shape_images_shapes_dtypes_and_balance():
    images, labels, class_names = testing.make_shape_images(5, 3, image_size=24, seed=0)
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
    first = testing.make_shape_images(4, 2, image_size=16, seed=3)
    second = testing.make_shape_images(4, 2, image_size=16, seed=3)
    other = testing.make_shape_images(4, 2, image_size=16, seed=4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2] == other[2]
    assert not np.array_equal(first[0], other[0])


def test_make_shape_images_class_capacity_and_distinct_tasks():
    _, source_labels, source_names = testing.make_shape_images(48, 1, image_size=8, task="source")
    _, target_labels, target_names = testing.make_shape_images(15, 1, image_size=8, task="target")
    assert testing.MAX_SOURCE_CLASSES == 48
    assert testing.MAX_TARGET_CLASSES == 15
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
    source_images, _, _ = testing.make_shape_images(3, 2, image_size=16, seed=0, task="source")
    target_images, _, _ = testing.make_shape_images(3, 2, image_size=16, seed=0, task="target")
    assert not np.array_equal(source_images, target_images)


def test_make_shape_images_is_fast():
    start = time.perf_counter()
    images, _, _ = testing.make_shape_images(40, 50, image_size=64, seed=0)
    elapsed = time.perf_counter() - start
    assert images.shape == (2000, 64, 64, 3)
    assert elapsed < 5.0


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
        testing.make_shape_images(**kwargs)


# --- write_image_folder ------------------------------------------------------


def _image_files(directory):
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if not name.startswith("corrupt_") and name != "notes.txt"
    )


@pytest.mark.parametrize("image_format, extension", [("jpeg", ".jpg"), ("png", ".png")])
def test_write_image_folder_single_format(tmp_path, image_format, extension):
    images, labels, class_names = testing.make_shape_images(3, 2, image_size=16, seed=0)
    corrupt_paths = testing.write_image_folder(
        tmp_path, images, labels, class_names, image_format=image_format
    )
    assert corrupt_paths == []
    assert sorted(os.listdir(tmp_path)) == sorted(class_names)
    assert (tmp_path / class_names[0] / "notes.txt").is_file()
    paths = _image_files(tmp_path)
    assert len(paths) == 6
    for path in paths:
        index = int(os.path.basename(path).split(".")[0])
        assert path.endswith(extension)
        assert os.path.basename(os.path.dirname(path)) == class_names[labels[index]]
        decoded = tf.io.decode_image(tf.io.read_file(path)).numpy()
        assert decoded.shape == (16, 16, 3)
        if image_format == "png":
            np.testing.assert_array_equal(decoded, images[index])
        else:
            # Lossy, with chroma subsampling on small, noisy images.
            assert np.abs(decoded.astype(int) - images[index]).mean() < 20


def test_write_image_folder_mixed_formats_decode(tmp_path):
    images, labels, class_names = testing.make_shape_images(2, 5, image_size=16, seed=0)
    testing.write_image_folder(tmp_path, images, labels, class_names, image_format="mixed")
    paths = _image_files(tmp_path)
    extensions = sorted(os.path.splitext(path)[1] for path in paths)
    assert extensions == [
        ".JPG", ".PNG", ".bmp", ".gif", ".jpeg", ".jpg", ".jpg", ".jpg", ".png", ".png"
    ]
    for path in paths:
        index = int(os.path.basename(path).split(".")[0])
        decoded = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy()
        assert decoded.shape == (16, 16, 3)
        difference = np.abs(decoded.astype(int) - images[index])
        extension = os.path.splitext(path)[1].lower()
        if extension in (".png", ".bmp"):
            assert difference.max() == 0
        elif extension == ".gif":
            # 3-3-2 bit palette.
            assert difference.max() < 64
            assert tf.io.decode_image(tf.io.read_file(path)).shape == (1, 16, 16, 3)
        else:
            assert difference.mean() < 20


def test_write_image_folder_corrupt_files_are_returned_and_undecodable(tmp_path):
    images, labels, class_names = testing.make_shape_images(3, 2, image_size=16, seed=0)
    corrupt_paths = testing.write_image_folder(
        tmp_path, images, labels, class_names, corrupt_files=5, seed=1
    )
    assert [os.path.basename(path) for path in corrupt_paths] == [
        "corrupt_000.jpg",
        "corrupt_001.png",
        "corrupt_002.jpeg",
        "corrupt_003.bmp",
        "corrupt_004.png",
    ]
    assert {os.path.basename(os.path.dirname(path)) for path in corrupt_paths} == set(class_names)
    for path in corrupt_paths:
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(tf.io.read_file(path))
    assert len(_image_files(tmp_path)) == 6


def test_write_image_folder_rejects_invalid_arguments(tmp_path):
    images, labels, class_names = testing.make_shape_images(2, 1, image_size=8, seed=0)
    message = "Expected one of ['jpeg', 'png', 'mixed']. Received: image_format='tiff'"
    with pytest.raises(ValueError, match=re.escape(message)):
        testing.write_image_folder(tmp_path, images, labels, class_names, image_format="tiff")
    message = "Expected uint8. Received: images.dtype=float32"
    with pytest.raises(TypeError, match=re.escape(message)):
        testing.write_image_folder(tmp_path, images.astype(np.float32), labels, class_names)
    message = "Expected values in [0, 2). Received: labels in [0, 2]"
    with pytest.raises(ValueError, match=re.escape(message)):
        testing.write_image_folder(tmp_path, images, np.array([0, 2]), class_names)
    with pytest.raises(ValueError, match="Invalid value in `class_names`"):
        testing.write_image_folder(tmp_path, images, labels, ["a/b", "c"])


def test_write_grayscale_and_rgba(tmp_path):
    paths = testing.write_grayscale_and_rgba(tmp_path, "odd_class", count=2, image_size=12)
    assert [os.path.basename(path) for path in paths] == [
        "grayscale_0.png",
        "grayscale_1.png",
        "rgba_0.png",
        "rgba_1.png",
    ]
    channels = [tf.io.decode_png(tf.io.read_file(path)).shape for path in paths]
    assert channels == [(12, 12, 1), (12, 12, 1), (12, 12, 4), (12, 12, 4)]


# --- TinyBackbone ------------------------------------------------------------


def test_tiny_backbone_variables_are_named_and_ordered_by_block():
    module = testing.TinyBackbone()
    assert [variable.name for variable in module.variables] == _EXPECTED_VARIABLE_NAMES
    assert [variable.name for variable in module.trainable_variables] == [
        name for name in _EXPECTED_VARIABLE_NAMES if "moving" not in name
    ]
    assert module.regularization_losses == []
    assert sum(int(np.prod(variable.shape)) for variable in module.variables) == 2588
    assert sum(int(np.prod(variable.shape)) for variable in module.trainable_variables) == 2484


def test_tiny_backbone_names_ignore_the_callers_name_scope():
    with tf.name_scope("outer"):
        module = testing.TinyBackbone(widths=(2, 3))
    assert module.variables[0].name == "stem_conv/kernel:0"
    assert module.variables[-1].name == "head_bn/moving_variance:0"
    assert module(_uniform_images(2, 8)).shape == (2, 3)


def test_tiny_backbone_initialization_is_reproducible():
    images = _uniform_images()
    constant_features = testing.TinyBackbone(constant_init=True)(images).numpy()
    np.testing.assert_array_equal(
        constant_features, testing.TinyBackbone(constant_init=True)(images).numpy()
    )
    # Not degenerate: live channels differ from each other and across images
    # (a few channels are exactly 0 after the final ReLU).
    live_features = constant_features[0][constant_features[0] > 0]
    assert len(live_features) >= 8
    assert len(np.unique(live_features)) == len(live_features)
    assert not np.allclose(constant_features[0], constant_features[1])
    seeded = testing.TinyBackbone(seed=1)(images).numpy()
    np.testing.assert_array_equal(seeded, testing.TinyBackbone(seed=1)(images).numpy())
    assert not np.allclose(seeded, testing.TinyBackbone(seed=2)(images).numpy())


def test_tiny_backbone_rejects_invalid_widths():
    with pytest.raises(ValueError, match=re.escape("Received: widths=(4,)")):
        testing.TinyBackbone(widths=(4,))
    with pytest.raises(ValueError, match=re.escape("Received: widths=(4, 0)")):
        testing.TinyBackbone(widths=(4, 0))


def test_saved_backbone_matches_hub_convention(saved_backbone_path):
    loaded = tf.saved_model.load(saved_backbone_path)
    assert [variable.name for variable in loaded.variables] == _EXPECTED_VARIABLE_NAMES
    assert [variable.trainable for variable in loaded.variables] == [
        "moving" not in name for name in _EXPECTED_VARIABLE_NAMES
    ]
    assert len(loaded.trainable_variables) == 15
    assert list(loaded.regularization_losses) == []
    images = _uniform_images()
    expected = testing.TinyBackbone(constant_init=True)(images).numpy()
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


def test_saved_backbone_forward_is_fast(saved_backbone_path):
    loaded = tf.saved_model.load(saved_backbone_path)
    images = _uniform_images(64, 64)
    loaded(images, training=False)
    durations = []
    for _ in range(5):
        start = time.perf_counter()
        loaded(images, training=False).numpy()
        durations.append(time.perf_counter() - start)
    # About 4 ms on 2 CPU cores; the bound leaves room for a busy machine.
    assert sorted(durations)[2] < 0.1


def test_save_feature_vector_module_rejects_non_modules(tmp_path):
    message = "Expected a `tf.Module`. Received: module of type function"
    with pytest.raises(TypeError, match=re.escape(message)):
        testing.save_feature_vector_module(lambda images: images, str(tmp_path))


def test_save_non_feature_vector_module_returns_feature_maps(tmp_path):
    path = testing.save_non_feature_vector_module(str(tmp_path / "feature_map"))
    loaded = tf.saved_model.load(path)
    assert loaded(_uniform_images(2, 32), training=False).shape == (2, 2, 2, 16)
    assert loaded(_uniform_images(2, 40), training=True).shape == (2, 3, 3, 16)


def test_save_tf1_hub_module_stub(tmp_path):
    path = testing.save_tf1_hub_module_stub(str(tmp_path / "tf1"))
    assert sorted(os.listdir(path)) == ["saved_model.pb", "tfhub_module.pb", "variables"]
    with open(os.path.join(path, "tfhub_module.pb"), "rb") as file:
        assert file.read() == b"\x08\x03"

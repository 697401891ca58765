"""Tests of the test-only fixtures (`tests/fixtures.py`): image folders, odd modules."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tfhub_ft.demo import shapes


def _uniform_images(batch_size=4, image_size=32, seed=0):
    return tf.random.stateless_uniform([batch_size, image_size, image_size, 3], seed=[seed, 0])


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
    images, labels, class_names = shapes.make_shape_images(3, 2, image_size=16, seed=0)
    corrupt_paths = fixtures.write_image_folder(
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
    images, labels, class_names = shapes.make_shape_images(2, 5, image_size=16, seed=0)
    fixtures.write_image_folder(tmp_path, images, labels, class_names, image_format="mixed")
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
            # Quantised to a palette of at most 256 colours.
            assert difference.max() < 64
            assert tf.io.decode_image(tf.io.read_file(path)).shape == (1, 16, 16, 3)
        else:
            assert difference.mean() < 20


def test_write_image_folder_corrupt_files_are_returned_and_undecodable(tmp_path):
    images, labels, class_names = shapes.make_shape_images(3, 2, image_size=16, seed=0)
    corrupt_paths = fixtures.write_image_folder(
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
    images, labels, class_names = shapes.make_shape_images(2, 1, image_size=8, seed=0)
    message = "Expected one of ['jpeg', 'png', 'mixed']. Received: image_format='tiff'"
    with pytest.raises(ValueError, match=re.escape(message)):
        fixtures.write_image_folder(tmp_path, images, labels, class_names, image_format="tiff")
    message = "Expected uint8. Received: images.dtype=float32"
    with pytest.raises(TypeError, match=re.escape(message)):
        fixtures.write_image_folder(tmp_path, images.astype(np.float32), labels, class_names)
    message = "Expected values in [0, 2). Received: labels in [0, 2]"
    with pytest.raises(ValueError, match=re.escape(message)):
        fixtures.write_image_folder(tmp_path, images, np.array([0, 2]), class_names)
    with pytest.raises(ValueError, match="Invalid value in `class_names`"):
        fixtures.write_image_folder(tmp_path, images, labels, ["a/b", "c"])


def test_write_grayscale_and_rgba(tmp_path):
    paths = fixtures.write_grayscale_and_rgba(tmp_path, "odd_class", count=2, image_size=12)
    assert [os.path.basename(path) for path in paths] == [
        "grayscale_0.png",
        "grayscale_1.png",
        "rgba_0.png",
        "rgba_1.png",
    ]
    channels = [tf.io.decode_png(tf.io.read_file(path)).shape for path in paths]
    assert channels == [(12, 12, 1), (12, 12, 1), (12, 12, 4), (12, 12, 4)]


def test_save_non_feature_vector_module_returns_feature_maps(tmp_path):
    path = fixtures.save_non_feature_vector_module(str(tmp_path / "feature_map"))
    loaded = tf.saved_model.load(path)
    assert loaded(_uniform_images(2, 32), training=False).shape == (2, 2, 2, 16)
    assert loaded(_uniform_images(2, 40), training=True).shape == (2, 3, 3, 16)


def test_save_tf1_hub_module_stub(tmp_path):
    path = fixtures.save_tf1_hub_module_stub(str(tmp_path / "tf1"))
    assert sorted(os.listdir(path)) == ["saved_model.pb", "tfhub_module.pb", "variables"]
    with open(os.path.join(path, "tfhub_module.pb"), "rb") as file:
        assert file.read() == b"\x08\x03"

import os

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tfhub_ft import data


def test_list_image_folder_ignores_other_files(image_folders):
    train, _, corrupt, names = image_folders
    paths, labels, class_names = data.list_image_folder(train)
    assert class_names == sorted(names)
    assert not any(p.endswith(".txt") for p in paths)
    assert set(corrupt) <= set(paths)
    assert len(paths) == 48 + len(corrupt)
    assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 1, 2}


def test_corrupt_files_are_skipped_and_named(image_folders, caplog):
    train, _, corrupt, _ = image_folders
    with caplog.at_level("WARNING"):
        image_set = data.load_image_folder(train, 24)
    assert sorted(image_set.skipped) == sorted(corrupt)
    assert len(image_set) == 48
    assert image_set.images.shape == (48, 24, 24, 3)
    assert image_set.images.dtype == np.uint8
    assert np.bincount(image_set.labels).tolist() == [16, 16, 16]
    for path in corrupt:
        assert path in caplog.text


def test_grayscale_and_rgba_become_rgb(tmp_path):
    fixtures.write_grayscale_and_rgba(str(tmp_path / "a"), "a", count=2)
    fixtures.write_grayscale_and_rgba(str(tmp_path / "b"), "b", count=1)
    image_set = data.load_image_folder(str(tmp_path), 16)
    assert image_set.images.shape == (6, 16, 16, 3)


def test_empty_class_and_single_class_are_errors(tmp_path):
    (tmp_path / "one").mkdir()
    with pytest.raises(ValueError, match=r"has 1 class subfolder\(s\) \['one'\]; a classifier needs at least two"):
        data.list_image_folder(str(tmp_path))
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "readme.txt").write_text("x")
    fixtures.write_grayscale_and_rgba(str(tmp_path), "one", count=1)
    with pytest.raises(ValueError, match=r"class folder\(s\) \['two'\].*hold no image"):
        data.list_image_folder(str(tmp_path))
    with pytest.raises(ValueError, match="Invalid value for `image_dir`"):
        data.list_image_folder(str(tmp_path / "missing"))


def test_class_whose_every_image_is_corrupt(tmp_path):
    fixtures.write_grayscale_and_rgba(str(tmp_path), "good", count=1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"\['bad'\].*failed to decode"):
        data.load_image_folder(str(tmp_path), 8)


def test_stratified_split_is_seeded_and_balanced():
    labels = np.repeat([0, 1, 2], [10, 20, 3])
    train, validation = data.stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[validation]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([train, validation]).tolist()) == list(range(33))
    again = data.stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(validation, again[1])
    other = data.stratified_split(labels, 0.2, seed=4)
    assert not np.array_equal(validation, other[1])
    # A single example stays in training.
    assert data.stratified_split(np.array([0, 1, 1]), 0.5)[1].tolist() == [1]


def test_dataset_source_uint8_and_float():
    images = np.random.default_rng(0).integers(0, 255, (6, 10, 12, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    uint8_set = data.load_images(tf.data.Dataset.from_tensor_slices((images, labels)),
                                 8, class_names=["a", "b", "c"])
    float_set = data.load_images(
        tf.data.Dataset.from_tensor_slices((images / 255.0, labels)).batch(4), 8)
    assert uint8_set.class_names == ["a", "b", "c"]
    assert float_set.class_names == ["0", "1", "2"]
    assert uint8_set.images.shape == (6, 8, 8, 3)
    assert np.abs(uint8_set.images.astype(int) - float_set.images).max() <= 1
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 2\)"):
        data.load_images(tf.data.Dataset.from_tensor_slices((images, labels)), 8,
                         class_names=["a", "b"])
    with pytest.raises(TypeError, match="Expected a tf.data.Dataset of \\(image, label\\)"):
        data.load_images(tf.data.Dataset.from_tensor_slices(images), 8)
    with pytest.raises(TypeError, match="Expected an image folder path"):
        data.load_images(42, 8)


def test_tfds_offline_error(tmp_path):
    with pytest.raises(ValueError, match="Could not load the TFDS dataset 'no_such_dataset_xyz'"):
        data.load_images("no_such_dataset_xyz", 8, data_dir=str(tmp_path))


def test_match_classes_relabels_and_rejects_unknown():
    image_set = data.ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1], np.int32),
                              ["b", "c"])
    matched = data.match_classes(image_set, ["a", "b", "c"], "validation")
    assert matched.labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"validation data has class\(es\) \['c'\]"):
        data.match_classes(image_set, ["a", "b"], "validation")


def test_to_dataset_one_hot_batches():
    image_set = data.ImageSet(np.zeros((5, 4, 4, 3), np.uint8), np.array([0, 1, 2, 0, 1], np.int32),
                              ["a", "b", "c"])
    batches = list(image_set.to_dataset(2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(batches[0][1].numpy(), [[1, 0, 0], [0, 1, 0]])

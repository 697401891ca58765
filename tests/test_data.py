import logging
import os
import re
import socket

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tfhub_ft import FineTuneConfig, data, image_files


def test_list_image_folder_ignores_other_files(image_folders):
    train, _, corrupt, names = image_folders
    paths, labels, class_names = data.list_image_folder(train)
    assert class_names == sorted(names)
    assert not any(p.endswith(".txt") for p in paths)
    assert set(corrupt) <= set(paths)
    assert len(paths) == 48 + len(corrupt)
    assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 1, 2}


def test_many_skipped_files_are_counted_not_all_named(tmp_path, caplog):
    from tfhub_ft import image_files
    images = np.zeros([2, 8, 8, 3], np.uint8)
    fixtures.write_image_folder(str(tmp_path), images, np.array([0, 1]), ["a", "b"])
    for i in range(image_files.LISTED_FILES + 3):
        (tmp_path / "a" / f"broken{i:02d}.png").write_bytes(b"not an image")
    with caplog.at_level("DEBUG", logger="tfhub_ft"):
        data.load_image_folder(str(tmp_path), 8)
    warning, = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"Skipped {image_files.LISTED_FILES + 3} file(s) in ")
    assert "broken09.png" in warning and "broken10.png" not in warning
    assert warning.endswith("; and 3 more (DEBUG logging, `--verbosity=2` in the command, "
                            "lists them all)")
    everything, = [r.getMessage() for r in caplog.records if r.getMessage().startswith(
        f"All {image_files.LISTED_FILES + 3} files skipped: ")]
    assert "broken12.png" in everything


def test_unreadable_files_and_folders_are_skipped_and_named(tmp_path, monkeypatch, caplog):
    from tests.test_image_files import _refuse_reading
    images = np.zeros([4, 8, 8, 3], np.uint8)
    fixtures.write_image_folder(str(tmp_path), images, np.array([0, 0, 1, 1]), ["a", "b"])
    (tmp_path / "a" / "locked").mkdir()
    unreadable = sorted(os.listdir(tmp_path / "b"))[0]
    _refuse_reading(monkeypatch, "locked", unreadable)
    with caplog.at_level("WARNING", logger="tfhub_ft"):
        image_set = data.load_image_folder(str(tmp_path), 8)
    assert len(image_set) == 3 and image_set.labels.tolist() == [0, 0, 1]
    assert image_set.skip_reasons == {
        str(tmp_path / "b" / unreadable): "cannot be read (Permission denied)"}
    assert "a/locked (folder cannot be read (Permission denied))" in caplog.text
    assert f"{unreadable}: cannot be read (Permission denied)" in caplog.text


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_dataset_label_and_image_forms_a_keras_user_has():
    images = np.random.default_rng(0).integers(0, 255, (6, 10, 12, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    expected = data.load_images(tf.data.Dataset.from_tensor_slices((images, labels)), 8)

    def loaded(images, labels, batch=None, **kwargs):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return data.load_images(dataset.batch(batch) if batch else dataset, 8, **kwargs)

    # Labels [N, 1] (keras.datasets.cifar10) and one-hot rows, batched or not.
    one_hot = np.eye(3, dtype=np.float32)[labels]
    for image_set in (loaded(images, labels[:, None]), loaded(images, labels[:, None], 4),
                      loaded(images, one_hot), loaded(images, one_hot, 4)):
        np.testing.assert_array_equal(image_set.labels, labels)
        np.testing.assert_array_equal(image_set.images, expected.images)
        assert image_set.class_names == ["0", "1", "2"]
    # One-hot columns name the classes, even one no image has.
    assert loaded(images[:2], np.eye(4)[[0, 1]]).class_names == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match=r"one name per column of the one-hot labels \(3\)"):
        loaded(images, one_hot, class_names=["a", "b"])
    # Gray images (a channel of 1) become RGB, as decoded gray files do.
    gray = loaded(images[..., :1], labels)
    np.testing.assert_array_equal(gray.images, np.repeat(gray.images[..., :1], 3, -1))
    # Channels tf.data does not know, as `tf.io.decode_image` gives them.
    unknown = tf.data.Dataset.from_tensor_slices((images, labels)).map(
        lambda image, label: (tf.io.decode_image(tf.io.encode_png(image),
                                                 expand_animations=False), label))
    assert unknown.element_spec[0].shape.as_list() == [None, None, None]
    np.testing.assert_array_equal(data.load_images(unknown, 8).images, expected.images)
    with pytest.raises(TypeError, match=r"Expected labels that are class indices.*"
                                        r"Received: labels of dtype string.*StringLookup"):
        loaded(images, np.array(["a", "b", "c"] * 2))
    with pytest.raises(TypeError, match=r"Expected uint8 images in \[0, 255\] or float.*"
                                        r"Received: images of dtype int64"):
        loaded(images.astype(np.int64), labels)
    with pytest.raises(ValueError, match=r"Expected images \[H, W, C\].*Received: images "
                                         r"of shape \(10, 12\).*image\[\.\.\., None\]"):
        loaded(images[..., 0], labels)


def test_float_images_outside_the_unit_range_are_refused():
    images = np.random.default_rng(0).integers(0, 255, (6, 10, 12, 3)).astype(np.float32)
    images[:, 0, 0, :] = 255.0
    labels = np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"Expected float images in \[0, 1\].*Received: "
                                         r"element 0 has values from 0 to 255\. Divide "
                                         r"0-255 values by 255"):
        data.load_images(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), 8)
    normalised = np.zeros((6, 10, 12, 3), np.float32)
    normalised[3, 0] = -1.0
    with pytest.raises(ValueError, match=r"element 3 has values from -1 to 0\. Pass the "
                                         r"images before normalisation"):
        data.load_images(tf.data.Dataset.from_tensor_slices((normalised, labels)), 8)


def test_a_name_neither_folder_nor_tfds_dataset_is_told_so_briefly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as raised:
        data.load_images("no_such_dataset_xyz", 8, data_dir=str(tmp_path))
    assert str(raised.value) == (
        "Invalid value for the data. Expected an existing folder or the name of a TFDS "
        "dataset. Received: 'no_such_dataset_xyz', neither. Pass the path of a folder with "
        f"one subfolder of images per class (relative paths start from {tmp_path}), or a "
        "TFDS name such as 'tf_flowers' (`tfds.list_builders()` lists them).")
    with pytest.raises(ValueError, match=r"Received: 'tf_flower', neither\. Did you mean the "
                                         r"TFDS dataset 'tf_flowers'"):
        data.load_images("tf_flower", 8)
    # Names TFDS cannot parse as dataset names at all.
    for name in ("my-photos", "photos.zip"):
        with pytest.raises(ValueError, match=re.escape(f"Received: {name!r}, neither.")):
            data.load_images(name, 8)


def test_labels_that_are_not_one_class_are_refused():
    images = np.zeros((4, 6, 6, 3), np.uint8)
    fractions = tf.data.Dataset.from_tensor_slices((images, np.array([0.0, 1.0, 1.5, 2.0])))
    with pytest.raises(ValueError, match=re.escape(
            "Invalid value for `dataset`. Expected labels that are class indices 0, 1, ... "
            "Received: element 2 has a label with a fractional part, or NaN or infinite. Map "
            "the labels to whole class indices with `dataset.map`.")):
        data.load_images(fractions, 8)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="element 1 has a label with a fractional part, "
                                             "or NaN or infinite"):
            data.load_images(tf.data.Dataset.from_tensor_slices(
                (images[:2], np.array([0.0, bad]))), 8)
    rows = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    for bad in (np.full(3, 0.1), np.array([0.9, 0.05, 0.05]), np.array([1.0, 1.0, 0.0]),
                np.zeros(3)):
        rows[3] = bad
        with pytest.raises(ValueError, match=re.escape(
                "Expected one-hot label rows (one 1, the rest 0). Received: element 3 has "
                "a row that is not one-hot (soft, several 1s, or none).")):
            data.load_images(tf.data.Dataset.from_tensor_slices((images, rows)), 8)
    # Whole floats, one-hot rows (float or bool) and [1] columns are classes.
    for labels in (np.array([0.0, 1.0, 2.0, 0.0]), np.eye(3, dtype=bool)[[0, 1, 2, 0]],
                   np.array([[0], [1], [2], [0]], np.float32)):
        loaded = data.load_images(tf.data.Dataset.from_tensor_slices((images, labels)), 8)
        assert loaded.labels.tolist() == [0, 1, 2, 0]


def _unresolvable(monkeypatch):
    """Makes every host name fail to resolve, as offline; returns the names asked."""
    asked = []

    def getaddrinfo(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for variable in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    return asked


def test_tfds_offline_fails_at_once_without_its_retries(tmp_path, monkeypatch, caplog):
    import tensorflow_datasets as tfds
    asked = _unresolvable(monkeypatch)
    loads = []
    monkeypatch.setattr(tfds, "load", lambda *args, **kwargs: loads.append(args))
    folder = tmp_path / "tfds"
    with caplog.at_level("INFO"):
        with pytest.raises(ValueError) as raised:
            data.load_images("tf_flowers", 8, data_dir=str(folder))
    prepared_in = tfds.builder("tf_flowers", data_dir=str(folder)).data_dir
    assert str(raised.value) == (
        "Could not load the TFDS dataset 'tf_flowers' (split 'train'): it is not prepared "
        f"in {prepared_in}, and the host it downloads from, "
        "download.tensorflow.org, does not resolve (no network access). Offline, prepare "
        "it on a machine with network access and pass its folder as `data_dir` "
        "(`--data_dir` in the command), or use an image folder (`--image_dir`).")
    assert asked == ["download.tensorflow.org"] and loads == []
    # TFDS's own answer to `is_prepared` ("Variant folder ... has no
    # dataset_info.json") is not passed on.
    assert "Variant folder" not in caplog.text
    # Files in the data folder's downloads/ may prepare it offline: left to TFDS.
    (folder / "downloads").mkdir(parents=True)
    (folder / "downloads" / "flower_photos.tgz").write_bytes(b"x")
    builder = tfds.builder("tf_flowers", data_dir=str(folder))
    assert data._unresolvable_download_host(builder) is None


def test_tfds_download_is_judged_offline_only_when_no_host_resolves(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    asked = _unresolvable(monkeypatch)

    class Builder:
        """A builder whose checksums list a dead host and another one."""
        download_and_prepare = tfds.core.DatasetBuilder.download_and_prepare
        url_infos = {"https://gone.example/a.zip": None, "https://alive.example/b.zip": None}
        _data_dir_root = str(tmp_path)

    assert data._unresolvable_download_host(Builder()) == "gone.example"
    assert asked == ["gone.example", "alive.example"]

    def getaddrinfo(host, *args, **kwargs):
        if host != "alive.example":
            raise socket.gaierror(-2, "Name or service not known")
        return []

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert data._unresolvable_download_host(Builder()) is None


def test_tfds_download_through_a_proxy_is_left_to_tfds(monkeypatch):
    import tensorflow_datasets as tfds
    asked = _unresolvable(monkeypatch)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")

    def load(*args, **kwargs):
        raise ConnectionError("proxy refused")

    monkeypatch.setattr(tfds, "load", load)
    with pytest.raises(ValueError, match=r"'tf_flowers' \(split 'train'\): proxy refused\. "):
        data.load_images("tf_flowers", 8)
    assert asked == []


def test_tfds_download_is_announced_and_its_prints_go_to_stderr(monkeypatch, capsys, caplog):
    import tensorflow_datasets as tfds

    class Unprepared:
        data_dir = "/nowhere/tf_flowers/3.0.1"

        def is_prepared(self):
            return False

    def offline_load(*args, **kwargs):
        print("Downloading and preparing dataset 218.21 MiB")
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: Unprepared())
    monkeypatch.setattr(tfds, "load", offline_load)
    with caplog.at_level("INFO", logger="tfhub_ft.data"):
        with pytest.raises(ValueError, match=r"pass its folder as `data_dir` \(`--data_dir` "):
            data.load_images("tf_flowers", 8)
    assert "not prepared in /nowhere/tf_flowers/3.0.1: downloading" in caplog.text
    assert "about 3 minutes" in caplog.text
    out, err = capsys.readouterr()
    assert out == "" and "Downloading and preparing" in err


# Issue 10: tf.data and TFDS sources stream into the budget's arrays.
def _stream_source(count=600, seed=0):
    """(dataset of uint8 [10, 12, 3] images and labels in [0, 3), its images
    decoded with no budget): more than two write batches of 256."""
    images = np.random.default_rng(seed).integers(0, 256, (count, 10, 12, 3), dtype=np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(count) % 3))
    return dataset, data.load_images(dataset, 8)


def test_tf_data_larger_than_the_budget_streams_to_a_spill_file(tmp_path):
    from tfhub_ft import arrays
    dataset, in_memory = _stream_source()
    assert isinstance(in_memory.images, np.ndarray)
    budget = arrays.ArrayBudget(4096, directory=str(tmp_path))
    streamed = data.load_images(dataset, 8, class_names=["a", "b", "c"], budget=budget)
    assert isinstance(streamed.images, arrays.FileArray)
    assert streamed.images.shape == (600, 8, 8, 3)
    np.testing.assert_array_equal(arrays.take(streamed.images, np.arange(600)), in_memory.images)
    np.testing.assert_array_equal(streamed.labels, in_memory.labels)
    assert streamed.class_names == ["a", "b", "c"]
    assert budget.spilled_bytes == 600 * 8 * 8 * 3 and budget.used_bytes <= 4096
    assert os.listdir(tmp_path) == ["001-images.bin"]
    # A small source after it still fits the memory left.
    small = data.load_images(dataset.take(10), 8, budget=budget)
    assert isinstance(small.images, np.ndarray) and budget.used_bytes == 10 * 8 * 8 * 3


def test_tf_data_of_unknown_length_streams_too(tmp_path):
    from tfhub_ft import arrays
    dataset, in_memory = _stream_source()
    kept = in_memory.labels != 1
    filtered = dataset.filter(lambda image, label: label != 1)
    assert int(filtered.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    # Past the budget the staging file is the spill file.
    small = arrays.ArrayBudget(4096, directory=str(tmp_path / "small"))
    spilled = data.load_images(filtered, 8, budget=small)
    assert isinstance(spilled.images, arrays.FileArray)
    np.testing.assert_array_equal(arrays.take(spilled.images, np.arange(kept.sum())),
                                  in_memory.images[kept])
    np.testing.assert_array_equal(spilled.labels, in_memory.labels[kept])
    assert small.spilled_bytes == kept.sum() * 8 * 8 * 3 and small.used_bytes == 0
    # Within the budget it is read back into memory and its file deleted;
    # a batched dataset with a ragged last batch has no known length either.
    large = arrays.ArrayBudget(10**6, directory=str(tmp_path / "large"))
    for source in (filtered, dataset.batch(7)):
        before = large.used_bytes
        result = data.load_images(source, 8, budget=large)
        assert isinstance(result.images, np.ndarray)
        expected = in_memory.images[kept] if source is filtered else in_memory.images
        np.testing.assert_array_equal(result.images, expected)
        assert large.used_bytes - before == expected.nbytes
    assert large.spilled_bytes == 0 and os.listdir(tmp_path / "large") == []


def test_infinite_and_empty_datasets_are_errors():
    dataset, _ = _stream_source(4)
    for infinite in (dataset.repeat(), dataset.batch(2).repeat()):
        with pytest.raises(ValueError, match=r"Invalid value for `dataset`. Expected a finite "
                                             r"tf.data.Dataset.*Received: a dataset of infinite "
                                             r"length.*dataset.take\(n\)"):
            data.load_images(infinite, 8)
    with pytest.raises(ValueError, match="Received: an empty dataset"):
        data.load_images(dataset.filter(lambda image, label: label > 5), 8)
    with pytest.raises(ValueError, match=r"element 2 of the dataset has label 2"):
        data.load_images(dataset, 8, class_names=["a", "b"])


@pytest.mark.slow
def test_spill_files_of_every_source_are_removed_at_exit(image_folders, tmp_path):
    import subprocess
    import sys
    train, _, _, _ = image_folders
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = f"""
import os, tempfile
import numpy as np, tensorflow as tf
from tfhub_ft import arrays, data
images = np.zeros((300, 4, 4, 3), np.uint8)
dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(300) % 2))
budget = arrays.ArrayBudget(0)
for source in (dataset, dataset.filter(lambda i, l: True), {train!r}):
    assert isinstance(data.load_images(source, 8, budget=budget).images, arrays.FileArray)
spill, = [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("tfhub_ft_cache-")]
print(sorted(os.listdir(os.path.join(tempfile.gettempdir(), spill))))
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TMPDIR=str(temporary), PYTHONPATH=root),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(
        ["001-images.bin", "002-images.bin", "003-images.bin"])
    assert not [name for name in os.listdir(temporary) if name.startswith("tfhub_ft_cache-")]


_FLOWERS = ["dandelion", "daisy", "tulips", "sunflowers", "roses"]


def _record_tfds_loads(monkeypatch):
    """Wraps tfds.load to record its keyword arguments."""
    import tensorflow_datasets as tfds
    calls, real = [], tfds.load

    def load(name, **kwargs):
        calls.append((name, kwargs))
        return real(name, **kwargs)

    monkeypatch.setattr(tfds, "load", load)
    return calls


def test_tfds_source_streams_with_its_label_names(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from tfhub_ft import arrays
    calls = _record_tfds_loads(monkeypatch)
    budget = arrays.ArrayBudget(1024, directory=str(tmp_path / "spill"))
    with tfds.testing.mock_data(num_examples=12):
        for split in ("train[:80%]", "train"):
            image_set = data.load_images("tf_flowers", 16, split=split,
                                         data_dir=str(tmp_path / "tfds"), budget=budget)
            assert image_set.class_names == _FLOWERS
            assert image_set.images.shape == (len(image_set), 16, 16, 3)
            assert image_set.images.dtype == np.uint8 and len(image_set) > 0
            assert image_set.labels.dtype == np.int32
            assert 0 <= image_set.labels.min() and image_set.labels.max() < 5
            assert isinstance(image_set.images, arrays.FileArray)
    assert [(name, kwargs["split"], kwargs["data_dir"]) for name, kwargs in calls] == [
        ("tf_flowers", "train[:80%]", str(tmp_path / "tfds")),
        ("tf_flowers", "train", str(tmp_path / "tfds"))]
    assert budget.spilled_bytes > 0 and budget.used_bytes <= 1024


def test_a_missing_package_is_named_not_called_offline(monkeypatch):
    import tensorflow_datasets as tfds

    def load(name, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'",
                                  name="importlib_resources")

    monkeypatch.setattr(tfds, "load", load)
    # Online: the download host resolves, and tfds.load is what fails.
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: [])
    with pytest.raises(ImportError, match=r"Could not load the TFDS dataset 'tf_flowers' "
                                          r"\(split 'train'\): a Python module that loading "
                                          r"TFDS datasets needs is not installed \(No module "
                                          r"named 'importlib_resources'\). Install it: "
                                          r"`pip install importlib_resources`.") as caught:
        data.load_images("tf_flowers", 8)
    assert "Offline" not in str(caught.value)


def test_match_classes_relabels_and_rejects_unknown():
    image_set = data.ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1], np.int32),
                              ["b", "c"])
    matched = data.match_classes(image_set, ["a", "b", "c"], "validation")
    assert matched.labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"validation data has class\(es\) \['c'\]"):
        data.match_classes(image_set, ["a", "b"], "validation")
    with pytest.raises(ValueError, match=r"\['C'\] that the training data does not have "
                       r"\(\['b', 'c'\]\): 'C' is 'c' but for case\. Use the same"):
        data.match_classes(data.ImageSet(image_set.images, image_set.labels, ["b", "C"]),
                           ["b", "c"], "validation")


def test_class_folders_are_compared_before_anything_is_decoded(tiny_backbone_path, tmp_path,
                                                               monkeypatch):
    for folder in ("train/hat", "train/dress", "validation/Hat", "validation/dress"):
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(ValueError, match="'Hat' is 'hat' but for case"):
        data.check_class_folders(tmp_path / "train", tmp_path / "validation")
    # FineTuner.load_data checks them first: nothing is decoded.
    from tfhub_ft import FineTuner
    tuner = FineTuner(tiny_backbone_path, image_size=32)
    monkeypatch.setattr(data, "load_images", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(ValueError, match="'Hat' is 'hat' but for case"):
        tuner.load_data(str(tmp_path / "train"), str(tmp_path / "validation"))


def test_to_dataset_one_hot_batches():
    image_set = data.ImageSet(np.zeros((5, 4, 4, 3), np.uint8), np.array([0, 1, 2, 0, 1], np.int32),
                              ["a", "b", "c"])
    batches = list(image_set.to_dataset(2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(batches[0][1].numpy(), [[1, 0, 0], [0, 1, 0]])


def _jpeg(seed=0, size=16):
    from tests import photos
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return photos.encode(image, "JPEG", quality=90)


# Issue 9, kind 3: WebP/JFIF are listed, links and nested folders followed
# (with loop detection), and what is left out is logged with why.
@pytest.mark.slow
def test_scan_lists_webp_jfif_links_nested_and_logs_what_it_leaves_out(tmp_path, caplog):
    from tests import photos
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    root = tmp_path / "photos"  # `elsewhere`, outside it, is reached by a link
    (root / "a" / "nested" / "deeper").mkdir(parents=True)
    (root / "a" / "x.webp").write_bytes(photos.encode(image, "WEBP", quality=90))
    (root / "a" / "y.JFIF").write_bytes(_jpeg(1))
    (root / "a" / "nested" / "deeper" / "z.jpe").write_bytes(_jpeg(2))
    (root / "a" / "scan.tif").write_bytes(b"II*\x00")
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".hidden.jpg").write_bytes(_jpeg(3))
    (root / "a" / "nested" / "loop").symlink_to(root / "a")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.png").write_bytes(photos.encode(image, "PNG"))
    (root / "b").mkdir()
    (root / "b" / "linked").symlink_to(tmp_path / "elsewhere")
    (root / "b" / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    with caplog.at_level("INFO", logger="tfhub_ft.data"):
        paths, labels, names = data.list_image_folder(str(root / "."))
        image_set = data.load_images(str(root), 8)
    assert names == ["a", "b"]
    assert sorted(os.path.basename(p) for p in paths) == ["w.png", "x.webp", "y.JFIF", "z.jpe"]
    assert len(image_set) == 4
    assert "a: 3, b: 1)" in caplog.text
    assert "nested folder(s) searched" in caplog.text
    for expected in ["scan.tif (an image format TensorFlow cannot decode",
                     "notes.txt (not an image file name", ".hidden.jpg (hidden)",
                     "loop (folder already listed", "dangling.jpg (broken link)"]:
        assert expected in caplog.text
    assert any(r.levelname == "WARNING" and "Left out" in r.message for r in caplog.records)


def test_a_file_in_two_classes_through_a_link_is_refused(tmp_path):
    root = tmp_path / "photos"
    fixtures.write_image_folder(str(root), np.zeros((4, 8, 8, 3), np.uint8),
                                np.array([0, 0, 1, 1]), ["hat", "pants"])
    os.symlink(root / "pants", root / "hat" / "pants_link")
    with pytest.raises(ValueError, match=r"2 file\(s\) in .* are in two classes, reached "
                                         r"through a link: .*hat/pants_link/00002.jpg \(hat\) and "
                                         r".*pants/00002.jpg \(pants\) are one file.*"
                                         r"remove the link"):
        data.list_image_folder(str(root))
    # A link inside one class to files of the same class is only a path.
    os.remove(root / "hat" / "pants_link")
    os.symlink(root / "hat", root / "hat_again")
    os.rename(root / "hat_again", root / "pants" / "hat_link")
    with pytest.raises(ValueError, match="are in two classes"):
        data.list_image_folder(str(root))


def test_class_names_with_control_characters_are_refused(tmp_path, caplog):
    root = tmp_path / "photos"
    fixtures.write_image_folder(str(root), np.zeros((4, 8, 8, 3), np.uint8),
                                np.array([0, 0, 1, 1]), ["new\nline", "tab"])
    with pytest.raises(ValueError, match=r"Invalid class name\(s\) \['new\\nline'\] in the "
                                         r"class folders of .*labels.txt holds one name per "
                                         r"line\)\. Rename them"):
        data.list_image_folder(str(root))
    os.rename(root / "new\nline", root / "plain")
    (root / ".DS_Store").write_bytes(b"")
    (root / ".ipynb_checkpoints").mkdir()
    with caplog.at_level(logging.INFO, logger="tfhub_ft.data"):
        data.list_image_folder(str(root))
    assert ".DS_Store" in caplog.text and ".ipynb_checkpoints" in caplog.text
    images = tf.data.Dataset.from_tensor_slices((np.zeros((2, 8, 8, 3), np.uint8), [0, 1]))
    with pytest.raises(ValueError, match=r"in `class_names`"):
        data.load_images(images, 8, class_names=["a\tb", "c"])


# Issue 9, kind 4: every bad file is named with its reason, before training.
@pytest.mark.slow
def test_bad_files_are_reported_with_reasons(tmp_path, caplog):
    from tests import photos
    good = _jpeg(0, 32)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "good.jpg").write_bytes(good)
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "cut.jpg").write_bytes(good[:int(len(good) * 0.6)])
    (tmp_path / "a" / "junk_after_end.jpg").write_bytes(good + b"trailing junk")
    (tmp_path / "b" / "page.png").write_bytes(b"<html>not an image</html>")
    (tmp_path / "b" / "cut.png").write_bytes(photos.encode(photos.asymmetric_image(), "PNG")[:-20])
    (tmp_path / "b" / "big.jpg").write_bytes(photos.jpeg_with_size(12000, 12000))
    config = FineTuneConfig(max_image_pixels=10**8)
    with caplog.at_level("INFO"):
        image_set = data.load_images(str(tmp_path), 8, config=config)
    reasons = {os.path.basename(p): r for p, r in image_set.skip_reasons.items()}
    assert reasons == {
        "x.jpg": "empty (0 bytes)",
        "cut.jpg": f"truncated JPEG (no end marker; {int(len(good) * 0.6):,} bytes, cut short)",
        "page.png": "unknown format (not JPEG, PNG, GIF, BMP or WebP; first bytes "
                    "3c 68 74 6d 6c 3e 6e 6f)",
        "cut.png": "truncated PNG (no IEND chunk at the end)",
        "big.jpg": "too large: 12000 x 12000 pixels = 144,000,000, above "
                   "max_image_pixels=100,000,000",
    }
    assert len(image_set) == 3  # two good.jpg and the one with junk after its end
    for path, reason in image_set.skip_reasons.items():
        assert f"{path}: {reason}" in caplog.text
    assert "13 bytes after the JPEG end marker (ignored)" in caplog.text
    # A JPEG libjpeg decodes with a warning is used, and named.
    from tests.fixtures import corrupt_jpeg
    (tmp_path / "b" / "smeared.jpg").write_bytes(corrupt_jpeg())
    caplog.clear()
    with caplog.at_level("INFO"):
        assert len(data.load_images(str(tmp_path), 8, config=config)) == 4
    assert re.search(r"WARNING.*1 JPEG file\(s\) with corrupt data, decoded anyway \(libjpeg "
                     r"fills what it cannot read.*\): \S*b/smeared.jpg \(Corrupt JPEG data: ",
                     caplog.text), caplog.text
    with pytest.raises(ValueError, match=r"(?s)5 file\(s\) in .* cannot be used as images "
                                         r"\(on_bad_image='error'\):.*x.jpg: empty.*page.png.*"
                                         r"on_bad_image='skip'"):
        data.load_images(str(tmp_path), 8, config=config.replace(on_bad_image="error"))


def test_decoder_errors_are_reasons_too(tmp_path):
    good = _jpeg(0, 32)
    # A GIF header with nothing behind it: the header check passes, the
    # decoder fails, and its message is the reason.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "ok.jpg").write_bytes(good)
    (tmp_path / "b" / "ok.jpg").write_bytes(good)
    (tmp_path / "b" / "odd.gif").write_bytes(b"GIF89a" + b"\x01" * 20)
    image_set = data.load_images(str(tmp_path), 8)
    assert [os.path.basename(p) for p in image_set.skipped] == ["odd.gif"]
    assert image_set.skip_reasons[image_set.skipped[0]].startswith(
        "TensorFlow could not decode it: ")


# Issue 9, kind 6: names that are not UTF-8 are read and shown escaped.
def test_names_that_are_not_utf8(tmp_path, caplog):
    root = os.fsencode(str(tmp_path))
    for name in (b"caf\xe9", b"plain"):
        os.mkdir(os.path.join(root, name))
        with open(os.path.join(root, name, b"caf\xe9.jpg"), "wb") as f:
            f.write(_jpeg(len(name)))
    with open(os.path.join(root, b"plain", b"\xff\xfebad.jpg"), "wb") as f:
        f.write(b"")
    with caplog.at_level("WARNING"):
        image_set = data.load_images(str(tmp_path), 8)
    assert len(image_set) == 2
    assert image_set.class_names == ["caf\\xe9", "plain"]
    assert os.fsencode(image_set.paths[0]).endswith(b"caf\xe9.jpg")
    assert "\\xff\\xfebad.jpg: empty (0 bytes)" in caplog.text


# Issue 9, kind 7: a held-out split that would be empty or miss a class.
def test_validation_split_checks(caplog):
    with pytest.raises(ValueError, match=r"need at least 2 images per class for a "
                                         r"validation split, or pass validation data"):
        data.check_validation_split(np.array([0, 1]), ["a", "b"], 0.2)
    with caplog.at_level("WARNING"):
        data.check_validation_split(np.array([0] + [1] * 20), ["a", "b"], 0.2)
    assert "No validation image for class(es) 'a' (1 image(s))" in caplog.text
    assert "Give each class at least 2 images" in caplog.text
    caplog.clear()
    # Validation data that was passed needs images of its own, not a bigger split.
    with caplog.at_level("WARNING"):
        data.warn_missing_validation_classes(np.array([1, 1]), ["a", "b"])
    assert caplog.messages == [
        "No validation image for class(es) 'a': the validation accuracy covers the other "
        "classes only. Add validation images of those classes."]


def test_numpy_class_names_become_plain_strings():
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((2, 4, 4, 3), np.uint8), [0, 1]))
    for names in (np.array(["cat", "dog"]), [b"cat", b"dog"]):
        loaded = data.load_images(dataset, 8, class_names=names)
        assert loaded.class_names == ["cat", "dog"]
        assert all(type(name) is str for name in loaded.class_names)


# Issue 9, kind 10: imbalance is logged.
def test_class_balance_warning(caplog):
    with caplog.at_level("WARNING"):
        counts = data.check_class_balance(np.repeat([0, 1, 2], [10, 4, 2]), ["t", "s", "k"])
    assert counts.tolist() == [10, 4, 2]
    assert "Imbalanced classes: 't' has 10 training images, 5.0x the 2 of 'k'" in caplog.text
    assert "class_weight='balanced'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        data.check_class_balance(np.repeat([0, 1], [9, 2]), ["t", "s"])
    assert not caplog.text


@pytest.mark.slow
def test_command_reads_names_that_are_not_utf8(tiny_backbone_path, tmp_path):
    import subprocess
    import sys

    from tests.test_checkpoints import FLOWERS, environment
    root = os.fsencode(str(tmp_path / "photos"))
    for c, name in enumerate((b"caf\xe9", b"th\xe9")):
        os.makedirs(os.path.join(root, name))
        for i in range(3):
            with open(os.path.join(root, name, b"\xe9t\xe9%d.jpg" % i), "wb") as f:
                f.write(_jpeg(10 * c + i))
    result = subprocess.run(
        [sys.executable, FLOWERS, f"--hub_url={tiny_backbone_path}",
         f"--image_dir={tmp_path / 'photos'}", "--image_size=32", "--batch_size=4",
         "--head_epochs=1", "--fine_tune_epochs=0", f"--export_dir={tmp_path / 'export'}"],
        env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation_accuracy=" in result.stdout and "images=2" in result.stdout

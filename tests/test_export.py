import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuner, export, read_labels


@pytest.fixture(scope="module")
def trained(tiny_backbone_path, image_folders):
    from tfhub_ft import FineTuneConfig
    train, validation, _, names = image_folders
    tuner = FineTuner(tiny_backbone_path, config=FineTuneConfig(
        image_size=32, batch_size=8, head_epochs=1, fine_tune_epochs=1))
    tuner.fit(train, validation, verbose=0)
    return tuner


def encoded_images(count, size, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return images, [tf.io.encode_png(image).numpy() for image in images]


def test_round_trip_with_plain_tensorflow(trained, tmp_path):
    path = trained.export(str(tmp_path / "model"))
    assert read_labels(path) == trained.class_names
    loaded = tf.saved_model.load(path)
    images, encoded = encoded_images(5, 32)
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    expected = trained.predict(images)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs["class_ids"].numpy(), expected.argmax(-1))
    assert [c.decode() for c in outputs["classes"].numpy()] == [
        trained.class_names[i] for i in expected.argmax(-1)]
    floats = loaded.signatures["serving_images"](images=tf.constant(images / 255.0, tf.float32))
    np.testing.assert_allclose(floats["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_serving_resizes_any_size_and_format(trained, tmp_path):
    path = trained.export(str(tmp_path / "model"))
    loaded = tf.saved_model.load(path)
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    encoded = [tf.io.encode_jpeg(image).numpy(), tf.io.encode_png(image).numpy()]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    assert outputs["probabilities"].shape == (2, len(trained.class_names))
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0, rtol=1e-5)


def test_failed_export_keeps_the_earlier_one(trained, tmp_path, monkeypatch):
    path = trained.export(str(tmp_path / "model"))
    before = sorted(os.listdir(path))

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        trained.export(path)
    assert sorted(os.listdir(path)) == before
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging left behind
    tf.saved_model.load(path)


def test_export_replaces_an_earlier_export(trained, tmp_path):
    path = str(tmp_path / "model")
    os.makedirs(path)
    open(os.path.join(path, "stale.txt"), "w").close()
    trained.export(path)
    assert "stale.txt" not in os.listdir(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_unwritable_export_path_is_explained(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="which is a file"):
        trained.export(str(blocker))
    with pytest.raises(ValueError, match=r"Cannot write the export to .*Choose a folder you can write to"):
        trained.export(str(blocker / "model"))


def test_export_before_fit_is_an_error(tiny_backbone_path, tmp_path):
    with pytest.raises(ValueError, match="call `fit` first"):
        FineTuner(tiny_backbone_path).export(str(tmp_path / "m"))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_export_logs_no_tensorflow_info_lines(trained, tmp_path):
    # tf.saved_model.save logs, through absl's logger, one INFO line per
    # signature naming every captured variable it renames (~20 kB with a
    # real backbone); the export holds it back, warnings still pass.
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    try:
        trained.export(str(tmp_path / "model"))
    finally:
        for each, level in zip(loggers, levels):
            each.removeHandler(handler)
            each.setLevel(level)
    assert [record.getMessage()[:80] for record in handler.records] == []
    assert all(each.level == level for each, level in zip(loggers, levels))

import logging
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import evaluation, predict

CLASSES = ["cat", "dog", "owl"]
# What the fake model answers for each file's bytes.
ANSWERS = {
    b"cat-right": [0.7, 0.2, 0.1],
    b"cat-wrong": [0.1, 0.8, 0.1],
    b"dog-right": [0.25, 0.5, 0.25],
}


class FakeClassifier:
    """Probabilities looked up by the file's bytes; b"bad" fails to decode."""

    image_size = 8

    def __init__(self):
        self.batches = []

    def predict_batch(self, encoded):
        self.batches.append(len(encoded))
        if b"bad" in encoded:
            raise tf.errors.InvalidArgumentError(
                None, None, "assertion failed: [image_bytes[0] is not an image]")
        return np.asarray([ANSWERS[data] for data in encoded], np.float32)


@pytest.fixture
def fake_export(monkeypatch, tmp_path):
    """(image folder, fake classifier): 2 cats, 1 dog, a bad file, an empty one."""
    fake = FakeClassifier()
    monkeypatch.setattr(predict, "load_classifier", lambda model: (fake, CLASSES))
    files = {"cat/1.jpg": b"cat-right", "cat/2.jpg": b"cat-wrong", "cat/3.jpg": b"bad",
             "dog/1.jpg": b"dog-right", "dog/2.jpg": b""}
    for name, data in files.items():
        os.makedirs(tmp_path / "images" / os.path.dirname(name), exist_ok=True)
        (tmp_path / "images" / name).write_bytes(data)
    return str(tmp_path / "images"), fake


def test_metrics_are_those_of_the_scored_files(fake_export, caplog):
    folder, fake = fake_export
    with caplog.at_level(logging.WARNING, logger="tfhub_ft.evaluation"):
        result = evaluation.evaluate_export("export", folder, batch_size=4)
    assert result["count"] == 3
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx(-(math.log(0.7) + math.log(0.1) + math.log(0.5)) / 3)
    assert result["labels"].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(result["probabilities"], np.float32(
        [ANSWERS[b"cat-right"], ANSWERS[b"cat-wrong"], ANSWERS[b"dog-right"]]))
    assert result["confusion_matrix"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert [os.path.relpath(path, folder) for path in result["paths"]] == [
        "cat/1.jpg", "cat/2.jpg", "dog/1.jpg"]
    assert [os.path.relpath(path, folder) for path in result["skipped"]] == [
        "cat/3.jpg", "dog/2.jpg"]
    # The batch of four failed on the bad file and was scored file by file;
    # the empty file never reached the model.
    assert fake.batches == [4, 1, 1, 1, 1]
    assert "Skipped 2 file(s) that could not be read or decoded as images" in caplog.text
    assert "3.jpg (the file is not an image)" in caplog.text
    assert "2.jpg (empty (0 bytes))" in caplog.text
    rows = {row["class"]: row for row in result["per_class"]}
    assert rows["cat"]["precision"] == 1.0 and rows["cat"]["recall"] == 0.5
    assert rows["owl"]["support"] == 0


def test_a_folder_of_one_class_is_scored(fake_export, tmp_path):
    os.makedirs(tmp_path / "dogs" / "dog")
    (tmp_path / "dogs" / "dog" / "1.jpg").write_bytes(b"dog-right")
    result = evaluation.evaluate_export("export", str(tmp_path / "dogs"))
    assert (result["count"], result["accuracy"]) == (1, 1.0)
    assert result["labels"].tolist() == [1]
    assert result["confusion_matrix"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_folder_errors_are_explained(fake_export, tmp_path):
    folder, _ = fake_export
    os.makedirs(tmp_path / "images" / "fox")
    (tmp_path / "images" / "fox" / "1.jpg").write_bytes(b"cat-right")
    with pytest.raises(ValueError, match=r"has class\(es\) \['fox'\] that the model does not "
                                         r"know \(\['cat', 'dog', 'owl'\]\)"):
        evaluation.evaluate_export("export", folder)
    os.makedirs(tmp_path / "broken" / "cat")
    (tmp_path / "broken" / "cat" / "1.jpg").write_bytes(b"bad")
    with pytest.raises(ValueError, match="No image in .* could be decoded"):
        evaluation.evaluate_export("export", str(tmp_path / "broken"))
    os.makedirs(tmp_path / "none")
    with pytest.raises(ValueError, match=r"has 0 class subfolder\(s\) \[\]; one is needed"):
        evaluation.evaluate_export("export", str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"Invalid value for `batch_size`"):
        evaluation.evaluate_export("export", folder, batch_size=0)


def test_a_saved_model_and_its_tflite_file_score_alike(export_dir, image_folders):
    _, validation, _, _ = image_folders
    saved = evaluation.evaluate_export(export_dir, validation, batch_size=5)
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    for path, label, probabilities in zip(saved["paths"], saved["labels"],
                                          saved["probabilities"]):
        assert saved["class_names"][label] == os.path.basename(os.path.dirname(path))
        with open(path, "rb") as f:
            expected = serve(image_bytes=tf.constant([f.read()]))["probabilities"].numpy()[0]
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    lite = evaluation.evaluate_export(os.path.join(export_dir, "model.tflite"), validation)
    assert lite["count"] == saved["count"] == 12
    assert lite["accuracy"] == saved["accuracy"]
    np.testing.assert_allclose(lite["probabilities"], saved["probabilities"], atol=1e-5)


def test_a_model_that_is_not_a_classifier_export_is_refused(export_dir, tmp_path,
                                                            image_folders):
    _, validation, _, _ = image_folders
    with pytest.raises(ValueError, match="Expected an export folder written by "
                                         "`FineTuner.export`"):
        evaluation.evaluate_export(str(tmp_path), validation)
    # A backbone export: a SavedModel without labels.txt.
    backbone = tmp_path / "backbone"
    tf.saved_model.save(tf.Module(), str(backbone))
    with pytest.raises(ValueError, match="No labels.txt in .* `export_backbone` writes a "
                                         "feature extractor"):
        evaluation.evaluate_export(str(backbone), validation)
    with open(backbone / "labels.txt", "w") as f:
        f.write("a\nb\nc\n")
    with pytest.raises(ValueError, match="Expected a SavedModel with a `serving_default` "
                                         "signature"):
        evaluation.evaluate_export(str(backbone), validation)


def test_evaluation_plots_name_the_scored_folder():
    assert evaluation._scored_images("/photos/test/") == "images in 'test'"
    assert evaluation._scored_images(os.fsdecode(b"/photos/t\xe9st")) == "images in 't\\xe9st'"
    assert evaluation._scored_images("/") == "images scored"
    assert evaluation._scored_images(None) == "images scored"

import csv
import glob
import json
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from tfhub_ft import FineTuner, report

NAMES = ["cat", "dog", "fox"]
# A fixed tiny case, worked out by hand (rows of the confusion matrix are the
# true classes):            cat  dog  fox
LABELS = np.array([0, 0, 0, 1, 1, 2])          # cat: 3, dog: 2, fox: 1
PREDICTIONS = np.array([0, 0, 1, 1, 2, 2])     # cat 2/3 right, dog 1/2, fox 1/1
# cat: precision 2/2, recall 2/3, F1 0.8; dog: 1/2, 1/2, 0.5; fox: 1/2, 1/1, 2/3.
EXPECTED = {
    "cat": (1.0, 2 / 3, 0.8, 3),
    "dog": (0.5, 0.5, 0.5, 2),
    "fox": (0.5, 1.0, 2 / 3, 1),
    "macro avg": ((1 + 0.5 + 0.5) / 3, (2 / 3 + 0.5 + 1) / 3, (0.8 + 0.5 + 2 / 3) / 3, 6),
    "weighted avg": ((3 * 1 + 2 * 0.5 + 0.5) / 6, (2 + 1 + 1) / 6,
                     (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6, 6),
}


def _probabilities(predictions, confidence):
    probabilities = np.full((len(predictions), len(NAMES)), (1 - confidence) / 2, np.float32)
    probabilities[np.arange(len(predictions)), predictions] = confidence
    return probabilities


def test_per_class_numbers_equal_the_hand_counts(tmp_path):
    rows = report.per_class_metrics(LABELS, PREDICTIONS, NAMES)
    path = report.write_per_class_csv(rows, tmp_path / "per_class.csv")
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [row["class"] for row in read] == list(EXPECTED)
    for row in read:
        precision, recall, f1, support = EXPECTED[row["class"]]
        np.testing.assert_allclose(
            [float(row["precision"]), float(row["recall"]), float(row["f1"])],
            [precision, recall, f1], atol=1e-6)
        assert int(row["support"]) == support


def test_averages_leave_out_classes_the_data_does_not_hold(tmp_path):
    # Only cat and dog images, never a fox predicted: evaluating a folder with
    # some of the model's classes must not average zeros for the others.
    rows = report.per_class_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), NAMES)
    fox, macro = rows[2], rows[3]
    # No fox image: its recall and F1 are undefined, written empty.
    assert (fox["class"], fox["precision"], fox["recall"], fox["f1"], fox["support"]) == (
        "fox", 0.0, None, None, 0)
    path = report.write_per_class_csv(rows, tmp_path / "per_class.csv")
    with open(path, newline="") as f:
        assert list(csv.reader(f))[3] == ["fox", "0.000000", "", "", "0"]
    assert macro["class"] == "macro avg"
    np.testing.assert_allclose([macro["precision"], macro["recall"]],
                               [(1 + 2 / 3) / 2, (0.5 + 1) / 2])
    # A class predicted but absent is a real error, and counts.
    rows = report.per_class_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), NAMES)
    np.testing.assert_allclose(rows[3]["precision"], (1 + 1 + 0) / 3)


def test_confusion_matrix_counts():
    matrix = report.confusion_matrix(LABELS, PREDICTIONS, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_most_confident_mistakes_come_first():
    probabilities = _probabilities(PREDICTIONS, 0.6)
    probabilities[4] = [0.05, 0.05, 0.9]  # dog taken for a fox, sure of it
    np.testing.assert_array_equal(report.most_confident_mistakes(LABELS, probabilities), [4, 2])
    np.testing.assert_array_equal(report.most_confident_mistakes(LABELS, probabilities, 1), [4])


def test_mistakes_csv_lists_every_mistake_with_its_file(tmp_path):
    probabilities = _probabilities(PREDICTIONS, 0.6)
    probabilities[4] = [0.05, 0.05, 0.9]
    paths = [f"photos/{name}.jpg" for name in "abcdef"]
    path = report.write_mistakes_csv(LABELS, probabilities, NAMES, tmp_path / "m.csv", paths)
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [
            ["rank", "file", "true", "predicted", "probability", "true_probability"],
            ["1", "photos/e.jpg", "dog", "fox", "0.900000", "0.050000"],
            ["2", "photos/c.jpg", "cat", "dog", "0.600000", "0.200000"]]
    # Without files (a tf.data or TFDS source), the images' indices.
    path = report.write_mistakes_csv(LABELS, probabilities, NAMES, tmp_path / "i.csv")
    with open(path, newline="") as f:
        assert [row[1] for row in csv.reader(f)] == ["file", "4", "2"]
    # A file name that is not UTF-8 is written as the logs show it, in the
    # CSV and the plot's titles.
    paths[4] = os.fsdecode(b"photos/caf\xe9.jpg")
    path = report.write_mistakes_csv(LABELS, probabilities, NAMES, tmp_path / "b.csv", paths)
    with open(path, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f))[1][1] == "photos/caf\\xe9.jpg"
    images = np.zeros((2, 8, 8, 3), np.uint8)
    report.write_report(tmp_path / "r", NAMES, LABELS, probabilities, mistake_images=images,
                        mistake_indices=[4, 2], paths=paths)


def test_write_report_writes_every_file(tmp_path):
    probabilities = _probabilities(PREDICTIONS, 0.7)
    history = {"head": {"loss": [1.0, 0.8], "accuracy": [0.5, 0.6],
                        "val_loss": [1.1, 0.9], "val_accuracy": [0.4, 0.5]},
               "fine_tune": {"loss": [0.7], "accuracy": [0.7], "val_loss": [0.85],
                             "val_accuracy": [0.55]}}
    indices = report.most_confident_mistakes(LABELS, probabilities)
    images = np.random.default_rng(0).integers(0, 256, (len(indices), 24, 24, 3), np.uint8)
    written = report.write_report(tmp_path / "report", NAMES, LABELS, probabilities,
                                  history=history, mistake_images=images,
                                  mistake_indices=indices, summary={"hub_handle": "h"})
    assert sorted(written) == sorted([
        "curves.png", "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
        "mistakes.png", "mistakes.csv", "summary.json", "index.html"])
    # Figure size (inches) x dpi; tight_layout keeps the canvas size.
    expected_sizes = {"curves.png": (720, 1800),            # 12 x 4.8 in at 150 dpi
                      # side 0.45 * 3 classes + 2, margin 0.075 * len("cat (3)")
                      # + 0.4, colour bar 1.8 and title 0.6, at 150 dpi
                      "confusion_matrix.png": (731, 911),
                      "mistakes.png": (490, 680)}           # 2 mistakes: 1 row, 2 columns
    for name, (height, width) in expected_sizes.items():
        pixels = mpimg.imread(written[name])
        assert pixels.shape[:2] == (height, width), name
        assert pixels.std() > 0.01, f"{name} is blank"
    with open(written["confusion_matrix.csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", *NAMES]
    assert [row[1:] for row in rows[1:]] == [["2", "1", "0"], ["0", "1", "1"], ["0", "0", "1"]]
    summary = json.load(open(written["summary.json"]))
    assert summary["hub_handle"] == "h"
    assert summary["validation_metrics"]["accuracy"] == pytest.approx(4 / 6)
    assert summary["validation_metrics"]["macro_f1"] == pytest.approx(EXPECTED["macro avg"][2])
    assert summary["history"]["fine_tune"]["val_loss"] == [0.85]
    assert summary["most_confused"] == [{"true": "cat", "predicted": "dog", "images": 1},
                                        {"true": "dog", "predicted": "fox", "images": 1}]
    assert "kept_epoch" not in summary
    report.write_report(tmp_path / "kept", NAMES, LABELS, probabilities, history=history,
                        kept_epoch=("fine_tune", 0), loss_name="cross-entropy")
    assert json.load(open(tmp_path / "kept" / "summary.json"))["kept_epoch"] == {
        "phase": "fine_tune", "epoch": 0}
    # One page over the files, names escaped.
    page = open(written["index.html"], encoding="utf-8").read()
    for name in ("curves.png", "confusion_matrix.png", "mistakes.png"):
        assert f'<img src="{name}"' in page
    assert '<a href="mistakes.csv">' in page and "accuracy 66.7% on 6 images" in page
    assert "most confused (true -&gt; predicted): cat -&gt; dog (1)" in page
    assert "<td>cat</td><td>1.0000</td><td>0.6667</td><td>0.8000</td><td>3</td>" in page
    kept_page = open(tmp_path / "kept" / "index.html", encoding="utf-8").read()
    assert "weights kept: the start of fine-tuning" in kept_page


def test_the_index_page_escapes_names_and_writes_any_path(tmp_path):
    # An evaluate report: no history, a model path that is not UTF-8 (class
    # names are already escaped by `data.list_image_folder`), names that are HTML.
    names = ["<cat>", "dog & co", "fox"]
    written = report.write_report(tmp_path, names, LABELS, _probabilities(LABELS, 0.9),
                                  summary={"model": os.fsdecode(b"/exports/caf\xe9")})
    page = open(written["index.html"], encoding="utf-8").read()
    assert "<td>&lt;cat&gt;</td>" in page and "<td>dog &amp; co</td>" in page
    assert "<li>model /exports/caf\\xe9</li>" in page
    assert "curves.png" not in page and "mistakes.png" not in page


def test_the_kept_epoch_is_placed_on_the_shared_epoch_axis():
    spans = {"head": (0, 5), "fine_tune": (5, 3)}
    # The start of fine-tuning is the head's last epoch.
    assert report._kept_point(spans, ("fine_tune", 0)) == ("head", 5, 5)
    assert report._kept_point(spans, ("fine_tune", 2)) == ("fine_tune", 2, 7)
    assert report._kept_point(spans, None) is None
    # Not drawn where the history has no such epoch.
    assert report._kept_point(spans, ("fine_tune", 4)) is None
    assert report._kept_point({"fine_tune": (0, 3)}, ("fine_tune", 0)) is None


def test_most_confused_pairs_come_most_first_without_the_diagonal():
    # Off the diagonal: cat -> dog 1, cat -> fox 4, dog -> fox 2, fox -> cat 4.
    matrix = np.array([[9, 1, 4], [0, 7, 2], [4, 0, 8]])
    labels = np.repeat(np.arange(3), matrix.sum(axis=1))
    predictions = np.concatenate([np.repeat(np.arange(3), row) for row in matrix])
    np.testing.assert_array_equal(report.confusion_matrix(labels, predictions, 3), matrix)
    assert report.most_confused(labels, predictions, NAMES) == [
        ("cat", "fox", 4), ("fox", "cat", 4), ("dog", "fox", 2)]
    assert report.most_confused(labels, labels, NAMES) == []


def test_long_names_are_cut_in_the_middle_so_their_ends_stay_apart():
    first = report._middle("Chevrolet Silverado 1500 Regular Cab 2012", 28)
    second = report._middle("Chevrolet Silverado 1500 Extended Cab 2012", 28)
    assert len(first) == len(second) == 28 and first != second
    assert first.startswith("Chevrolet Silv") and first.endswith("ular Cab 2012")
    assert report._middle("IMG_20240101_123456789012.jpeg", 20).endswith(".jpeg")
    assert report._middle("cat", 28) == "cat"
    assert [report._middle("abcdefghij", limit) for limit in (1, 2, 5)] == ["…", "a…", "ab…ij"]


def test_a_report_written_into_an_earlier_one_removes_its_files_only(tmp_path, caplog):
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "curves.png").write_bytes(b"an earlier run's curves")
    (folder / "notes.txt").write_text("the user's own")
    with caplog.at_level("INFO", logger="tfhub_ft.report"):
        written = report.write_report(folder, NAMES, LABELS, _probabilities(PREDICTIONS, 0.7))
    assert "curves.png" not in written and "mistakes.png" not in written
    assert sorted(os.listdir(folder)) == sorted([*written, "notes.txt"])
    assert "Removed curves.png from" in caplog.text
    assert "left by an earlier report" in caplog.text


def test_characters_the_font_lacks_are_one_log_line(tmp_path, caplog, recwarn):
    names = ["シャツ", "dog", "fox"]
    probabilities = _probabilities(PREDICTIONS, 0.7)
    indices = report.most_confident_mistakes(LABELS, probabilities)
    images = np.zeros((len(indices), 8, 8, 3), np.uint8)
    with caplog.at_level("WARNING", logger="tfhub_ft.report"):
        report.write_report(tmp_path, names, LABELS, probabilities, mistake_images=images,
                            mistake_indices=indices)
    if not [r for r in caplog.records if "fonts lack" in r.getMessage()]:
        pytest.skip("a font with Japanese is installed: nothing is missing")
    [line] = [r.getMessage() for r in caplog.records if "fonts lack" in r.getMessage()]
    assert line.startswith("The plots' fonts lack シャツ, used in class names")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_probabilities_of_the_wrong_shape_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Expected shape \\[N, C\\] = \\[6, 3\\]"):
        report.write_report(tmp_path, NAMES, LABELS, np.zeros((6, 2)))


def _scalar_tags(folder):
    import tensorflow as tf
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.slow
def test_fit_report_and_tensorboard_runs_per_phase(tiny_backbone_path, image_folders,
                                                   small_config, tmp_path):
    train, validation, corrupt, names = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    history = tuner.fit(train, validation, verbose=0, tensorboard_dir=tmp_path / "tb")
    assert tuner.history is history
    assert set(tuner.stage_seconds) == {"load", "decode", "frozen_pass", "head", "fine_tune", "validation"}
    for phase in ("head", "fine_tune"):
        assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= _scalar_tags(
            tmp_path / "tb" / phase / "train"), phase
        assert {"epoch_loss", "epoch_accuracy"} <= _scalar_tags(
            tmp_path / "tb" / phase / "validation"), phase
    tuner.export(tmp_path / "export")
    written = tuner.report(tmp_path / "report")
    assert set(written) == {"curves.png", "confusion_matrix.png", "confusion_matrix.csv",
                            "per_class.csv", "mistakes.png", "mistakes.csv", "summary.json",
                            "index.html"}
    with open(written["mistakes.csv"], newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    wrong = int(round((1 - tuner.validation_metrics["accuracy"]) * 12))
    assert len(files) == wrong and all(
        os.path.isfile(file) and file.startswith(str(validation)) for file in files)
    summary = json.load(open(written["summary.json"]))
    assert summary["hub_handle"] == tiny_backbone_path
    assert summary["config"]["batch_size"] == small_config.batch_size
    assert len(summary["blocks_unfrozen"]) == small_config.unfreeze_blocks
    assert summary["image_counts"] == {"train": 48, "validation": 12}
    assert sorted(summary["skipped_files"]) == sorted(corrupt)
    assert set(summary["stage_seconds"]) == {"load", "decode", "frozen_pass", "head", "fine_tune",
                                             "validation", "export"}
    assert summary["validation_metrics"]["accuracy"] == pytest.approx(
        tuner.validation_metrics["accuracy"])
    assert summary["class_names"] == sorted(names)
    # Early stopping's choice: the epoch of the lowest validation loss, or 0
    # (the start of fine-tuning) when no epoch beat where phase 2 started.
    phase, epoch = tuner.kept_epoch
    losses = history["fine_tune"]["val_loss"]
    assert phase == "fine_tune" and 0 <= epoch <= len(losses)
    if epoch:
        assert losses[epoch - 1] == min(losses)
    assert summary["kept_epoch"] == {"phase": phase, "epoch": epoch}
    assert mpimg.imread(written["curves.png"]).shape[:2] == (720, 1800)

import logging
import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tfhub_ft import cli, predict
from tfhub_ft.demo import shapes


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(folder, image paths, corrupt paths): two class folders, a nested one, bad files."""
    root = str(tmp_path_factory.mktemp("photos"))
    images, labels, names = shapes.make_shape_images(2, 3, 40, seed=3, task="target")
    corrupt = fixtures.write_image_folder(root, images, labels, names,
                                         image_format="mixed", corrupt_files=2)
    nested = os.path.join(root, "deeper", "still")
    os.makedirs(nested)
    big = np.random.default_rng(0).integers(0, 256, (70, 50, 3), np.uint8)
    with open(os.path.join(nested, "odd_size.png"), "wb") as f:
        f.write(tf.io.encode_png(big).numpy())
    paths = predict.list_image_files(root)
    return root, paths, corrupt


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def serving_probabilities(export_dir, path):
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    with open(path, "rb") as f:
        return serve(image_bytes=tf.constant([f.read()]))["probabilities"].numpy()[0]


def test_listing_is_recursive_and_skips_non_images(photos):
    root, paths, corrupt = photos
    assert len(paths) == 6 + 2 + 1
    assert set(corrupt) <= set(paths)
    assert os.path.join(root, "deeper", "still", "odd_size.png") in paths
    assert not [p for p in paths if p.endswith(".txt")]
    assert paths == sorted(paths)
    assert predict.list_image_files(os.path.join(root, "**", "*.png")) == sorted(
        p for p in paths if p.endswith(".png"))


def test_listing_follows_linked_folders_as_training_does(photos, tmp_path, caplog):
    root, paths, _ = photos
    folder = tmp_path / "to_classify"
    folder.mkdir()
    os.symlink(root, folder / "linked")
    (folder / ".hidden.jpg").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="tfhub_ft.predict"):
        listed = predict.list_image_files(str(folder))
    assert listed == sorted(os.path.join(folder, "linked", os.path.relpath(p, root))
                            for p in paths)
    assert "left out" in caplog.text and ".hidden.jpg" in caplog.text


def test_a_glob_says_what_it_matched_that_is_not_a_file(tmp_path, caplog):
    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    (folder / "x.jpg").write_bytes(b"x")
    (folder / "y.txt").symlink_to(tmp_path / "gone.txt")
    os.mkfifo(folder / "z.jpg")
    with caplog.at_level(logging.INFO, logger="tfhub_ft.predict"):
        assert predict.list_image_files(str(folder / "*")) == [str(folder / "x.jpg")]
    assert caplog.messages == [
        f"Found 1 file matching {folder}/*; left out 3: {folder}/cats (a folder); "
        f"{folder}/y.txt (broken link); {folder}/z.jpg (not a regular file)"]
    with pytest.raises(ValueError, match=r"which matches no file, only .*cats \(a folder\)\. "
                                         r"Pass a folder to read it recursively"):
        predict.list_image_files(str(folder / "c*"))


def test_a_file_is_taken_as_named_before_any_glob(tmp_path):
    (tmp_path / "x1.jpg").write_bytes(b"x")
    (tmp_path / "x[1].jpg").write_bytes(b"x")
    assert predict.list_image_files(str(tmp_path / "x[1].jpg")) == [str(tmp_path / "x[1].jpg")]
    # A glob still reads as one where no file has its name.
    assert predict.list_image_files(str(tmp_path / "x[0-9].jpg")) == [str(tmp_path / "x1.jpg")]


@pytest.mark.slow
def test_a_row_per_file_bad_files_included(export_dir, photos, tmp_path):
    root, paths, corrupt = photos
    output = str(tmp_path / "out" / "predictions.csv")
    assert predict.main([f"--model={export_dir}", f"--images={root}",
                         f"--output={output}", "--top_k=2", "--batch_size=4"]) == 0
    rows = read_csv(output)
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2", "error"]
    assert [row[0] for row in rows[1:]] == paths
    labels = open(os.path.join(export_dir, "labels.txt")).read().split()
    for row in rows[1:]:
        if row[0] in corrupt:
            assert row[1:5] == ["", "", "", ""] and row[5]
            continue
        assert row[5] == ""
        expected = serving_probabilities(export_dir, row[0])
        top = np.argsort(-expected)[:2]
        assert row[1] == labels[top[0]] and row[3] == labels[top[1]]
        assert float(row[2]) == pytest.approx(expected[top[0]], abs=1e-6)
        assert float(row[4]) == pytest.approx(expected[top[1]], abs=1e-6)
        assert float(row[2]) >= float(row[4])


def test_errors_name_the_file_problem(export_dir, photos):
    _, paths, corrupt = photos
    rows = predict.predict_files(export_dir, paths, batch_size=len(paths), verbose=False)
    errors = {row["path"]: row["error"] for row in rows if row["error"]}
    assert sorted(errors) == sorted(corrupt)
    # The decode check's own words, not TensorFlow's wrapping of them (the
    # fixture's corrupt files: random bytes, and a JPEG cut short).
    for error in errors.values():
        assert re.fullmatch(
            r"the file is not a JPEG, PNG, GIF, BMP or WebP image \(unknown format\); its "
            r"first bytes are \(hex\): ([0-9a-f]{2} ){7}[0-9a-f]{2} and its length in bytes "
            r"is \d+|the file is a truncated JPEG file \(cut short: no end marker after its "
            r"image data\); its length in bytes is \d+", error), error
    missing = predict.predict_files(export_dir, [paths[0] + ".gone"], verbose=False)
    assert missing[0]["error"] == "cannot be read (No such file or directory)"


def test_a_broken_link_to_an_image_gets_a_row(export_dir, photos, tmp_path, caplog):
    _, paths, _ = photos
    folder = tmp_path / "to_classify"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(paths[0])
    (folder / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "c.txt").symlink_to(tmp_path / "gone.txt")
    with caplog.at_level(logging.INFO, logger="tfhub_ft.predict"):
        listed = predict.list_image_files(str(folder))
        assert predict.list_image_files(str(folder / "*")) == listed
    assert listed == [str(folder / "a.jpg"), str(folder / "b.jpg")]
    assert len(caplog.messages) == 2
    assert all("c.txt (broken link)" in message for message in caplog.messages)
    rows = predict.predict_files(export_dir, listed, verbose=False)
    assert [row["error"] for row in rows] == [
        "", f"broken link (to {tmp_path / 'gone.jpg'}, which does not exist)"]


def test_an_empty_file_is_said_so_as_in_training(export_dir, photos, tmp_path):
    _, paths, _ = photos
    (tmp_path / "empty.jpg").write_bytes(b"")
    rows = predict.predict_files(export_dir, [str(tmp_path / "empty.jpg"), paths[0]],
                                 verbose=False)
    assert [row["error"] for row in rows] == ["empty (0 bytes)", ""]


def test_error_text_keeps_the_reason_and_drops_the_wrapping():
    from tfhub_ft.predict import error_text

    def op_error(message):
        return tf.errors.InvalidArgumentError(None, None, message)
    graph = ("Graph execution error:\n\nDetected at node DecodeImage defined at (most recent "
             "call last):\n<stack traces unavailable>\nInvalid PNG data, size 12432\n\t "
             "[[{{node DecodeImage}}]] [Op:__inference_signature_wrapper_8030]")
    eager = ("{{function_node __wrapped__DecodeImage_device_/job:localhost/replica:0/task:0/"
             "device:CPU:0}} Invalid PNG data, size 12432 [Op:DecodeImage] name: ")
    decoder = "TensorFlow could not decode it: Invalid PNG data, size 12432"
    assert error_text(op_error(graph)) == error_text(op_error(eager)) == decoder
    # An error of another op is not worded as a file's.
    other = graph.replace("Invalid PNG data, size 12432", "input depth must be even").replace(
        "DecodeImage", "depthwise")
    assert error_text(op_error(other)) == "InvalidArgumentError: input depth must be even"
    assert error_text(op_error("assertion failed: [image_bytes[0] is odd")) == (
        "the file is odd")
    # Not TensorFlow's: type and first line, whatever the text holds.
    assert error_text(FileNotFoundError(2, "No such file", "assertion failed: [x].jpg")) == (
        "FileNotFoundError: [Errno 2] No such file: 'assertion failed: [x].jpg'")


@pytest.mark.slow
def test_a_jpeg_libjpeg_warns_about_is_classified_and_named(export_dir, photos, tmp_path,
                                                          caplog, capfd):
    from tests.fixtures import corrupt_jpeg
    _, paths, corrupt = photos
    smeared = tmp_path / "smeared.jpg"
    smeared.write_bytes(corrupt_jpeg())
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="tfhub_ft.predict"):
        rows = predict.predict_files(export_dir, [str(smeared), *paths], batch_size=4,
                                     verbose=False)
    assert rows[0]["error"] == "" and len(rows[0]["classes"]) == 1
    (message,) = [message for message in caplog.messages if "JPEG" in message]
    assert message.startswith(
        "1 JPEG file(s) with corrupt data, classified anyway (libjpeg fills what it cannot "
        f"read, so part of the image may be gray or smeared): {smeared} (Corrupt JPEG data: ")
    assert "Corrupt JPEG data" not in capfd.readouterr().err


@pytest.mark.slow
def test_progress_bar_only_when_asked(export_dir, photos, capsys):
    _, paths, _ = photos
    predict.predict_files(export_dir, paths[:3], verbose=False)
    assert capsys.readouterr().out == ""
    predict.predict_files(export_dir, paths[:3], verbose=True)
    assert "3/3" in capsys.readouterr().out


@pytest.mark.slow
def test_tflite_input_matches_the_saved_model(export_dir, photos):
    _, paths, corrupt = photos
    saved = predict.predict_files(export_dir, paths, top_k=3, verbose=False)
    lite = predict.predict_files(os.path.join(export_dir, "model.tflite"), paths, top_k=3,
                                 verbose=False)
    assert [row["error"] != "" for row in lite] == [p in corrupt for p in paths]
    assert [row["error"] for row in lite] == [row["error"] for row in saved]
    for a, b in zip(saved, lite):
        assert a["classes"] == b["classes"]
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)


@pytest.mark.slow
def test_a_tflite_file_decodes_as_its_export_does(export_dir, photos, tmp_path):
    import json
    import shutil
    _, paths, corrupt = photos
    good = [path for path in paths if path not in corrupt][:2]
    assert json.load(open(os.path.join(export_dir, "decoding.json"))) == {
        "image_size": 32, "max_image_pixels": 200_000_000, "exif_orientation": True}
    for name in ("model.tflite", "labels.txt"):
        shutil.copy(os.path.join(export_dir, name), tmp_path)
    with open(tmp_path / "decoding.json", "w") as f:
        json.dump({"image_size": 32, "max_image_pixels": 100, "exif_orientation": False}, f)
    rows = predict.predict_files(str(tmp_path / "model.tflite"), good, verbose=False)
    with open(tmp_path / "other.json", "w") as f:
        json.dump({"image_size": 160, "max_image_pixels": 100, "exif_orientation": False}, f)
    os.replace(tmp_path / "other.json", tmp_path / "decoding.json")
    with pytest.raises(ValueError, match=r"decoding.json in .* is for 160-px images but the "
                                         r"model takes 32-px ones"):
        predict.load_classifier(str(tmp_path / "model.tflite"))
    for row in rows:
        assert re.match(r"the file is too large: its header says \d+ x \d+ pixels = \d+, "
                        r"above max_image_pixels=100", row["error"]), row["error"]


def test_invalid_arguments_are_explained(export_dir, photos, tmp_path, capsys, monkeypatch):
    root, paths, _ = photos
    with pytest.raises(ValueError, match=r"Invalid value for `top_k`. Expected an integer in \[1, 3\]"):
        predict.predict_files(export_dir, paths, top_k=4)
    with pytest.raises(ValueError, match="Expected an export folder written by `FineTuner.export`"):
        predict.load_classifier(str(tmp_path))
    lonely = tmp_path / "lonely.tflite"
    lonely.write_bytes(open(os.path.join(export_dir, "model.tflite"), "rb").read())
    with pytest.raises(ValueError, match="No labels.txt in"):
        predict.load_classifier(str(lonely))
    # Through the command: one line, status 2 (its logging set-up and quiet
    # import left to pytest, as in tests/test_cli.py).
    monkeypatch.setattr(cli, "configure_logging", lambda verbosity: None)
    monkeypatch.setattr(cli, "import_tensorflow_quietly", lambda verbosity: None)
    capsys.readouterr()
    assert cli.main(["predict", f"--model={export_dir}", f"--images={tmp_path}/*.jpg",
                     f"--output={tmp_path}/p.csv"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no file" in err[0], err


def test_an_output_that_would_overwrite_an_input_is_refused(export_dir, photos, tmp_path):
    root, paths, _ = photos
    tflite_file = os.path.join(export_dir, "model.tflite")
    refused = {
        str(tmp_path): "which is a folder",
        paths[0]: "which is one of the images to classify",
        str(tmp_path / "new.jpg"): "which is named as an image file",
        os.path.join(export_dir, "saved_model.pb"): "which is inside the model's folder",
        os.path.join(export_dir, "predictions.csv"): "which is inside the model's folder",
        str(tmp_path / "notes.txt" / "deeper" / "p.csv"):
            f"whose folder cannot be made: {str(tmp_path / 'notes.txt')!r} is a file",
    }
    (tmp_path / "notes.txt").write_text("x")
    for output, problem in refused.items():
        with pytest.raises(ValueError, match="Invalid value for `output`. Expected a new CSV "
                           "file outside the model's folder") as error:
            predict.check_output(output, export_dir, paths)
        assert problem in str(error.value)
    with pytest.raises(ValueError, match="inside the model's folder"):
        predict.check_output(os.path.join(export_dir, "p.csv"), tflite_file, paths)
    predict.check_output(str(tmp_path / "p.csv"), export_dir, paths)  # accepted
    predict.check_output("-", export_dir, paths)  # standard output
    # Renaming the CSV onto a pipe or a device would replace it.
    os.mkfifo(tmp_path / "pipe.csv")
    for output in (str(tmp_path / "pipe.csv"), os.devnull):
        with pytest.raises(ValueError, match=r"which is not a regular file \(a device, pipe "
                                             r"or socket\)\. Pass '-' as the output to write"):
            predict.check_output(output, export_dir, paths)
    # A .tflite file copied into a folder of other things: the folder is not
    # the model's, only the file and its labels are.
    (tmp_path / "shared").mkdir()
    lone = tmp_path / "shared" / "model.tflite"
    lone.write_bytes(open(tflite_file, "rb").read())
    (tmp_path / "shared" / "labels.txt").write_text("a\nb\nc\n")
    predict.check_output(str(tmp_path / "shared" / "predictions.csv"), str(lone), paths)
    for output in (lone, tmp_path / "shared" / "labels.txt"):
        with pytest.raises(ValueError, match="which is the model or its labels"):
            predict.check_output(str(output), str(lone), paths)


def test_the_csv_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    output = tmp_path / "p.csv"
    output.write_text("earlier run\n")
    rows = [{"path": "a.jpg", "classes": ["x"], "probabilities": [0.5], "error": ""}]

    def broken_path(path):
        raise OSError("disk full")

    monkeypatch.setattr(predict.image_files, "display_path", broken_path)
    with pytest.raises(OSError, match="disk full"):
        predict.write_csv(rows, output, 1)
    assert output.read_text() == "earlier run\n" and os.listdir(tmp_path) == ["p.csv"]
    monkeypatch.undo()
    predict.write_csv(rows, output, 1)
    assert read_csv(output)[1] == ["a.jpg", "x", "0.500000", ""]
    assert os.listdir(tmp_path) == ["p.csv"]


def test_a_link_is_written_through_and_dash_is_standard_output(tmp_path, capsys):
    rows = [{"path": "a.jpg", "classes": ["x"], "probabilities": [0.5], "error": ""}]
    (tmp_path / "target.csv").write_text("earlier run\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    # The folder checked is the target's, where the CSV is written.
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad_link.csv").symlink_to(tmp_path / "notes.txt" / "p.csv")
    with pytest.raises(ValueError, match="whose folder cannot be made"):
        predict.check_output(str(tmp_path / "bad_link.csv"), str(tmp_path / "m"), [])
    os.remove(tmp_path / "bad_link.csv")
    os.remove(tmp_path / "notes.txt")
    predict.write_csv(rows, tmp_path / "link.csv", 1)
    assert os.path.islink(tmp_path / "link.csv")
    assert read_csv(tmp_path / "target.csv")[1] == ["a.jpg", "x", "0.500000", ""]
    assert sorted(os.listdir(tmp_path)) == ["link.csv", "target.csv"]
    capsys.readouterr()
    predict.write_csv(rows, "-", 1)
    assert capsys.readouterr().out.splitlines() == [
        "path,class_1,probability_1,error", "a.jpg,x,0.500000,"]


@pytest.mark.slow
def test_module_runs_as_a_command(export_dir, photos, tmp_path):
    root, paths, _ = photos
    output = str(tmp_path / "p.csv")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run(
        [sys.executable, "-m", "tfhub_ft.predict", f"--model={export_dir}",
         f"--images={root}", f"--output={output}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(read_csv(output)) == len(paths) + 1
    # Through the command: TensorFlow's start-up and failed-assertion lines
    # are not shown, tfhub_ft's own lines are.
    lines = result.stderr.splitlines()
    assert f"Wrote {len(paths)} rows to {output}" in lines
    assert lines[-2].startswith(f"Classified {len(paths) - 2} of {len(paths)} files; 2 could")
    assert not [line for line in lines if "oneDNN" in line or "rendezvous" in line], lines

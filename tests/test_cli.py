import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Dict, Literal, Optional, Tuple

import pytest

from tfhub_ft import FineTuneConfig, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_flags():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    return {action.dest: action for action in train._actions
            if action.option_strings and action.dest != "help"
            and action.help != "==SUPPRESS=="}


def test_every_config_field_has_a_flag_with_its_default_and_help():
    flags = _train_flags()
    helps = cli.config_field_help()
    for field in dataclasses.fields(FineTuneConfig):
        assert field.name in flags, field.name
        # Unset flags fall back to the preset; the help shows the plain default.
        assert flags[field.name].default is cli._UNSET, field.name
        default = cli._format_default(getattr(FineTuneConfig(), field.name))
        assert f"(default: {default})" in flags[field.name].help, field.name
        assert helps.get(field.name), f"FineTuneConfig's docstring does not document {field.name}"
        assert helps[field.name] in flags[field.name].help


def test_readme_flag_table_lists_exactly_the_train_flags():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `--")]
    documented = set()
    for row in rows:
        documented.update(re.findall(r"`--(\w+)`", row.split("|")[1]))
    # A flag may be documented by its alias (--time_budget for time_budget_s).
    aliases = {alias: name for name, names in cli.FLAG_ALIASES.items() for alias in names}
    assert {aliases.get(flag, flag) for flag in documented} == set(_train_flags())


def test_flags_parse_into_a_config():
    args = cli.build_parser().parse_args([
        "train", "--image_size=none", "--batch_size=16", "--weight_decay=0",
        "--augmentation=", "--deterministic", "--nobatch_norm_trainable",
        "--head_learning_rate=3e-3"])
    config = cli.config_from_args(args)
    assert config == FineTuneConfig(image_size=None, batch_size=16, weight_decay=0.0,
                                    augmentation=(), deterministic=True,
                                    head_learning_rate=3e-3)
    args = cli.build_parser().parse_args(["train", "--deterministic=false",
                                          "--augmentation=flip"])
    assert cli.config_from_args(args) == FineTuneConfig(augmentation=("flip",))
    # The help writes the empty default as "none", which parses back to it.
    args = cli.build_parser().parse_args(["train", "--preset=thorough", "--augmentation=none"])
    assert cli.config_from_args(args).augmentation == ()


def test_preset_flag_starts_from_the_preset_and_explicit_flags_win():
    parser = cli.build_parser()
    thorough = FineTuneConfig.thorough()
    assert thorough != FineTuneConfig()
    args = parser.parse_args(["train", "--preset=thorough"])
    assert cli.config_from_args(args) == thorough
    # An explicit flag wins even when it repeats the plain default.
    changed = [f.name for f in dataclasses.fields(FineTuneConfig)
               if getattr(thorough, f.name) != getattr(FineTuneConfig(), f.name)]
    for field in changed:
        value = getattr(FineTuneConfig(), field)
        text = ("none" if value is None else
                ",".join(value) if isinstance(value, tuple) else str(value))
        args = parser.parse_args(["train", "--preset=thorough", f"--{field}={text}"])
        assert cli.config_from_args(args) == thorough.replace(**{field: value}), field
    with pytest.raises(cli.UsageError, match="--preset"):
        parser.parse_args(["train", "--preset=fastest"])


def test_time_budget_flag_parses():
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["train", "--time_budget=90"])).time_budget_s == 90.0
    assert cli.config_from_args(parse(["train", "--time_budget_s=1.5"])).time_budget_s == 1.5
    assert cli.config_from_args(parse(["train", "--time_budget=none"])).time_budget_s is None
    assert cli.config_from_args(parse(["train"])).time_budget_s is None
    # The expectation in words, not argparse's name of the parsing function.
    with pytest.raises(cli.UsageError, match=r"argument --time_budget/--time_budget_s: "
                                             r"expected a number or none, got 'soon'"):
        parse(["train", "--time_budget=soon"])
    with pytest.raises(cli.UsageError, match=r"--image_size: expected an integer or none, "
                                             r"got 'x'"):
        parse(["train", "--image_size=x"])


def test_flags_are_generated_for_any_field_type():
    @dataclasses.dataclass(frozen=True)
    class Options:
        """Options.

        Attributes:
            size: A size, or None.
                Continued here.
            widths: Widths.
            mode: One of two.
            weights: Per-class weights.
            name: A name.
            on: A switch.
        """

        size: Optional[int] = None
        widths: Tuple[int, ...] = (1, 2)
        mode: Literal["skip", "fail"] = "fail"
        weights: Optional[Dict[str, float]] = None
        name: str = "x"
        on: bool = False

    assert cli.config_field_help(Options)["size"] == "A size, or None. Continued here."
    parser = cli._Parser()
    cli.add_config_flags(parser, Options)
    args = parser.parse_args(["--size=3", "--widths=4,5", "--mode=skip",
                              '--weights={"a": 2.0}', "--name=y", "--on"])
    assert cli.config_from_args(args, Options) == Options(3, (4, 5), "skip", {"a": 2.0}, "y", True)
    assert cli.config_from_args(parser.parse_args([]), Options) == Options()
    with pytest.raises(cli.UsageError, match="expected one of skip, fail"):
        parser.parse_args(["--mode=maybe"])


@pytest.fixture
def run_in_process(monkeypatch):
    """Runs `cli.main` here; logging and stderr are left to pytest."""
    monkeypatch.setattr(cli, "configure_logging", lambda verbosity: None)
    monkeypatch.setattr(cli, "import_tensorflow_quietly", lambda verbosity: None)
    return cli.main


def _one_line_error(capsys, status):
    assert status == cli.EXIT_ERROR
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("tfhub_ft") and ": error: " in lines[0]
    return lines[0]


def test_one_line_errors(run_in_process, capsys, tiny_backbone_path, image_folders, tmp_path):
    train, _, _, _ = image_folders
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = {
        "is not a folder": ["train", f"--image_dir={tmp_path / 'missing'}"],
        "neither a local folder": ["train", f"--hub_url={tmp_path / 'no_hub'}",
                                   f"--image_dir={train}"],
        "invalid int value": ["train", "--batch_size=many"],
        "Invalid value for `label_smoothing`": ["train", "--label_smoothing=2"],
        "Invalid value for `export_dir`. Cannot write": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--export_dir={a_file / 'export'}"],
        "Invalid value for `distribution_strategy`": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            "--distribution_strategy=mirorred"],
        "Invalid value for `validation_dir`. Expected images other than the training": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--validation_dir={train}/."],
        "invalid choice": ["fly"],
        "Invalid value for `model`": ["evaluate", f"--model={tmp_path}", f"--image_dir={train}"],
        "Invalid value for `time_budget_s`. Expected a number of seconds > 0": [
            "train", "--time_budget=0"],
        "a time budget cannot be combined with `work_dir`": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            "--time_budget=60", f"--work_dir={tmp_path / 'work'}"],
        # Before training, not after it: the folder is not an export.
        "Invalid value for `export_backbone_dir`. Expected a new or empty folder": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--export_backbone_dir={tmp_path}"],
        # What the next run on the image folder would take for a class.
        "Invalid value for `report_dir`. Expected a folder outside `image_dir`": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--report_dir={os.path.join(train, 'report')}"],
        # What the export would delete.
        "Invalid value for `work_dir`. Expected a folder outside `export_dir`": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--export_dir={tmp_path / 'out'}", f"--work_dir={tmp_path / 'out' / 'work'}"],
        "Invalid value for `export_backbone_dir`. Expected a folder neither `export_dir`": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--export_dir={tmp_path / 'out'}", f"--export_backbone_dir={tmp_path / 'out'}"],
        # A SavedModel, so check_replaceable would let the export replace it.
        "Invalid value for `hub_url`. Expected a folder outside `export_dir`": [
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            f"--export_dir={tiny_backbone_path}"],
    }
    for expected, argv in cases.items():
        line = _one_line_error(capsys, run_in_process(argv))
        assert expected in line, (argv, line)
    assert os.path.exists(a_file)


def test_outputs_inside_image_folders_are_refused_urls_are_not_paths(tmp_path, monkeypatch):
    import argparse
    # As a path, gs://bucket/run would be cwd/gs:/bucket/run: inside --image_dir=.
    monkeypatch.chdir(tmp_path)
    outputs = dict.fromkeys(cli.TRAIN_OUTPUT_FLAGS)
    args = argparse.Namespace(image_dir=str(tmp_path), validation_dir=None, **outputs)
    args.work_dir = "gs://bucket/run"  # BUILD_NOTES' multi-worker advice: not under cwd
    cli._check_outside_image_folders(args)
    args.report_dir = str(tmp_path / "cats" / "report")
    with pytest.raises(ValueError, match="the next run on that folder would read it as a class folder"):
        cli._check_outside_image_folders(args)


def test_exports_inside_or_around_each_other_are_refused_before_training(tmp_path):
    import argparse
    outer, inner = str(tmp_path / "out"), str(tmp_path / "out" / "backbone")
    # Inside: refused only after training before; around: the backbone's
    # export would have deleted the classifier's.
    for export_dir, export_backbone_dir in ((outer, inner), (inner, outer)):
        args = argparse.Namespace(export_dir=export_dir, export_backbone_dir=export_backbone_dir)
        with pytest.raises(ValueError, match="Expected a folder neither `export_dir` nor inside "
                                             "or around it"):
            cli._check_outside_exports(args)
    cli._check_outside_exports(argparse.Namespace(export_dir=outer,
                                                  export_backbone_dir=str(tmp_path / "backbone")))


def test_advice_names_flags_as_the_command_user_types_them():
    cases = {
        "pass class_weight='balanced' to weight the loss":
            "pass --class_weight=balanced to weight the loss",
        "Export with tflite='dynamic' or tflite='float16' instead.":
            "Export with --tflite=dynamic or --tflite=float16 instead.",
        # The flag README shows, where a field has a shorter one.
        "Received: time_budget_s=0": "Received: --time_budget=0",
        "Received: export_dir='my photos', which holds":
            "Received: --export_dir='my photos', which holds",
        # Not an option, already a flag, or a tuple: as they are.
        "Raise time_budget_s (--time_budget) above ~37 s":
            "Raise time_budget_s (--time_budget) above ~37 s",
        "my_image_size=3, x.image_size=4, --image_size=5":
            "my_image_size=3, x.image_size=4, --image_size=5",
        "Received: augmentation=('flop',)": "Received: augmentation=('flop',)",
        # Every train flag, read from the parser (block_pattern was left out once).
        "Received: block_pattern='(x'": "Received: --block_pattern='(x'",
        # Inside a path or a URL query: not advice.
        "Exported the SavedModel to /home/u/runs/image_size=224/export":
            "Exported the SavedModel to /home/u/runs/image_size=224/export",
        "?batch_size=32&seed=1": "?batch_size=32&seed=1",
        # A sentence's full stop stays outside the value.
        "Received: head_learning_rate=-1.0.": "Received: --head_learning_rate=-1.0.",
    }
    for text, expected in cases.items():
        assert cli.as_typed(text) == expected


def test_evaluate_table_aligns_wide_class_names():
    def row(name, support=4, value=0.5):
        # No image of the class: recall and F1 are undefined (None).
        undefined = None if support == 0 else value
        return {"class": name, "precision": value, "recall": undefined, "f1": undefined,
                "support": support}

    lines = cli.per_class_table([row("猫"), row("dog"), row("シャツ", support=0, value=0.0),
                                 row("macro avg"), row("weighted avg")])
    assert lines == [
        "class         precision  recall      f1  support",
        "猫               0.5000  0.5000  0.5000        4",
        "dog              0.5000  0.5000  0.5000        4",
        "シャツ           0.0000       -       -        0",
        "macro avg        0.5000  0.5000  0.5000        4",
        "weighted avg     0.5000  0.5000  0.5000        4",
    ]
    # Each line fills the same number of terminal columns.
    assert len({cli.display_width(line) for line in lines}) == 1
    assert cli.display_width("e\u0301") == 1


def test_train_without_export_dir_warns_before_training(run_in_process, capsys, caplog,
                                                        tiny_backbone_path, image_folders):
    train, _, _, _ = image_folders
    # The strategy's error comes after the warning and before any training.
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        _one_line_error(capsys, run_in_process([
            "train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
            "--distribution_strategy=mirorred"]))
    assert ("No --export_dir: the trained classifier will not be saved (pass "
            "--export_dir=FOLDER to keep it).") in caplog.messages


def test_unexpected_errors_keep_their_traceback(run_in_process, monkeypatch):
    def broken(args):
        return int("not a number")  # a ValueError tfhub_ft did not raise

    monkeypatch.setitem(cli.COMMANDS, "train", broken)
    with pytest.raises(ValueError, match="invalid literal"):
        run_in_process(["train"])


def test_an_interrupted_run_says_how_to_resume(run_in_process, monkeypatch, capsys,
                                               tmp_path):
    from tfhub_ft import checkpoints

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    assert run_in_process(["train", "--work_dir=runs/my run"]) == 130
    assert capsys.readouterr().err == (
        "tfhub_ft: interrupted; it had not started training, so there is nothing to "
        "resume in --work_dir='runs/my run'\n")
    os.makedirs("runs/my run")
    open(os.path.join("runs/my run", checkpoints.STATE_FILE), "w").close()
    assert run_in_process(["train", "--work_dir=runs/my run"]) == 130
    assert capsys.readouterr().err == (
        "tfhub_ft: interrupted; the same command resumes it from --work_dir='runs/my run'\n")
    assert run_in_process(["train"]) == 130
    assert capsys.readouterr().err == (
        "tfhub_ft: interrupted; nothing was kept (pass --work_dir=FOLDER to make a run "
        "resumable: every epoch is saved there)\n")


def test_a_full_disk_is_one_line(run_in_process, monkeypatch, capsys):
    def full(args):
        try:
            raise OSError(28, "No space left on device", "/tmp/spill/000-train.bin")
        except OSError as error:
            raise RuntimeError("while caching") from error

    monkeypatch.setitem(cli.COMMANDS, "train", full)
    assert run_in_process(["train"]) == cli.EXIT_ERROR
    assert capsys.readouterr().err == (
        "tfhub_ft: no space left on the device (/tmp/spill/000-train.bin). Free space there, "
        "or write elsewhere: --export_dir, --work_dir, and TMPDIR for the spill files past "
        "--cache_memory_mb; nothing was kept (pass --work_dir=FOLDER to make a run "
        "resumable: every epoch is saved there)\n")


@pytest.mark.parametrize("signum, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(run_in_process, monkeypatch, capsys,
                                                 tmp_path, signum, status):
    import signal

    from tfhub_ft import checkpoints

    signum = getattr(signal, signum)

    def terminated(args):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises before this ends
        return 0

    before = signal.getsignal(signum)
    monkeypatch.setitem(cli.COMMANDS, "train", terminated)
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs")
    open(os.path.join("runs", checkpoints.STATE_FILE), "w").close()
    assert run_in_process(["train", "--work_dir=runs"]) == status
    assert capsys.readouterr().err == (
        f"tfhub_ft: terminated ({signum.name}); the same command resumes it from "
        "--work_dir=runs\n")
    assert signal.getsignal(signum) is before


def test_predict_and_inspect_call_their_modules(run_in_process, monkeypatch, capsys):
    import types
    calls = []
    for name in cli.DELEGATED_COMMANDS:
        module = types.ModuleType(f"tfhub_ft.{name}")
        module.main = lambda argv, name=name: calls.append((name, argv)) or 0
        monkeypatch.setitem(sys.modules, f"tfhub_ft.{name}", module)
    assert run_in_process(["predict", "--model=m", "a.jpg"]) == 0
    assert run_in_process(["inspect", "handle"]) == 0
    assert calls == [("predict", ["--model=m", "a.jpg"]), ("inspect", ["handle"])]


def test_a_missing_delegated_module_is_a_one_line_error(run_in_process, monkeypatch, capsys):
    import importlib
    real = importlib.import_module

    def without_predict(name, *args):
        if name == "tfhub_ft.predict":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_predict)
    line = _one_line_error(capsys, run_in_process(["predict", "x.jpg"]))
    assert "not available in this build" in line


def test_a_package_tfds_lacks_is_a_one_line_error(run_in_process, monkeypatch, capsys,
                                                  tiny_backbone_path):
    import tensorflow_datasets as tfds

    def load(name, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'",
                                  name="importlib_resources")

    monkeypatch.setattr(tfds, "load", load)
    # Online: the download host resolves, and tfds.load is what fails.
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: [])
    line = _one_line_error(capsys, run_in_process(
        ["train", f"--hub_url={tiny_backbone_path}", "--tfds_name=tf_flowers"]))
    assert "`pip install importlib_resources`" in line and "Offline" not in line


def _command(*args, cwd=None, **environment):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **environment)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "tfhub_ft", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_evaluate_lr_find_commands(tiny_backbone_path, image_folders, tmp_path):
    train, validation, _, names = image_folders
    recipe = ["--image_size=32", "--batch_size=8", "--head_epochs=2", "--fine_tune_epochs=2",
              "--unfreeze_blocks=2"]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = _command("train", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
                    f"--validation_dir={validation}", f"--export_dir={tmp_path / 'export'}",
                    f"--report_dir={tmp_path / 'report'}",
                    f"--tensorboard_dir={tmp_path / 'tb'}", *recipe)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    # A log file gets one line per stage and epoch: no bars, no escape codes,
    # no TensorFlow start-up lines, no retracing.
    assert "\r" not in output and "\x1b" not in output
    assert "retracing" not in output
    assert not re.search(r"^[IWE]\d{4} ", output, re.MULTILINE), output
    assert "renamed" not in output
    lines = output.splitlines()
    assert len(lines) <= 28, output
    assert sum(line.startswith("Phase 2 will fine-tune the top 2 of 5 blocks (block_3 to top")
               for line in lines) == 1
    assert sum(line.startswith("head epoch ") for line in lines) == 2
    accuracy = float(re.search(r"^validation_accuracy=([\d.]+) images=12 ", done.stdout,
                               re.MULTILINE).group(1))
    # One line naming the most confused classes, where any image is wrong.
    assert sum(line.startswith("Most confused (true -> predicted, validation images): ")
               for line in lines) == (accuracy < 1)
    assert sorted(os.listdir(tmp_path / "report")) == sorted([
        "curves.png", "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
        "mistakes.png", "mistakes.csv", "summary.json", "index.html"])
    assert sorted(os.listdir(tmp_path / "tb")) == ["fine_tune", "head"]

    done = _command("evaluate", f"--model={tmp_path / 'export'}", f"--image_dir={validation}",
                    f"--report_dir={tmp_path / 'evaluation'}")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^accuracy=[\d.]+ loss=[\d.]+ images=12$", done.stdout, re.MULTILINE)
    for name in [*names, "macro avg", "weighted avg"]:
        assert re.search(rf"^{name} +[\d.]+ +[\d.]+ +[\d.]+ +\d+$", done.stdout, re.MULTILINE)
    assert os.path.exists(tmp_path / "evaluation" / "per_class.csv")
    summary = json.load(open(tmp_path / "evaluation" / "summary.json"))
    assert (summary["model"], summary["image_dir"]) == (str(tmp_path / "export"),
                                                        str(validation))
    with open(tmp_path / "evaluation" / "mistakes.csv", newline="") as f:
        assert all(os.path.isfile(row["file"]) for row in csv.DictReader(f))
    # A folder with some of the classes: the others are shown without recall.
    for name in names[:2]:
        shutil.copytree(os.path.join(validation, name), tmp_path / "some" / name)
    (tmp_path / "some" / names[0] / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 60)
    done = _command("evaluate", f"--model={tmp_path / 'export'}",
                    f"--image_dir={tmp_path / 'some'}")
    assert done.returncode == 0, done.stderr
    # A file that cannot be decoded is skipped with its reason.
    assert re.search(r"Skipped 1 file\(s\) that could not be read or decoded as images: "
                     r"\S+cut\.jpg "
                     r"\(the file is a truncated JPEG file", done.stderr), done.stderr
    assert re.search(rf"^{names[2]} +[\d.]+ +- +- +0$", done.stdout, re.MULTILINE), done.stdout
    # Why, on the log: stdout holds results only.
    assert "1 of the model's 3 classes has no image here" in done.stderr
    assert "no image here" not in done.stdout

    done = _command("lr_find", f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
                    f"--validation_dir={validation}", "--steps=20",
                    f"--plot_path={tmp_path / 'lr_find.png'}", "--cache_memory_mb=0", *recipe,
                    TMPDIR=str(scratch))
    assert done.returncode == 0, done.stderr
    # The fast exit (cli.run) still runs the exit handlers: the spill folder
    # of a run whose arrays all went to disk is removed.
    assert "over the 0 MB memory budget" in done.stdout + done.stderr
    assert os.listdir(scratch) == []
    assert re.search(r"^suggested_learning_rate=\S+ \(--head_learning_rate=\S+\)$",
                     done.stdout, re.MULTILINE)
    # stdout holds results; how the rate was chosen is a log line.
    assert "How the rate was chosen" in done.stderr and "chosen" not in done.stdout
    assert os.path.getsize(tmp_path / "lr_find.png") > 0


@pytest.mark.slow
def test_errors_from_the_command_are_one_line_with_status_2(tmp_path):
    done = _command("train", f"--image_dir={tmp_path / 'missing'}")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("tfhub_ft train: error: Invalid value for `image_dir`")


@pytest.mark.slow
def test_an_easy_install_script_marker_does_not_break_tensorflow_hub():
    # What setuptools' legacy console script (`setup.py develop`) sets before
    # calling `cli.run`; tensorflow_hub then imports pkg_resources, which
    # resolved the marker's dependency tree and failed (pypa/setuptools#3146).
    code = ("import sys; sys.modules['__main__'].__requires__ = 'tfhub-ft'\n"
            "from tfhub_ft import cli\n"
            "# The command, as far as the import that failed (a handle URL's).\n"
            "cli.main = lambda argv: __import__('tensorflow_hub') and 0\n"
            "cli.run([])\n")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_flowers_example_is_the_train_command():
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "flowers.py"),
                           "--help"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    assert "--weight_decay" in done.stdout and "--validation_split" in done.stdout


def test_a_long_error_keeps_its_start_and_end():
    line = cli._one_line("train", ValueError("Bad thing. " + "name, " * 500 + "Fix it so."))
    assert line.startswith("tfhub_ft train: error: Bad thing. name,")
    assert line.endswith("Fix it so.") and len(line) < 650


def test_tflite_flag_choices_are_the_export_modes():
    # Written out in cli (which must not import TensorFlow to parse flags).
    from tfhub_ft import tflite

    assert cli.TFLITE_CHOICES == ("none",) + tuple(tflite.TFLITE_MODES)


def test_library_temporary_files_go_in_a_folder_a_later_command_removes(
        run_in_process, monkeypatch, tmp_path):
    import tempfile

    from tests.test_scratch import ended_process_id

    # What a killed command left (autograph's modules), and a live one's.
    host = cli.scratch._host()
    left = tmp_path / f"{cli.COMMAND_TEMPORARY_KIND}-{ended_process_id()}@{host}-x1"
    live = tmp_path / f"{cli.COMMAND_TEMPORARY_KIND}-{os.getpid()}@{host}-x2"
    for folder in (left, live):
        folder.mkdir()
        (folder / "__autograph_generated_file1.py").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    def command(args):
        made.append(tempfile.mkstemp(prefix="__autograph_generated_file")[1])
        return 0
    monkeypatch.setitem(cli.COMMANDS, "evaluate", command)
    assert run_in_process(["evaluate", "--model=m", "--image_dir=d"]) == 0
    assert os.path.basename(os.path.dirname(made[0])).startswith(
        f"{cli.COMMAND_TEMPORARY_KIND}-{os.getpid()}@")
    assert sorted(os.listdir(tmp_path)) == [live.name]
    assert tempfile.tempdir == str(tmp_path)

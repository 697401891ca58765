"""Training's progress: Keras's bars where they redraw, plain log lines elsewhere."""

import logging
import sys

import numpy as np
import pytest

from tfhub_ft import progress


@pytest.fixture
def on_a_terminal(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.delenv("PYCHARM_HOSTED", raising=False)

    def set_terminal(isatty):
        monkeypatch.setattr(sys.stdout, "isatty", lambda: isatty)
    return set_terminal


def test_bars_on_a_terminal_are_headed_by_their_phase(on_a_terminal, caplog):
    on_a_terminal(True)
    verbose, callbacks = progress.keras_progress("auto")
    assert verbose == 1
    header, = callbacks("fine_tune")
    header.set_params({"epochs": 2})
    with caplog.at_level(logging.INFO, logger="tfhub_ft.progress"):
        header.on_train_begin()
    assert caplog.messages == ["Phase 2: fine-tuning the top blocks (2 epochs)"]


def test_bars_in_a_notebook(on_a_terminal, monkeypatch):
    on_a_terminal(False)
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    assert progress.keras_progress("auto")[0] == 1


def test_in_a_file_one_line_per_epoch(on_a_terminal, caplog, monkeypatch):
    on_a_terminal(False)
    verbose, callbacks = progress.keras_progress("auto")
    assert verbose == 0
    log, = callbacks("head")
    log.set_params({"epochs": 3})
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="tfhub_ft.progress"):
        log.on_epoch_begin(1)
        log.on_epoch_end(1, {"loss": 0.5, "accuracy": 0.25, "note": "x"})
    assert caplog.messages == ["head epoch 2/3: loss=0.5000 accuracy=0.2500 (2.5 s)"]


def test_explicit_values_are_keras_own(on_a_terminal):
    on_a_terminal(False)
    for verbose, expected in ((0, 0), (False, 0), (1, 1), (True, 1), (2, 2)):
        keras_verbose, callbacks = progress.keras_progress(verbose)
        assert keras_verbose == expected and callbacks("head") == []


@pytest.mark.parametrize("verbose", ["yes", 3, -1, 1.0, None])
def test_other_values_are_refused(verbose):
    with pytest.raises(ValueError, match=r"Invalid value for `verbose`\. Expected one of "
                                         rf"\('auto', 0, 1, 2\).*Received: verbose={verbose!r}"):
        progress.keras_progress(verbose)


@pytest.mark.slow
def test_fit_into_a_file_writes_no_control_codes(tiny_backbone_path, small_config, capsys,
                                                caplog):
    import tensorflow as tf

    from tfhub_ft import FineTuner

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(16) % 2))
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(fine_tune_epochs=1))
    with caplog.at_level(logging.INFO, logger="tfhub_ft.progress"):
        tuner.fit(dataset, validation=dataset.take(4), class_names=["cat", "dog"])
    # pytest's captured stdout is not a terminal, as a log file is not.
    out = capsys.readouterr().out
    assert not any(code in out for code in "\r\b\x1b"), out[:500]
    lines = [r.getMessage().split(":")[0] for r in caplog.records
             if r.name == "tfhub_ft.progress"]
    assert lines == ["head epoch 1/2", "head epoch 2/2", "fine_tune epoch 1/1"]

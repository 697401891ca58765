"""How training shows its progress: Keras's bars where they redraw, log lines elsewhere.

Keras 3 draws its progress bars with carriage returns, backspaces and ANSI
colours whenever it runs on a POSIX system, a terminal or not
(`keras.src.utils.progbar.Progbar._dynamic_display`), so a log file or a
CI log of `fit` fills with control codes. "auto" here keeps the bars where
they redraw (a terminal, a Jupyter notebook, PyCharm's console) and, elsewhere,
turns them off for one plain line per epoch on the `tfhub_ft.progress`
logger at INFO.
"""

import logging
import os
import sys
import time

import keras

logger = logging.getLogger(__name__)

VERBOSE_VALUES = ("auto", 0, 1, 2)

_PHASE_HEADERS = {"head": "Phase 1: the head, backbone frozen",
                  "fine_tune": "Phase 2: fine-tuning the top blocks"}


def bars_redraw():
    """Whether a progress bar drawn on stdout redraws in place.

    True on a terminal (stdout is a tty), in a Jupyter kernel and in
    PyCharm's console; False when stdout is a file or a pipe.
    """
    isatty = getattr(sys.stdout, "isatty", None)
    return bool((isatty is not None and isatty()) or "ipykernel" in sys.modules
                or "PYCHARM_HOSTED" in os.environ)


def keras_progress(verbose):
    """The Keras `verbose` and the progress callbacks of a phase.

    Args:
        verbose: "auto": Keras's bars, each phase headed by a log line,
            where bars redraw (`bars_redraw`); elsewhere no bars and one
            INFO line per epoch (phase, epoch, metrics, seconds). 0 (or
            False): nothing. 1, 2 (or True): Keras's own output, as
            `keras.Model.fit` draws it.

    Returns:
        (verbose for `keras.Model.fit`: 0, 1 or 2; a function from the
        phase name, "head" or "fine_tune", to a list of Keras callbacks).

    Raises:
        ValueError: for any other `verbose`.
    """
    if verbose == "auto":
        if bars_redraw():
            return 1, lambda phase: [_PhaseHeader(phase)]
        return 0, lambda phase: [_EpochLog(phase)]
    if isinstance(verbose, (bool, int)) and verbose in (0, 1, 2):
        return int(verbose), lambda phase: []
    raise ValueError(
        f"Invalid value for `verbose`. Expected one of {VERBOSE_VALUES}: \"auto\" for "
        "progress bars on a terminal and one log line per epoch elsewhere, 0 for none. "
        f"Received: verbose={verbose!r}")


class ProgressCallback(keras.callbacks.Callback):
    """The base of the callbacks `keras_progress` makes: a phase's
    checkpoint is saved before they run (`checkpoints.PhaseCheckpoint`), so
    an epoch's line means that epoch is saved."""


class _PhaseHeader(ProgressCallback):
    """Logs which phase the Keras progress bars below it belong to.

    (Keras's own bars say "Epoch 1/2" and nothing of the phase.)
    """

    def __init__(self, phase):
        super().__init__()
        self.phase = phase

    def on_train_begin(self, logs=None):
        logger.info("%s (%s epochs)", _PHASE_HEADERS.get(self.phase, self.phase),
                    self.params.get("epochs"))


class _EpochLog(ProgressCallback):
    """Logs one line per epoch: the phase, the epoch, its metrics and seconds."""

    def __init__(self, phase):
        super().__init__()
        self.phase = phase
        self.start = None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = " ".join(f"{key}={value:.4f}" for key, value in (logs or {}).items()
                           if isinstance(value, (int, float)))
        seconds = time.perf_counter() - (self.start or time.perf_counter())
        logger.info("%s epoch %d/%s: %s (%.1f s)", self.phase, epoch + 1,
                    self.params.get("epochs"), metrics, seconds)

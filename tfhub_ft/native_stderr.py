"""Lines that native code writes straight to stderr, filtered.

TensorFlow's and LiteRT's C++ code print some lines with no logger a
Python caller can turn down: absl's lines before its log is initialised
(abseil/abseil-cpp#1957), the TFLite converter's "fully_quantize: 0,
inference_type: 6, ..." (tensorflow/tensorflow#58119) and LiteRT's "INFO:
Created TensorFlow Lite XNNPACK delegate for CPU.". `filtered` catches
file descriptor 2 around such a call and writes back what is not known
noise, and filters the Python-level `sys.stderr` too (the converter's
Python code writes a line per op it has no stack trace for), which in a
notebook or under pytest is not file descriptor 2. `import_tensorflow_quietly`
uses it around TensorFlow's own import, so TensorFlow is imported only there.
`quiet_saving_logs` turns down the Python loggers `tf.saved_model.save`
fills.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading

# Lines that TensorFlow's runtime logs once per Grappler run (the graph
# optimizer starts a session of its own), for `glog_line`.
GRAPPLER_SESSION = (r"(devices|single_machine)",
                    r"(Number of eligible GPUs |Starting new session$)")


def glog_line(source, message):
    """A regular expression (str) for a C++ log line of TensorFlow's runtime
    from `source`.cc starting with `message` (both regular expressions):
    "I0000 00:00:1796079807.187769    9473 devices.cc:67] Number of ...".
    INFO and WARNING lines only."""
    return rf"[IW]\d{{4}} [\d:.]+ +\d+ (?:{source})\.cc:\d+\] (?:{message})"


# C++ log lines of TensorFlow's start-up (absl, before its log is
# initialised, ignores TF_CPP_MIN_LOG_LEVEL), and the messages that only say
# that this machine has no GPU: cuInit's "UNKNOWN ERROR (303)" (no driver)
# or "no CUDA-capable device"; another cuInit error (a driver mismatch on a
# GPU machine) is shown.
TENSORFLOW_STARTUP_NOISE = re.compile(
    r"^([IW]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog|"
    r"To enable the following instructions:|"
    r"E\d{4} .*cuInit.*(UNKNOWN ERROR \(303\)|CUDA_ERROR_NO_DEVICE|no CUDA-capable)|"
    r"E\d{4} .*(cuda_dnn|cuda_blas|cuda_fft)\.cc.*Unable to register)")


def import_tensorflow_quietly(log=None):
    """Imports TensorFlow and queries its devices with the start-up lines
    filtered out (`TENSORFLOW_STARTUP_NOISE`, passed to `log` when given).

    Importing TensorFlow prints 7-9 lines that a caller cannot turn down:
    they come before absl's logging is initialised (abseil/abseil-cpp#1957),
    and the first device query prints "failed call to cuInit" as an ERROR on
    a machine without a GPU. Other lines are written back. Does nothing when
    TensorFlow is already imported: its lines are printed by then, and the
    caller's TensorFlow is not this function's to change.
    """
    if "tensorflow" in sys.modules:
        return
    with filtered(TENSORFLOW_STARTUP_NOISE, log, python_stderr=False):
        import tensorflow as tf
        tf.config.list_physical_devices()


# File descriptor 2 belongs to the whole process: one block at a time, or
# the second to end would restore the first one's file.
_LOCK = threading.RLock()


@contextlib.contextmanager
def filtered(noise, log=None, python_stderr=True):
    """Catches what is written to file descriptor 2 inside the block.

    After the block, lines matching `noise` are dropped (passed to `log`
    when given, e.g. a logger's `debug`) and the others written back to
    stderr, byte for byte and in their order. If the block raises, every
    line is written back: the noise may explain the error. Blocks in other
    threads wait for this one (stderr is the process's), and what other
    threads write meanwhile is caught with it. Without a stderr to catch
    or a temporary file to catch it in, the block runs unfiltered. A
    process that dies inside the block (a native abort) loses what the
    block printed.

    Args:
        noise: A compiled regular expression, matched (`re.match`) against
            each line (decoded as UTF-8, without its line ending).
        log: None, or a function of one line (str) for the dropped lines.
        python_stderr: Whether `sys.stderr` is filtered too. False where
            the block may create logging handlers (an import): they would
            keep the filtering stream for the rest of the process.
    """
    with _LOCK:
        _flush()
        catcher = _catcher()
        if catcher is None:
            yield
            return
        saved, caught = catcher
        failed = True
        try:
            try:
                os.dup2(caught.fileno(), 2)
                with (_python_stderr_filtered(noise, log) if python_stderr
                      else contextlib.nullcontext()):
                    yield
                failed = False
            finally:
                try:
                    _flush()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                _write_back(caught, noise, log, everything=failed)
        finally:
            caught.close()


@contextlib.contextmanager
def _python_stderr_filtered(noise, log):
    """`sys.stderr` replaced for the block by a stream that drops (logs) the
    noise lines written to it and passes the rest on, at once."""
    target = sys.stderr
    if target is None:
        yield
        return
    stream = _FilteringStream(target, noise, log)
    sys.stderr = stream
    try:
        yield
    finally:
        if sys.stderr is stream:
            sys.stderr = target
        stream.close_line()


class _FilteringStream:
    """A text stream that passes whole lines on to `target` unless `noise`
    matches them; everything else (encoding, fileno, ...) is `target`'s."""

    def __init__(self, target, noise, log):
        self._target, self._noise, self._log = target, noise, log
        self._pending = ""

    def write(self, text):
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._pass(line + "\n")
        return len(text)

    def flush(self):
        self._target.flush()

    def close_line(self):
        if self._pending:
            self._pass(self._pending)
            self._pending = ""

    def _pass(self, line):
        if not _dropped(line.rstrip("\r\n"), self._noise, self._log):
            self._target.write(line)

    def __getattr__(self, name):
        return getattr(self._target, name)


def _catcher():
    """(a copy of fd 2, a temporary file), or None when either is missing."""
    try:
        saved = os.dup(2)
    except OSError:
        return None
    try:
        return saved, tempfile.TemporaryFile()
    except OSError:
        os.close(saved)
        return None


def _write_back(caught, noise, log, everything):
    caught.seek(0)
    for line in caught.read().splitlines(keepends=True):
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if everything or not _dropped(text, noise, log):
            try:
                while line:
                    line = line[os.write(2, line):]
            except OSError:
                return  # stderr went away: nowhere to write


def _dropped(text, noise, log):
    """Whether a line (without its ending) is noise; if so, it goes to `log`."""
    if not noise.match(text):
        return False
    if log is not None:
        log(text)
    return True


def _flush():
    # Python's own buffered writes must land on the side of the switch they
    # were made on (sys.stderr is None under pythonw, or may be closed).
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def quiet_saving_logs(absl_level=logging.WARNING):
    """Hides the INFO lines TensorFlow logs while saving, warnings stay.

    `tf.saved_model.save` logs through absl's logger (the "absl" Python
    logger, not "tensorflow"): one INFO line per signature listing every
    captured hub variable it renames (input names that start with a digit),
    thousands of characters, and lines about untraced functions and
    fingerprints. Both loggers are held at WARNING for the save, absl's
    at `absl_level` where that is higher (the TFLite converter's own
    per-conversion warnings go through it: `tflite.convert`).
    """
    loggers = {logging.getLogger("tensorflow"): logging.WARNING,
               logging.getLogger("absl"): absl_level}
    levels = [each.level for each in loggers]
    for (each, quiet), level in zip(loggers.items(), levels):
        each.setLevel(max(level, quiet))
    try:
        yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)

"""Lines that native code writes straight to stderr, filtered.

TensorFlow's and LiteRT's C++ code print some lines with no logger a
Python caller can turn down: absl's lines before its log is initialised
(abseil/abseil-cpp#1957), the TFLite converter's "fully_quantize: 0,
inference_type: 6, ..." (tensorflow/tensorflow#58119) and LiteRT's "INFO:
Created TensorFlow Lite XNNPACK delegate for CPU.". `filtered` catches
file descriptor 2 around such a call and writes back what is not known
noise. No TensorFlow import here: the command uses it around importing
TensorFlow.
"""

import contextlib
import os
import sys
import tempfile
import threading

# File descriptor 2 belongs to the whole process: one block at a time, or
# the second to end would restore the first one's file.
_LOCK = threading.RLock()


@contextlib.contextmanager
def filtered(noise, log=None):
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
        if everything or not noise.match(text):
            try:
                while line:
                    line = line[os.write(2, line):]
            except OSError:
                return  # stderr went away: nowhere to write
        elif log is not None:
            log(text)


def _flush():
    # Python's own buffered writes must land on the side of the switch they
    # were made on (sys.stderr is None under pythonw, or may be closed).
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass

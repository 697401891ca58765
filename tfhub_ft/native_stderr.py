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


@contextlib.contextmanager
def filtered(noise, log=None):
    """Catches what is written to file descriptor 2 inside the block.

    After the block, lines matching `noise` are dropped (passed to `log`
    when given, e.g. a logger's `debug`) and the others written back to
    stderr in their order. If the block raises, every line is written back:
    the noise may explain the error.

    Args:
        noise: A compiled regular expression, matched (`re.match`) against
            each line.
        log: None, or a function of one line (str) for the dropped lines.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    caught = tempfile.TemporaryFile()
    failed = True
    try:
        os.dup2(caught.fileno(), 2)
        yield
        failed = False
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        caught.seek(0)
        text = caught.read().decode("utf-8", "replace")
        caught.close()
        kept = []
        for line in text.splitlines():
            if failed or not noise.match(line):
                kept.append(line)
            elif log is not None:
                log(line)
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
            sys.stderr.flush()

"""native_stderr.filtered: native lines on file descriptor 2, filtered."""

import os
import re

import pytest

from tfhub_ft import native_stderr

NOISE = re.compile(r"^(fully_quantize: |INFO: Created TensorFlow Lite XNNPACK)")


def test_noise_goes_to_the_log_and_the_rest_back_to_stderr(capfd):
    logged = []
    with native_stderr.filtered(NOISE, logged.append):
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n")
        os.write(2, b"a real problem\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == "a real problem\n"
    assert logged == ["fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32",
                      "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."]
    # Written to stderr after the block as before it.
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_everything_comes_back_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="conversion failed"):
        with native_stderr.filtered(NOISE):
            os.write(2, b"fully_quantize: 1, inference_type: 9\n")
            raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == "fully_quantize: 1, inference_type: 9\n"


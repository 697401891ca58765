"""native_stderr.filtered: native lines on file descriptor 2, filtered."""

import os
import re
import subprocess
import sys

import pytest

from tfhub_ft import native_stderr

NOISE = re.compile(r"^(fully_quantize: |INFO: Created TensorFlow Lite XNNPACK)")


def test_noise_goes_to_the_log_and_the_rest_back_to_stderr_in_order(capfd):
    def log(line):
        os.write(2, f"DEBUG {line}\n".encode())

    with native_stderr.filtered(NOISE, log):
        os.write(2, b"a real problem\n")
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n")
        os.write(2, b"another\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == (
        "a real problem\n"
        "DEBUG fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n"
        "another\n"
        "DEBUG INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    # Written to stderr after the block as before it.
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_kept_lines_come_back_byte_for_byte(capfdbinary):
    written = b"not utf-8 \xff\xfe\r\nfully_quantize: 1\nprogress\rdone\nno newline at the end"
    with native_stderr.filtered(NOISE):
        os.write(2, written)
    assert capfdbinary.readouterr().err == written.replace(b"fully_quantize: 1\n", b"")


def test_everything_comes_back_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="conversion failed"):
        with native_stderr.filtered(NOISE):
            os.write(2, b"fully_quantize: 1, inference_type: 9\n")
            raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == "fully_quantize: 1, inference_type: 9\n"


def test_without_a_temporary_file_the_block_runs_unfiltered(monkeypatch, capfd):
    class NoTemporaryFolder:
        @staticmethod
        def TemporaryFile():
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(native_stderr, "tempfile", NoTemporaryFolder)
    with native_stderr.filtered(NOISE):
        os.write(2, b"fully_quantize: 0, inference_type: 6\n")
    assert capfd.readouterr().err == "fully_quantize: 0, inference_type: 6\n"


@pytest.mark.slow
def test_with_stderr_closed_the_block_runs():
    script = ("import os, re, sys\n"
              "sys.stderr = None\n"
              "os.close(2)\n"
              "from tfhub_ft import native_stderr\n"
              "with native_stderr.filtered(re.compile('x')):\n"
              "    print('ran', flush=True)\n"
              "print('after', flush=True)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert (result.returncode, result.stdout) == (0, "ran\nafter\n")


def test_python_level_writes_are_filtered_where_sys_stderr_is_not_fd_2(monkeypatch):
    import io
    notebook = io.StringIO()  # a notebook's stream: not file descriptor 2
    monkeypatch.setattr(sys, "stderr", notebook)
    logged = []
    with native_stderr.filtered(NOISE, logged.append):
        sys.stderr.write("kept\nfully_quantize: 0, inference_")
        sys.stderr.write("type: 6\npartial line")
    assert sys.stderr is notebook
    assert notebook.getvalue() == "kept\npartial line"
    assert logged == ["fully_quantize: 0, inference_type: 6"]


def _first_use_stderr(**env):
    """stderr of a process that uses a public name first, then TensorFlow."""
    script = ("import sys\n"
              "from tfhub_ft import FineTuneConfig\n"
              "assert 'tensorflow' not in sys.modules  # the config needs none\n"
              "from tfhub_ft import FineTuner\n"
              "import tensorflow as tf\n"
              "print(int(tf.constant(1) + 1))\n")
    from tests import fixtures
    result = fixtures.run_python(
        script, os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 120, **env)
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr
    return result.stderr


@pytest.mark.slow
def test_the_first_public_name_imports_tensorflow_without_its_start_up_lines():
    quiet = _first_use_stderr()
    for line in ("absl::InitializeLog", "cpu_feature_guard", "cuInit", "cudart_stub"):
        assert line not in quiet, quiet
    # absl's line before its log is initialised is printed on every machine.
    assert "absl::InitializeLog" in _first_use_stderr(TF_CPP_MIN_LOG_LEVEL="0")


def test_an_imported_tensorflow_is_left_alone(monkeypatch):
    import tensorflow  # noqa: F401  (imported before, as a caller's would be)
    monkeypatch.setattr(native_stderr, "filtered", None)  # would fail if called
    native_stderr.import_tensorflow_quietly()


def test_start_up_noise_is_the_no_gpu_kind_only():
    noise = native_stderr.TENSORFLOW_STARTUP_NOISE
    line = "E0000 00:00:1796094913.789641   20226 cuda_platform.cc:52] failed call to cuInit: "
    assert noise.match(line + "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
    # A GPU machine whose driver does not match says so.
    assert not noise.match(line + "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: system has unsupported "
                                  "display driver / cuda driver combination")


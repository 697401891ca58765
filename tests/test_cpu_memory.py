"""cpu_memory: TensorFlow's CPU memory pooled from the package's import."""

import os
import subprocess
import sys

import pytest

from tfhub_ft import cpu_memory

VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"


def test_request_sets_the_variable_only_when_unset(monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    cpu_memory.request_pooling()
    assert cpu_memory.pooling_requested()
    monkeypatch.setenv(VARIABLE, "false")
    cpu_memory.request_pooling()
    assert not cpu_memory.pooling_requested()


@pytest.mark.parametrize("value, requested", [
    ("true", True), ("1", True), ("TRUE", True), (" true ", False),
    ("false", False), ("False", False), ("0", False), ("", False), ("yes", False)])
def test_requested_reads_the_variable_as_tensorflow_does(monkeypatch, value, requested):
    monkeypatch.setenv(VARIABLE, value)
    assert cpu_memory.pooling_requested() is requested


@pytest.mark.skipif(not cpu_memory.pooling_requested(),
                    reason="TF_CPU_ALLOCATOR_USE_BFC turned off in the environment")
def test_the_test_process_is_pooled():
    # conftest imports tfhub_ft before TensorFlow sets up its devices, as a
    # script that starts with `from tfhub_ft import FineTuner` does.
    assert cpu_memory.is_pooled()


def test_the_note_says_how_to_pool_once(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_noted", False)
    monkeypatch.setattr(cpu_memory, "is_pooled", lambda: False)
    monkeypatch.setenv(VARIABLE, "true")
    lines = []
    cpu_memory.note_if_unpooled(lines.append)
    cpu_memory.note_if_unpooled(lines.append)
    assert lines == [
        "TensorFlow's CPU memory is not pooled: TensorFlow set up its devices (a tensor, an "
        "op or a device query) before tfhub_ft was imported, so TF_CPU_ALLOCATOR_USE_BFC=true "
        "came too late. Import tfhub_ft before using TensorFlow, or set "
        "TF_CPU_ALLOCATOR_USE_BFC=true in the environment (training was 1.4-1.8x faster "
        "with it on a 2-core VM); TF_CPU_ALLOCATOR_USE_BFC=false silences this."]


@pytest.mark.parametrize("value", ["false", "0"])
def test_no_note_when_the_user_turned_the_pool_off(monkeypatch, value):
    monkeypatch.setattr(cpu_memory, "_noted", False)
    monkeypatch.setattr(cpu_memory, "is_pooled", lambda: False)
    monkeypatch.setenv(VARIABLE, value)
    lines = []
    cpu_memory.note_if_unpooled(lines.append)
    assert lines == []


def _run(code, **environment):
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    env.update(environment, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.slow
def test_in_fresh_processes():
    # Imported first, tfhub_ft pools; after TensorFlow set up its devices
    # (a tensor, or only a device query) it is too late; "false" keeps
    # TensorFlow's default.
    check = "from tfhub_ft import cpu_memory; print(cpu_memory.is_pooled())"
    assert _run(f"import tfhub_ft, tensorflow as tf; tf.zeros([1]); {check}") == ["True"]
    assert _run(f"import tensorflow as tf; import tfhub_ft; tf.zeros([1]); {check}") == [
        "True"]
    assert _run(f"import tensorflow as tf; tf.zeros([1]); import tfhub_ft; {check}") == [
        "False"]
    assert _run("import tensorflow as tf; tf.config.list_logical_devices(); "
                f"import tfhub_ft; {check}") == ["False"]
    assert _run(f"import tfhub_ft, tensorflow as tf; tf.zeros([1]); {check}",
                TF_CPU_ALLOCATOR_USE_BFC="false") == ["False"]

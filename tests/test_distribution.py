"""The whole recipe under MirroredStrategy (2 logical CPUs) and on two workers.

Each configuration runs in processes of its own (tests/distributed_run.py):
logical devices and TF_CONFIG must be set before TensorFlow starts. The
two-worker run is also killed in phase 2 (one worker SIGKILLed, then the
other) and restarted, and must end as the uninterrupted one.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import distributed_run
from tests.resume_checks import assert_same_variables, export_leftovers, read_state
from tfhub_ft import FineTuneConfig, FineTuner, distribution

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SCRIPT = os.path.join(ROOT, "tests", "distributed_run.py")


def environment(**extra):
    env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def arguments(backbone, folders, output_dir, strategy, logical_cpus=1):
    train, validation, _, _ = folders
    return [sys.executable, SCRIPT, backbone, train, validation, str(output_dir), strategy,
            str(logical_cpus)]


def result(output_dir):
    with open(os.path.join(output_dir, "result.json")) as file:
        return json.load(file)


def weights(output_dir):
    with np.load(os.path.join(output_dir, "weights.npz")) as saved:
        return [saved[name] for name in saved.files]


def assert_close_weights(actual, expected):
    assert len(actual) == len(expected)
    for actual_weight, expected_weight in zip(actual, expected):
        np.testing.assert_allclose(actual_weight, expected_weight, atol=1e-5, rtol=1e-5)


def assert_trained_both_phases(run):
    config = FineTuneConfig(**distributed_run.CONFIG)
    assert len(run["history"]["head"]["loss"]) == config.head_epochs
    assert len(run["history"]["fine_tune"]["loss"]) == config.fine_tune_epochs
    assert run["split"], "the backbone should be split below the unfrozen blocks"
    assert run["validation_metrics"]["count"] == 12


@pytest.fixture(scope="module")
def mirrored(tiny_backbone_path, image_folders, tmp_path_factory):
    """Output folder of a run under MirroredStrategy on 2 logical CPU devices.

    Deterministic, as the two-worker runs: the same kernels, so that the two
    can be compared bit for bit.
    """
    output_dir = tmp_path_factory.mktemp("mirrored")
    completed = subprocess.run(
        arguments(tiny_backbone_path, image_folders, output_dir, "mirrored", 2)
        + ["--deterministic"],
        env=environment(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return str(output_dir)


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(
        mirrored, tiny_backbone_path, image_folders):
    run = result(mirrored)
    assert run["replicas"] == 2
    assert_trained_both_phases(run)
    assert os.path.isdir(os.path.join(mirrored, "export"))
    # The global batch is split over the replicas: the same steps as on one
    # device, up to the order of floating-point sums.
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=FineTuneConfig(**distributed_run.CONFIG))
    history = tuner.fit(train, validation, verbose=0)
    np.testing.assert_allclose(run["history"]["fine_tune"]["loss"],
                               history["fine_tune"]["loss"], rtol=1e-5)
    assert_close_weights(weights(mirrored), tuner.model.get_weights())


# Two workers of one MultiWorkerMirroredStrategy cluster on 127.0.0.1. Every
# wait on them is bounded: a worker whose partner died waits for it forever,
# so when one fails (or is killed) the other is killed too.

WORKER_TIMEOUT = 300  # seconds, for any one launch
KILL_AFTER = 2  # phase-2 epochs done when the kill test kills worker 1


def free_ports(count):
    """`count` different ports free on 127.0.0.1 (each probe is held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def worker_outputs(root):
    return [os.path.join(root, f"worker-{index}") for index in range(2)]


def worker_logs(root, launch):
    return [os.path.join(root, f"{launch}-worker-{index}.log") for index in range(2)]


def start_workers(backbone, folders, root, launch):
    """Starts the two workers of a deterministic run with the work dir root/work.

    Each launch takes fresh ports. Worker I writes root/worker-I (the chief's
    export among it), logs to root/LAUNCH-worker-I.log (a file: a pipe nobody
    reads while a test polls could fill and stop a worker) and keeps its
    temporary files in root/tmp.

    Returns:
        The two `subprocess.Popen`s, the chief first.
    """
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    temporary = os.path.join(root, "tmp")
    os.makedirs(temporary, exist_ok=True)
    options = [f"--work_dir={os.path.join(root, 'work')}", "--deterministic"]
    workers = []
    try:
        for index, (output_dir, log) in enumerate(zip(worker_outputs(root),
                                                      worker_logs(root, launch))):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            with open(log, "w") as log_file:
                workers.append(subprocess.Popen(
                    arguments(backbone, folders, output_dir, "multi_worker") + options,
                    env=environment(TF_CONFIG=config, TMPDIR=temporary),
                    stdout=log_file, stderr=subprocess.STDOUT))
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers):
    """Kills the workers still running and reaps them all."""
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
    for worker in workers:
        worker.wait(timeout=60)


def read_logs(root, launch):
    logs = []
    for log in worker_logs(root, launch):
        with open(log) as file:
            logs.append(file.read())
    return logs


def run_workers(backbone, folders, root, launch):
    """Runs both workers (`start_workers`) to the end; returns their logs.

    Waits until both ended, one failed, or WORKER_TIMEOUT passed, then kills
    what still runs, and asserts that both succeeded.
    """
    workers = start_workers(backbone, folders, root, launch)
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while time.monotonic() < deadline:
            codes = [worker.poll() for worker in workers]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.1)
    finally:
        stop_workers(workers)
    logs = read_logs(root, launch)
    codes = [worker.returncode for worker in workers]
    # A worker that failed by itself first, one this killed (-9) after.
    for index in sorted(range(len(workers)), key=lambda index: codes[index] == -signal.SIGKILL):
        assert codes[index] == 0, (
            f"worker {index} exited with {codes[index]} (all: {codes}; -9: killed after "
            f"{WORKER_TIMEOUT} s or when its partner failed)\n{logs[index][-3000:]}")
    return logs


@pytest.fixture(scope="module")
def two_workers(tiny_backbone_path, image_folders, tmp_path_factory):
    """Root folder of an uninterrupted two-worker run (`start_workers`)."""
    root = str(tmp_path_factory.mktemp("two-workers"))
    run_workers(tiny_backbone_path, image_folders, root, "run")
    return root


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_exports(two_workers, mirrored):
    outputs = worker_outputs(two_workers)
    chief, other = result(outputs[0]), result(outputs[1])
    assert chief["chief"] and not other["chief"]
    assert chief["replicas"] == other["replicas"] == 2
    assert_trained_both_phases(chief)
    assert os.path.isdir(os.path.join(outputs[0], "export"))
    assert other["exported"] is None and not os.path.exists(os.path.join(outputs[1], "export"))
    assert [name for name in os.listdir(os.path.join(two_workers, "tmp"))
            if name.startswith("tfhub_ft_worker_export")] == []
    # The two workers hold the same model, and it is the one a single worker
    # trains with the same global batch over the same number of replicas.
    assert_close_weights(weights(outputs[1]), weights(outputs[0]))
    assert_close_weights(weights(outputs[0]), weights(mirrored))
    for phase in ("head", "fine_tune"):
        np.testing.assert_allclose(chief["history"][phase]["loss"],
                                   result(mirrored)["history"][phase]["loss"], rtol=1e-5)


@pytest.mark.slow
def test_killed_worker_and_restarted_job_resume_in_phase_two_with_the_same_weights(
        two_workers, tiny_backbone_path, image_folders, tmp_path):
    root, epochs = str(tmp_path), distributed_run.CONFIG["fine_tune_epochs"]
    work_dir, outputs = os.path.join(root, "work"), worker_outputs(root)
    # Worker 1 is SIGKILLed once the chief's state says phase 2 has done
    # KILL_AFTER epochs; the chief, left waiting for it, is killed after.
    workers = start_workers(tiny_backbone_path, image_folders, root, "killed")
    killed_worker = False
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while time.monotonic() < deadline and all(w.poll() is None for w in workers):
            state = read_state(work_dir)
            if (state and state["phase"] == "fine_tune"
                    and state["phases"]["fine_tune"]["epochs_done"] >= KILL_AFTER):
                workers[1].send_signal(signal.SIGKILL)
                killed_worker = True
                break
            time.sleep(0.02)
    finally:
        stop_workers(workers)
    killed_logs = read_logs(root, "killed")
    assert killed_worker and workers[1].returncode == -signal.SIGKILL, (
        "worker 1 ended, or never reached phase 2, before it was killed\n"
        + killed_logs[1][-3000:])
    assert workers[0].returncode != 0, "the chief finished without worker 1"

    killed = read_state(work_dir)
    assert killed["phases"]["head"]["finished"]
    done = killed["phases"]["fine_tune"]["epochs_done"]
    assert KILL_AFTER <= done < epochs
    assert not killed["phases"]["fine_tune"]["finished"]
    # Nothing was exported, not even in part, by either worker.
    for output_dir in outputs:
        assert export_leftovers(output_dir) == []
        assert not os.path.exists(os.path.join(output_dir, "result.json"))
    assert [name for name in os.listdir(os.path.join(root, "tmp"))
            if name.startswith("tfhub_ft_worker_export")] == []

    # The job restarted: both workers, the same commands, new ports.
    logs = run_workers(tiny_backbone_path, image_folders, root, "resumed")
    for log in logs:
        assert "Phase head finished in an earlier run" in log
        assert f"Resuming phase fine_tune at epoch {done + 1} of {epochs}" in log
    resumed = read_state(work_dir)
    assert [(r["phase"], r["initial_epoch"]) for r in resumed["resumed"]] == [("fine_tune", done)]
    assert resumed["phase"] == "done"
    assert sorted(os.listdir(work_dir)) == [
        ".lock", "fine_tune-final.npz", "head-final.npz", "state.json"]
    # Epoch by epoch the same losses, then the same weights on both workers,
    # as the two-worker run that was never interrupted.
    expected = read_state(os.path.join(two_workers, "work"))
    for phase in ("head", "fine_tune"):
        assert resumed["phases"][phase]["history"] == expected["phases"][phase]["history"]
    expected_outputs = worker_outputs(two_workers)
    assert_same_variables(os.path.join(outputs[0], "export"),
                          os.path.join(expected_outputs[0], "export"))
    assert not os.path.exists(os.path.join(outputs[1], "export"))
    for output_dir in outputs:
        for actual, expected_weight in zip(weights(output_dir), weights(expected_outputs[0]),
                                           strict=True):
            np.testing.assert_array_equal(actual, expected_weight)


def test_tpu_strategy_without_a_tpu_fails_fast():
    with pytest.raises(ValueError, match="No TPU found"):
        distribution.get_strategy("tpu")


def test_keras_fit_workaround_fails_loudly_when_keras_changes(monkeypatch):
    import keras
    import tensorflow as tf

    from tfhub_ft import _keras_fit_workaround

    model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        # As if a Keras release had renamed the method the workaround patches.
        monkeypatch.setattr(model, "_maybe_symbolic_build", None, raising=False)
        with pytest.raises(RuntimeError, match=r"keras-team/keras#20585.*Keras 3\.15"):
            with _keras_fit_workaround.keras_fit_under_strategy(model, None):
                pass


def test_keras_fit_workaround_names_an_unverified_keras(monkeypatch, caplog):
    import keras
    import tensorflow as tf

    from tfhub_ft import _keras_fit_workaround

    model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        with _keras_fit_workaround.keras_fit_under_strategy(model, None):
            pass
    assert "verified on Keras 3.15; this is Keras 3.99.0" in caplog.text


def test_map_batches_traces_once_per_call_without_retracing_warnings():
    import logging

    import tensorflow as tf

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Records()
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(handler)
    traces = []
    try:
        # Small, odd-sized inputs (a last batch of another size), a new
        # function each call, as the frozen passes and predictions map them.
        for size in (5, 3, 7, 2, 9, 1, 6, 4):
            def double(batch):
                traces.append(batch.shape[0])
                return batch * 2
            dataset = tf.data.Dataset.from_tensor_slices(
                np.arange(size, dtype=np.float32)).batch(4)
            outputs = list(distribution.map_batches(double, dataset))
            np.testing.assert_array_equal(np.concatenate(outputs), np.arange(size) * 2)
    finally:
        tf_logger.removeHandler(handler)
    assert [m for m in handler.messages if "retracing" in m] == []
    assert traces == [None] * 8  # one trace per call, batch dimension unknown


def test_map_batches_reuses_the_trace_of_the_same_function():
    import tensorflow as tf

    traces = []

    def double(batch):
        traces.append(batch.shape[0])
        return batch * 2

    # The training images, then the validation images: the same structure.
    kept = {}
    for size in (5, 3):
        dataset = tf.data.Dataset.from_tensor_slices(np.ones([size, 2], np.float32)).batch(4)
        outputs = np.concatenate(list(distribution.map_batches(double, dataset, kept)))
        np.testing.assert_array_equal(outputs, np.full([size, 2], 2.0))
    assert traces == [None] and len(kept) == 1
    # Another structure is another trace; without the dict, every call traces.
    list(distribution.map_batches(double, tf.data.Dataset.from_tensor_slices(
        np.ones([3, 5], np.float32)).batch(4), kept))
    assert traces == [None, None]
    list(distribution.map_batches(double, tf.data.Dataset.from_tensor_slices(
        np.ones([3, 5], np.float32)).batch(4)))
    assert traces == [None, None, None]

"""The whole recipe under MirroredStrategy (2 logical CPUs) and on two workers.

Each configuration runs in processes of its own (tests/distributed_run.py):
logical devices and TF_CONFIG must be set before TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import distributed_run
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
    """Output folder of a run under MirroredStrategy on 2 logical CPU devices."""
    output_dir = tmp_path_factory.mktemp("mirrored")
    completed = subprocess.run(
        arguments(tiny_backbone_path, image_folders, output_dir, "mirrored", 2),
        env=environment(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return str(output_dir)


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


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_train_together_and_only_the_chief_exports(
        mirrored, tiny_backbone_path, image_folders, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    outputs = [tmp_path / f"worker-{index}" for index in range(2)]
    workers = []
    try:
        for index, output_dir in enumerate(outputs):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            workers.append(subprocess.Popen(
                arguments(tiny_backbone_path, image_folders, output_dir, "multi_worker"),
                env=environment(TF_CONFIG=config), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True))
        errors = [worker.communicate(timeout=300)[1] for worker in workers]
    finally:
        # A worker whose partner failed waits for it forever.
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, error in zip(workers, errors):
        assert worker.returncode == 0, error[-3000:]

    chief, other = result(outputs[0]), result(outputs[1])
    assert chief["chief"] and not other["chief"]
    assert chief["replicas"] == other["replicas"] == 2
    assert_trained_both_phases(chief)
    assert os.path.isdir(os.path.join(outputs[0], "export"))
    assert other["exported"] is None and not os.path.exists(os.path.join(outputs[1], "export"))
    # The two workers hold the same model, and it is the one a single worker
    # trains with the same global batch over the same number of replicas.
    assert_close_weights(weights(outputs[1]), weights(outputs[0]))
    assert_close_weights(weights(outputs[0]), weights(mirrored))
    for phase in ("head", "fine_tune"):
        np.testing.assert_allclose(chief["history"][phase]["loss"],
                                   result(mirrored)["history"][phase]["loss"], rtol=1e-5)


def test_tpu_strategy_without_a_tpu_fails_fast():
    with pytest.raises(ValueError, match="No TPU found"):
        distribution.get_strategy("tpu")
    assert distribution.is_chief()

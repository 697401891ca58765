"""Checkpoints that resume: kill a run in phase 2, rerun it, get the same weights."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.resume_checks import assert_same_variables, export_leftovers, read_state
from tfhub_ft import FineTuneConfig, arrays, checkpoints

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
FLOWERS = os.path.join(ROOT, "examples", "flowers.py")
FINE_TUNE_EPOCHS = 30


def flowers_command(backbone, folders, work_dir, export_dir):
    """The example's command line for a small, deterministic run.

    Phase 2 has many short epochs, so that a kill lands in it reliably.
    """
    train, validation, _, _ = folders
    command = [
        sys.executable, FLOWERS, f"--hub_url={backbone}", f"--image_dir={train}",
        f"--validation_dir={validation}", "--image_size=32", "--batch_size=8",
        "--head_epochs=2", f"--fine_tune_epochs={FINE_TUNE_EPOCHS}", "--unfreeze_blocks=2",
        "--head_learning_rate=0.01", "--fine_tune_learning_rate=0.01",
        "--early_stopping_patience=1000", "--deterministic", f"--export_dir={export_dir}"]
    return command + ([f"--work_dir={work_dir}"] if work_dir else [])


def environment():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    # Each process leaves the other core to whatever else shares the
    # machine (the lock test runs two at once).
    env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return env


def run(command):
    result = subprocess.run(command, env=environment(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def uninterrupted(tiny_backbone_path, image_folders, tmp_path_factory):
    """(export dir, state) of a run with a work_dir that nothing interrupts."""
    root = tmp_path_factory.mktemp("uninterrupted")
    export_dir = str(root / "export")
    run(flowers_command(tiny_backbone_path, image_folders, str(root / "work"), export_dir))
    return export_dir, read_state(str(root / "work"))


@pytest.mark.slow
def test_killed_run_resumes_in_phase_two_and_ends_with_the_same_weights(
        tiny_backbone_path, image_folders, uninterrupted, tmp_path):
    work_dir, export_dir = str(tmp_path / "work"), str(tmp_path / "export")
    command = flowers_command(tiny_backbone_path, image_folders, work_dir, export_dir)
    expected_export, expected_state = uninterrupted
    # Killed after the best epoch where possible, so that the resumed run
    # can only end right if early stopping's best weights survived.
    best_epoch = expected_state["phases"]["fine_tune"]["early_stopping"]["best_epoch"]
    kill_after = max(3, min(best_epoch + 2, FINE_TUNE_EPOCHS - 8))
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            state = read_state(work_dir)
            if (state and state["phase"] == "fine_tune"
                    and state["phases"]["fine_tune"]["epochs_done"] >= kill_after):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"

    killed = read_state(work_dir)
    assert killed["phases"]["head"]["finished"]
    done = killed["phases"]["fine_tune"]["epochs_done"]
    assert kill_after <= done < FINE_TUNE_EPOCHS
    assert not killed["phases"]["fine_tune"]["finished"]
    # Nothing was exported, not even in part.
    assert not os.path.exists(export_dir)
    assert export_leftovers(tmp_path) == []

    output = run(command)
    assert "Phase head finished in an earlier run" in output
    assert f"Resuming phase fine_tune at epoch {done + 1} of {FINE_TUNE_EPOCHS}" in output
    resumed = read_state(work_dir)
    assert [(r["phase"], r["initial_epoch"]) for r in resumed["resumed"]] == [("fine_tune", done)]
    assert resumed["phase"] == "done"
    # Epoch by epoch the same losses, then the same weights, as the run
    # that was never interrupted.
    for phase in ("head", "fine_tune"):
        assert resumed["phases"][phase]["history"] == expected_state["phases"][phase]["history"]
    assert_same_variables(export_dir, expected_export)
    assert sorted(os.listdir(work_dir)) == [
        ".lock", "fine_tune-final.npz", "head-final.npz", "state.json"]


def test_deterministic_must_be_a_bool():
    with pytest.raises(ValueError, match="Invalid value for `deterministic`"):
        FineTuneConfig(deterministic="yes")


@pytest.mark.slow
def test_same_seed_repeats_bit_for_bit_with_or_without_a_work_dir(
        tiny_backbone_path, image_folders, uninterrupted, tmp_path):
    export_dir = str(tmp_path / "export")
    run(flowers_command(tiny_backbone_path, image_folders, None, export_dir))
    assert_same_variables(export_dir, uninterrupted[0])


# The phase checkpoint on its own, in-process: a small Keras model whose
# validation loss rises after a few epochs, so that early stopping's best
# weights and counters must survive the interruption.

PHASE_EPOCHS = 12


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Raises at the end of epoch `epoch`, before it is checkpointed (or at train end)."""

    def __init__(self, epoch=None, at_train_end=False):
        super().__init__()
        self.epoch = epoch
        self.at_train_end = at_train_end

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash()

    def on_train_end(self, logs=None):
        if self.at_train_end:
            raise Crash()


def train_phase(work_dir, crash=None):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(48, 6)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int32)
    # The validation labels contradict the training labels: the better the
    # model fits, the worse its validation loss, so early stopping ends the
    # phase and restores an early epoch's weights.
    validation_labels = 1 - labels[:16]
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.3, seed=2), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(0.05),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    train_batches = arrays.BatchSource(features, labels, 8, 2, shuffle=True, seed=3)
    validation = arrays.BatchSource(features[:16], validation_labels, 8, 2).dataset()
    identity = checkpoints.run_identity(FineTuneConfig(), "dense", ["a", "b"], 48, 16)
    work = checkpoints.open_work_directory(work_dir, identity)
    callbacks = [keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)]
    history = work.phase("fine_tune").fit(
        model, train_batches, validation, PHASE_EPOCHS, callbacks + ([crash] if crash else []),
        verbose=0)
    return history, [w.copy() for w in model.get_weights()], work.state


@pytest.mark.parametrize("crash", [CrashAt(epoch=2), CrashAt(at_train_end=True)],
                         ids=["after-the-best-epoch", "after-early-stopping"])
@pytest.mark.slow
def test_phase_resumes_with_early_stopping_state(tmp_path, crash):
    history, weights, state = train_phase(str(tmp_path / "uninterrupted"))
    record = state["phases"]["fine_tune"]
    assert record["finished"] and record["stopped"]
    best_epoch = record["early_stopping"]["best_epoch"]
    assert best_epoch < 2 < len(history["loss"]) < PHASE_EPOCHS

    work_dir = str(tmp_path / "interrupted")
    with pytest.raises(Crash):
        train_phase(work_dir, crash)
    resumed_history, resumed_weights, resumed_state = train_phase(work_dir)
    assert resumed_history == history
    for expected, actual in zip(weights, resumed_weights):
        np.testing.assert_array_equal(actual, expected)
    initial_epoch = PHASE_EPOCHS if crash.at_train_end else 2
    assert [r["initial_epoch"] for r in resumed_state["resumed"]] == [initial_epoch]


def test_a_different_run_is_refused(tmp_path):
    identity = checkpoints.run_identity(FineTuneConfig(), "hub", ["a", "b"], 10, 4)
    checkpoints.open_work_directory(str(tmp_path), identity)
    # Memory settings may change between a run and its resumption.
    checkpoints.open_work_directory(str(tmp_path), checkpoints.run_identity(
        FineTuneConfig(cache_memory_mb=1, deterministic=True), "hub", ["a", "b"], 10, 4))
    changed = checkpoints.run_identity(FineTuneConfig(fine_tune_epochs=9), "hub", ["a", "b"], 10, 4)
    default = FineTuneConfig().fine_tune_epochs
    with pytest.raises(ValueError, match=rf"different run \(fine_tune_epochs: {default} -> 9\)"):
        checkpoints.open_work_directory(str(tmp_path), changed)
    work = checkpoints.open_work_directory(str(tmp_path), identity)
    work.phase("fine_tune", ["block_3", "head"])
    work.save_state()
    with pytest.raises(ValueError, match="unfreezes"):
        checkpoints.open_work_directory(str(tmp_path), identity).phase("fine_tune", ["head"])


def test_reopening_removes_what_a_kill_left_behind(tmp_path):
    identity = checkpoints.run_identity(FineTuneConfig(), "hub", ["a", "b"], 10, 4)
    work = checkpoints.open_work_directory(str(tmp_path), identity)
    work.state["phases"] = {"head": {"checkpoint": "head-final.npz"},
                            "fine_tune": {"checkpoint": "fine_tune-epoch-0002.npz"}}
    work.save_state()
    # Killed after the state named epoch 2's checkpoint, before epoch 1's
    # was deleted; and while a file was being written.
    named = ["head-final.npz", "fine_tune-epoch-0002.npz"]
    left = ["fine_tune-epoch-0001.npz", ".fine_tune-epoch-0003.npz.partial"]
    others = ["notes.txt", "fine_tune-epoch-1.npz", "head-final.npz.bak"]
    for name in named + left + others:
        (tmp_path / name).write_bytes(b"")
    checkpoints.open_work_directory(str(tmp_path), identity, is_chief=False)
    assert sorted(os.listdir(tmp_path)) == sorted(named + left + others + ["state.json"])
    checkpoints.open_work_directory(str(tmp_path), identity)
    assert sorted(os.listdir(tmp_path)) == sorted(named + others + ["state.json"])


def test_an_epoch_is_saved_before_its_progress_line(tmp_path):
    from tfhub_ft import progress

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    identity = checkpoints.run_identity(FineTuneConfig(), "dense", ["a", "b"], 8, 8)
    work = checkpoints.open_work_directory(str(tmp_path), identity)
    saved = []

    class Line(progress.ProgressCallback):
        def on_epoch_end(self, epoch, logs=None):
            saved.append(work.state["phases"]["head"]["epochs_done"] == epoch + 1)

    batches = arrays.BatchSource(np.zeros((8, 3), np.float32), np.zeros(8, np.int32), 4, 2)
    work.phase("head").fit(model, batches, None, 2, [Line()], verbose=0)
    assert saved == [True, True]


def test_a_missing_or_damaged_checkpoint_is_named(tmp_path):
    identity = checkpoints.run_identity(FineTuneConfig(), "hub", ["a", "b"], 10, 4)
    work = checkpoints.open_work_directory(str(tmp_path), identity)
    work.write_arrays("head-final.npz", {"model/x": np.arange(3)})
    np.testing.assert_array_equal(work.read_arrays("head-final.npz")["model/x"], np.arange(3))
    path = tmp_path / "head-final.npz"
    path.write_bytes(path.read_bytes()[:100])
    fix = r"Remove the work_dir to start over, or pass another one\."
    with pytest.raises(ValueError, match=rf"The checkpoint '{path}', which state\.json names, "
                                         rf"cannot be read \(.*\)\. {fix}"):
        work.read_arrays("head-final.npz")
    path.unlink()
    with pytest.raises(ValueError, match=rf"cannot be read \(.*\)\. {fix}"):
        work.read_arrays("head-final.npz")


def test_a_failed_write_leaves_no_part_behind(tmp_path, monkeypatch):
    identity = checkpoints.run_identity(FineTuneConfig(), "hub", ["a", "b"], 10, 4)
    work = checkpoints.open_work_directory(str(tmp_path), identity)

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        work.write_arrays("head-epoch-0001.npz", {"x": np.zeros(3)})
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_work_directory_in_use_is_refused(tmp_path):
    work_dir = str(tmp_path / "work")
    os.makedirs(work_dir)
    with checkpoints.work_directory_lock(work_dir):
        with open(os.path.join(work_dir, checkpoints.LOCK_FILE)) as f:
            holder = f.read().strip()
        assert holder.startswith(f"process {os.getpid()} on ")
        # A second open file description, as another process would have.
        with pytest.raises(ValueError, match=(
                rf"Expected a work directory that no other run is using\. Received: "
                rf"work_dir='{work_dir}', which {holder} is using now\. Wait for that run "
                r"to end, or give this one another work_dir")):
            with checkpoints.work_directory_lock(work_dir):
                pass
        # Workers other than the chief share the folder.
        with checkpoints.work_directory_lock(work_dir, is_chief=False):
            pass
    with checkpoints.work_directory_lock(work_dir):
        pass  # released when the run ended
    with checkpoints.work_directory_lock(None):
        pass
    with pytest.raises(TypeError, match="Invalid value for `work_dir`"):
        with checkpoints.work_directory_lock(5):
            pass


@pytest.mark.slow
def test_a_second_command_on_a_running_work_dir_is_refused(tiny_backbone_path, image_folders,
                                                          tmp_path):
    work_dir = str(tmp_path / "work")
    command = flowers_command(tiny_backbone_path, image_folders, work_dir,
                              str(tmp_path / "export"))
    first = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while read_state(work_dir) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, env=environment(), capture_output=True, text=True,
                                timeout=120)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "which process %d on " % first.pid in second.stderr
    assert "is using now" in second.stderr


def test_changed_settings_are_refused_before_the_images_load(tiny_backbone_path, tmp_path):
    from tfhub_ft import FineTuner

    # A tuner caps unfreeze_blocks at the module's blocks: its own config.
    config = FineTuner(tiny_backbone_path).config
    checkpoints.open_work_directory(str(tmp_path / "work"), checkpoints.run_identity(
        config, tiny_backbone_path, ["a", "b"], 10, 4))
    checkpoints.check_settings_before_loading(str(tmp_path / "work"), config,
                                              tiny_backbone_path)
    checkpoints.check_settings_before_loading(str(tmp_path / "new"), FineTuneConfig(), "x")
    tuner = FineTuner(tiny_backbone_path, config=FineTuneConfig(head_epochs=3))
    # The data does not exist: the settings are refused before it is read.
    with pytest.raises(ValueError, match=r"holds a different run \(head_epochs: \d+ -> 3\)"):
        tuner.fit("no/such/folder", work_dir=str(tmp_path / "work"))


def test_other_images_of_the_same_count_are_a_different_run(tmp_path):
    def identity(train="0123", validation="4567"):
        return checkpoints.run_identity(FineTuneConfig(), "hub", ["a", "b"], 10, 4,
                                        fingerprints={"train": train, "validation": validation})

    checkpoints.open_work_directory(str(tmp_path / "work"), identity())
    checkpoints.open_work_directory(str(tmp_path / "work"), identity())
    with pytest.raises(ValueError) as error:
        checkpoints.open_work_directory(str(tmp_path / "work"), identity(train="89ab"))
    assert ("holds a different run (the train images differ (their files, sizes, labels or "
            "pixels; fingerprint 0123 -> 89ab)). Nothing was trained in it yet (no "
            "checkpoint), so it can be removed, or pass a new work_dir") in str(error.value)
    work = checkpoints.open_work_directory(str(tmp_path / "work"), identity())
    work.state["phases"]["head"] = {"checkpoint": "head-1.npz"}
    work.save_state()
    with pytest.raises(ValueError, match=r"-> 89ab\)\). Rerun with the same options and data "
                                         "to resume it, or pass a new work_dir"):
        checkpoints.open_work_directory(str(tmp_path / "work"), identity(train="89ab"))
    # A work directory written before fingerprints were recorded resumes on
    # the counts alone.
    checkpoints.open_work_directory(str(tmp_path / "old"), checkpoints.run_identity(
        FineTuneConfig(), "hub", ["a", "b"], 10, 4))
    checkpoints.open_work_directory(str(tmp_path / "old"), identity())


def test_the_kept_epoch_is_read_from_the_state(tmp_path):
    work = checkpoints.open_work_directory(str(tmp_path / "work"), checkpoints.run_identity(
        FineTuneConfig(), "hub", ["a", "b"], 10, 4))
    phase = work.phase("fine_tune")
    assert phase.kept_epoch is None  # before an epoch ran
    work.state["phases"]["fine_tune"] = {"early_stopping": {"best_epoch": -1}}
    assert phase.kept_epoch == 0  # no epoch beat the start
    work.state["phases"]["fine_tune"] = {"early_stopping": {"best_epoch": 1}}
    assert phase.kept_epoch == 2


@pytest.mark.parametrize("count_start", [True, False])
def test_a_plain_phase_keeps_early_stoppings_choice(count_start):
    import tensorflow as tf

    from tfhub_ft.recipe import EarlyStoppingFromStart

    class Batches:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def dataset(self):
            return tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(4)

    rng = np.random.default_rng(0)
    batches = Batches(rng.random((8, 3)).astype(np.float32),
                      rng.random((8, 1)).astype(np.float32))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input([3]), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    stopping = EarlyStoppingFromStart(batches, patience=5, count_start=count_start)
    phase = checkpoints.NO_WORK_DIRECTORY.phase("fine_tune")
    history = phase.fit(model, batches, batches.dataset(), 3, [stopping], verbose=0)
    losses = history["val_loss"]
    # 0: no epoch beat the start (only where the start counts).
    expected = (int(np.argmin(losses)) + 1
                if not count_start or min(losses) < stopping.start_loss else 0)
    assert phase.kept_epoch == expected and (count_start or expected >= 1)
    # The default phase object is shared: a phase without epochs says nothing.
    phase.fit(model, batches, batches.dataset(), 0, [stopping], verbose=0)
    assert phase.kept_epoch is None


def test_an_image_set_fingerprint_follows_files_labels_and_pixels(tmp_path):
    from tfhub_ft import data

    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    for index in range(4):
        os.makedirs(tmp_path / "photos" / "ab"[index % 2], exist_ok=True)
        (tmp_path / "photos" / "ab"[index % 2] / f"{index}.jpg").write_bytes(b"x" * index)
    paths = [str(tmp_path / "photos" / "ab"[i % 2] / f"{i}.jpg") for i in range(4)]

    def fingerprint(images=images, labels=(0, 1, 0, 1), paths=paths):
        return data.ImageSet(images, np.asarray(labels, np.int32), ["a", "b"],
                             paths=paths).fingerprint()

    first = fingerprint()
    assert len(first) == 16 and fingerprint() == first
    assert fingerprint(labels=(0, 1, 1, 1)) != first
    assert fingerprint(images=images[::-1]) != first
    assert fingerprint(paths=None) != first  # a tf.data source of the same pixels
    (tmp_path / "photos" / "a" / "2.jpg").write_bytes(b"y" * 5)  # another photo
    assert fingerprint() != first
    (tmp_path / "photos" / "a" / "2.jpg").write_bytes(b"x" * 2)
    assert fingerprint() == first
    # The same folder moved elsewhere is the same data.
    os.rename(tmp_path / "photos", tmp_path / "moved")
    assert fingerprint(paths=[p.replace("photos", "moved") for p in paths]) == first
    assert data.ImageSet(images[:0], np.zeros(0, np.int32), ["a", "b"]).fingerprint()


@pytest.mark.slow
def test_a_finished_run_is_not_resumed_on_other_photos(tiny_backbone_path, image_folders,
                                                         small_config, tmp_path):
    import shutil

    from tfhub_ft import FineTuner

    train, validation, _, _ = image_folders
    config = small_config.replace(head_epochs=1, fine_tune_epochs=0)
    FineTuner(tiny_backbone_path, config=config).fit(
        train, validation, verbose=0, work_dir=str(tmp_path / "work"))
    # A copy elsewhere is the same data; one photo replaced by another is not.
    shutil.copytree(train, tmp_path / "copy")
    FineTuner(tiny_backbone_path, config=config).fit(
        str(tmp_path / "copy"), validation, verbose=0, work_dir=str(tmp_path / "work"))
    first_class = sorted(os.listdir(tmp_path / "copy"))[0]
    photo = sorted(path for path in (tmp_path / "copy" / first_class).iterdir()
                   if not path.name.startswith("corrupt"))[0]
    photo.write_bytes(open(photo, "rb").read() + b"\0")
    with pytest.raises(ValueError, match="holds a different run \\(the train images differ"):
        FineTuner(tiny_backbone_path, config=config).fit(
            str(tmp_path / "copy"), validation, verbose=0, work_dir=str(tmp_path / "work"))


def test_work_dir_is_checked(tmp_path):
    identity = checkpoints.run_identity(FineTuneConfig(), "hub", ["a", "b"], 10, 4)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="Invalid value for `work_dir`.*which is a file"):
        checkpoints.open_work_directory(str(a_file), identity)
    with pytest.raises(TypeError, match="Invalid value for `work_dir`"):
        checkpoints.open_work_directory(3, identity)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{")
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoints.open_work_directory(str(tmp_path / "broken"), identity)


def test_a_reordered_or_different_model_is_refused_by_name():
    import keras

    from tfhub_ft import checkpoints

    first = keras.Variable(np.ones([2]), name="first")
    second = keras.Variable(np.zeros([3]), name="second")
    saved = checkpoints._named("model", [first, second])
    first.assign(np.zeros([2]))
    checkpoints._assign([first, second], saved, "model", "ckpt.npz")
    np.testing.assert_array_equal(first.numpy(), np.ones([2]))
    with pytest.raises(ValueError, match=r"ckpt\.npz' does not fit this model \(2 saved "
                                         r"variables against 2 in the model; at position 0: "
                                         r"saved 'model/00000/first', model "
                                         r"'model/00000/second'\)"):
        checkpoints._assign([second, first], saved, "model", "ckpt.npz")
    wider = keras.Variable(np.zeros([4]), name="first")
    with pytest.raises(ValueError, match=r"'model/00000/first' was saved as \(2,\), the "
                                         r"model has \(4,\)"):
        checkpoints._assign([wider, second], saved, "model", "ckpt.npz")
    with pytest.raises(ValueError, match=r"2 saved variables against 1"):
        checkpoints._assign([first], saved, "model", "ckpt.npz")


def test_without_a_work_dir_phases_fit_plainly():
    from tfhub_ft import checkpoints

    phase = checkpoints.open_work_directory(None, identity={}).phase("head")
    assert isinstance(phase, checkpoints.PlainPhase) and phase.name == "head"

"""A work directory that lets a killed or preempted run continue where it stopped.

Every epoch of each phase ends with a checkpoint of everything the rest of
the run depends on: the model's variables (with the random-seed states of
dropout and augmentation), the optimizer's variables (its step drives the
learning-rate schedule), early stopping's best weights and counters, and
the per-epoch history. Rerunning the same command with the same work
directory restores the last checkpoint: a finished phase is not trained
again, an unfinished one continues at the next epoch, and the run ends with
the same weights as one that was never interrupted (bit for bit with
`FineTuneConfig.deterministic`). The training data of epoch `e` is a
function of (seed, e) (`arrays.BatchSource`), so it too continues the same.

Layout (every file is replaced atomically: written beside, then renamed):

    state.json                   the run's identity (config, classes, data
                                 sizes, hub handle), the phase in progress,
                                 per phase the epochs done, whether it
                                 finished, its history and early stopping's
                                 counters, the unfrozen blocks, and a record
                                 of each resume
    head-final.npz               the classifier when phase 1 ended
    fine_tune-epoch-0007.npz     the latest end-of-epoch checkpoint of the
                                 phase in progress
    fine_tune-final.npz          the classifier when phase 2 ended
    .lock                        locked by the run using the folder

A checkpoint file is written before the state that names it, and the one it
replaces is deleted after, so a kill at any moment leaves a state whose
files exist; one that a kill left undeleted is removed when the run is
reopened. In a multi-worker run only the chief writes; every worker
reads the state once, before training.
"""

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import logging
import os
import re
import socket
import time
import zipfile

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import progress
from tfhub_ft.checks import check_folder_path, is_url

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
# Held by the run using the work directory (`work_directory_lock`).
LOCK_FILE = ".lock"
# 2: arrays named by variable path (1: by position).
STATE_FORMAT = 2
PHASES = ("head", "fine_tune")
# Config fields that change how a run is computed, not what it computes: a
# resumed run may differ in these.
RESUMABLE_CONFIG_CHANGES = ("cache_memory_mb", "deterministic")
# The checkpoint files `PhaseCheckpoint` writes (see the layout above).
_CHECKPOINT_NAME = re.compile(rf"({'|'.join(PHASES)})-(epoch-\d{{4}}|final)\.npz")


def run_identity(config, hub_handle, class_names, train_count, validation_count,
                 fingerprints=None):
    """What must not change between a run and its resumption, as JSON data.

    Args:
        config: The `FineTuneConfig`.
        hub_handle: The backbone's handle.
        class_names: The classes, in label order.
        train_count, validation_count: Sizes of the two image sets.
        fingerprints: {"train": ..., "validation": ...}, each the image
            set's `data.ImageSet.fingerprint()`, so that other images of the
            same count do not resume the run; None leaves them out.
    """
    settings = {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(config).items()
                if name not in RESUMABLE_CONFIG_CHANGES}
    identity = {"config": settings, "hub_handle": str(hub_handle),
                "class_names": list(class_names), "train_images": int(train_count),
                "validation_images": int(validation_count)}
    if fingerprints is not None:
        identity["fingerprints"] = dict(fingerprints)
    return identity


def open_work_directory(work_dir, identity, is_chief=True):
    """Opens (or starts) the work directory of a run.

    Args:
        work_dir: Folder path (local, or any `tf.io.gfile` URL such as
            gs://), or None for a run without checkpoints.
        identity: `run_identity(...)` of this run; a work directory started
            by a different run is refused.
        is_chief: Whether this process writes (False on the non-chief
            workers of a multi-worker run).

    Returns:
        A `WorkDirectory`, or `NO_WORK_DIRECTORY` when `work_dir` is None.

    Raises:
        TypeError: if `work_dir` is not a path.
        ValueError: if it is a file, its state is unreadable, or it holds a
            different run.
    """
    if work_dir is None:
        return NO_WORK_DIRECTORY
    return WorkDirectory(work_dir, identity, is_chief)


class _NoWorkDirectory:
    """Stands for "no work directory": its phases fit without checkpoints."""

    def phase(self, name, unfrozen_blocks=None):
        del unfrozen_blocks
        return PlainPhase(name)

    def finish(self):
        pass


class PlainPhase:
    """A phase without checkpoints: `fit` is Keras's own (same API as
    `PhaseCheckpoint`, so the recipe has one path)."""

    def __init__(self, name):
        self.name = name
        # As `PhaseCheckpoint.kept_epoch`, once `fit` has run.
        self.kept_epoch = None

    def fit(self, trainee, train_batches, validation_data, epochs, callbacks=(),
            verbose="auto"):
        """Keras fit of the phase; returns its history dict."""
        # The recipe's default phase object is shared by every call.
        self.kept_epoch = None
        history = trainee.fit(train_batches.dataset(), validation_data=validation_data,
                              epochs=epochs, verbose=verbose, shuffle=False,
                              callbacks=list(callbacks))
        stopping = _early_stopping(callbacks)
        if stopping is not None and history.history.get("loss"):
            self.kept_epoch = int(stopping.best_epoch) + 1
        return history.history


def _early_stopping(callbacks):
    """The `EarlyStopping` among a phase's callbacks, or None."""
    return next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)


NO_WORK_DIRECTORY = _NoWorkDirectory()


class WorkDirectory:
    """The checkpoints and state of one run (see the module docstring).

    Args:
        path: Folder path or `tf.io.gfile` URL; created if missing.
        identity: `run_identity(...)` of this run.
        is_chief: Whether this process writes files.

    Attributes:
        state: The state as a dict (what state.json holds).
    """

    def __init__(self, path, identity, is_chief=True):
        path = check_folder_path("work_dir", path)
        # The same for URLs (gs://), which check_folder_path leaves alone.
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise ValueError(
                "Invalid value for `work_dir`. Expected a folder path. "
                f"Received: work_dir={path!r}, which is a file.")
        self.path = path
        self.is_chief = is_chief
        state_path = self._file(STATE_FILE)
        if tf.io.gfile.exists(state_path):
            self.state = _read_state(state_path)
            _check_same_run(path, self.state["identity"], identity, _trained(self.state))
            logger.info("Resuming the run in %s: %s", path, self.describe())
        else:
            self.state = {"format": STATE_FORMAT, "identity": identity,
                          "phase": PHASES[0], "phases": {}, "unfrozen_blocks": None,
                          "resumed": []}
            if is_chief:
                tf.io.gfile.makedirs(path)
                self.save_state()
        if is_chief:
            self._remove_leftovers()

    def _remove_leftovers(self):
        """Removes what a kill left behind: files it interrupted while they
        were being written, and checkpoints it interrupted before their
        deletion (a checkpoint is deleted after the state that replaces it
        is saved)."""
        named = {record["checkpoint"] for record in self.state["phases"].values()}
        for name in tf.io.gfile.listdir(self.path):
            name = name.rstrip("/")
            if ((name.startswith(".") and name.endswith(".partial"))
                    or (_CHECKPOINT_NAME.fullmatch(name) and name not in named)):
                tf.io.gfile.remove(self._file(name))

    def describe(self):
        """One line saying how far the run got."""
        if self.state["phase"] == "done":
            return "finished"
        record = self.state["phases"].get(self.state["phase"], {})
        return (f"in phase {self.state['phase']!r}, "
                f"{record.get('epochs_done', 0)} epoch(s) done")

    def phase(self, name, unfrozen_blocks=None):
        """The checkpointing of one phase, to pass to `recipe`'s phase functions.

        Args:
            name: "head" or "fine_tune".
            unfrozen_blocks: Names of the blocks this phase trains, recorded
                (and checked on resume) for phase 2.

        Returns:
            A `PhaseCheckpoint`.

        Raises:
            ValueError: for an unknown phase, or unfrozen blocks other than
                the recorded ones.
        """
        if name not in PHASES:
            raise ValueError(
                f"Invalid value for `phase`. Expected one of {PHASES}. "
                f"Received: phase={name!r}")
        if unfrozen_blocks is not None:
            unfrozen_blocks = [str(block) for block in unfrozen_blocks]
            recorded = self.state.get("unfrozen_blocks")
            if recorded is not None and recorded != unfrozen_blocks:
                raise ValueError(
                    f"The run in work_dir={self.path!r} fine-tuned the blocks "
                    f"{recorded}, but this run unfreezes {unfrozen_blocks}. Use "
                    "the same backbone and `unfreeze_blocks`, or a new work_dir "
                    "(`--work_dir` in the command).")
            self.state["unfrozen_blocks"] = unfrozen_blocks
        return PhaseCheckpoint(self, name)

    def finish(self):
        """Marks the whole run as done (after the last phase)."""
        if self.state["phase"] != "done":
            self.state["phase"] = "done"
            self.save_state()

    # Files.

    def _file(self, name):
        return _in_folder(self.path, name)

    def save_state(self):
        """Writes `state` to state.json (on the chief), atomically."""
        if self.is_chief:
            self._write_atomically(
                STATE_FILE, json.dumps(self.state, indent=1, sort_keys=True).encode())

    def write_arrays(self, name, arrays):
        """Writes named numpy arrays to `name` (an .npz file), atomically."""
        if not self.is_chief:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._write_atomically(name, buffer.getvalue())

    def read_arrays(self, name):
        """Reads the arrays of an .npz file written by `write_arrays`.

        Raises:
            ValueError: if the file is missing or damaged (named, with the fix).
        """
        try:
            with tf.io.gfile.GFile(self._file(name), "rb") as file:
                data = file.read()
            with np.load(io.BytesIO(data)) as arrays:
                return {key: arrays[key] for key in arrays.files}
        except (FileNotFoundError, tf.errors.NotFoundError, tf.errors.DataLossError, ValueError,
                EOFError, zipfile.BadZipFile) as error:
            reason = getattr(error, "message", None) or str(error) or type(error).__name__
            raise ValueError(
                f"The checkpoint {self._file(name)!r}, which {STATE_FILE} names, cannot be "
                f"read ({reason}). Remove the work_dir to start over, or pass "
                "another one.") from error

    def delete(self, name):
        """Removes a file of the work directory (on the chief), if present."""
        if self.is_chief and name and tf.io.gfile.exists(self._file(name)):
            tf.io.gfile.remove(self._file(name))

    def _write_atomically(self, name, data):
        final = self._file(name)
        partial = self._file(f".{name}.partial")
        try:
            if is_url(self.path):
                with tf.io.gfile.GFile(partial, "wb") as file:
                    file.write(data)
            else:
                with open(partial, "wb") as file:
                    file.write(data)
                    # On disk before the rename: after a power loss, a name
                    # the state gives must not hold an empty file.
                    file.flush()
                    os.fsync(file.fileno())
        except BaseException as error:
            # A full disk stays full with the part written.
            with contextlib.suppress(Exception):
                if tf.io.gfile.exists(partial):
                    tf.io.gfile.remove(partial)
            if isinstance(error, OSError) and not error.filename:
                # Named: a failed write or fsync says "No space left on device", not where.
                raise OSError(error.errno, error.strerror, final) from error
            raise
        tf.io.gfile.rename(partial, final, overwrite=True)


def _read_state(state_path):
    try:
        with tf.io.gfile.GFile(state_path, "r") as file:
            state = json.load(file)
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"The state file {state_path!r} cannot be read ({error}). "
            "Remove the work_dir to start over, or pass another one.") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"The state file {state_path!r} is not a tfhub_ft state of "
            f"format {STATE_FORMAT}. Remove the work_dir to start over, "
            "or pass another one.")
    return state


def _in_folder(path, name):
    """`name` inside the folder `path` (local, or a `tf.io.gfile` URL)."""
    return path.rstrip("/") + "/" + name if is_url(path) else os.path.join(path, name)


@contextlib.contextmanager
def work_directory_lock(work_dir, is_chief=True):
    """Holds `work_dir` for one run, so that a second run is refused.

    Two runs in one work directory would each resume the other's epochs
    and delete each other's checkpoints. The lock is an exclusive
    `fcntl.flock` on `work_dir/.lock`, which the kernel releases when the
    process ends however it ends (SIGKILL included), so no stale lock is
    ever left; the file stays and names the last holder ("process N on
    HOST"). Only the chief locks (the workers of a multi-worker run share
    the folder). A `tf.io.gfile` URL (gs://) is not locked: object stores
    have no such lock.

    Args:
        work_dir: The work directory (created if missing), or None (no lock).
        is_chief: Whether this process writes the work directory.

    Raises:
        TypeError, ValueError: if `work_dir` is not a folder path
            (`checks.check_folder_path`).
        ValueError: if another process holds the lock.
        OSError: if the lock file cannot be made.
    """
    path = None if work_dir is None or not is_chief else check_folder_path("work_dir", work_dir)
    if path is None or is_url(path) or os.path.isfile(path):
        # (A file is refused, with its own message, by `WorkDirectory`.)
        yield
        return
    os.makedirs(path, exist_ok=True)
    descriptor = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                logger.warning("The work directory %s is not locked: its file system has "
                               "no flock (%s). Run one command at a time in it.", path,
                               error.strerror)
                yield
                return
            if not isinstance(error, BlockingIOError):
                raise
            holder = os.pread(descriptor, 256, 0).decode(errors="replace").strip()
            raise ValueError(
                "Invalid value for `work_dir`. Expected a work directory that no other "
                f"run is using. Received: work_dir={path!r}, which "
                f"{holder or 'another process'} is using now. Wait for that run to "
                "end, or give this one another work_dir (`--work_dir` in the "
                "command).") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()}\n".encode(),
                  0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def check_settings_before_loading(work_dir, config, hub_handle):
    """The part of the same-run check that needs no data, made before it loads.

    `open_work_directory` compares the whole identity after the images are
    decoded (their counts and fingerprints need them); a changed option or
    module is known at once, and a run of 50,000 images should not decode
    them to hear it.

    Raises:
        ValueError: as `open_work_directory`, for the config or handle.
    """
    if work_dir is None:
        return
    path = check_folder_path("work_dir", work_dir)
    state_path = _in_folder(path, STATE_FILE)
    if not tf.io.gfile.exists(state_path):
        return
    state = _read_state(state_path)
    recorded = state["identity"]
    settings = run_identity(config, hub_handle, [], 0, 0)
    _check_same_run(path, {key: recorded.get(key) for key in ("config", "hub_handle")},
                    {key: settings[key] for key in ("config", "hub_handle")}, _trained(state))


def _trained(state):
    """Whether a run's state names a checkpoint: a killed run's first epoch
    left none."""
    return any(record.get("checkpoint") for record in state.get("phases", {}).values())


def _check_same_run(path, recorded, identity, trained=True):
    if "fingerprints" not in recorded:
        # A work directory from before fingerprints were recorded: the
        # counts are all it can be checked by.
        identity = {key: value for key, value in identity.items() if key != "fingerprints"}
    if recorded == identity:
        return
    differences = []
    for key in sorted(set(recorded) | set(identity)):
        if key == "fingerprints":
            old, new = recorded.get(key, {}), identity.get(key, {})
            differences += [f"the {name} images differ (their files, sizes, labels or "
                            f"pixels; fingerprint {old.get(name)} -> {new.get(name)})"
                            for name in sorted(set(old) | set(new))
                            if old.get(name) != new.get(name)]
        elif key == "config":
            old, new = recorded.get(key, {}), identity.get(key, {})
            differences += [f"{name}: {old.get(name)!r} -> {new.get(name)!r}"
                            for name in sorted(set(old) | set(new))
                            if old.get(name) != new.get(name)]
        elif recorded.get(key) != identity.get(key):
            differences.append(f"{key}: {recorded.get(key)!r} -> {identity.get(key)!r}")
    advice = ("Rerun with the same options and data to resume it" if trained else
              "Nothing was trained in it yet (no checkpoint), so it can be removed")
    raise ValueError(
        f"The work_dir {path!r} holds a different run ({'; '.join(differences)}). "
        f"{advice}, or pass a new work_dir (`--work_dir` in the command).")


class PhaseCheckpoint:
    """Makes one training phase (one Keras `fit`) resumable.

    Created by `WorkDirectory.phase`; the phase functions of `recipe` call
    `fit` instead of the model's own.
    """

    def __init__(self, work_directory, name):
        self.work_directory = work_directory
        self.name = name

    @property
    def record(self):
        return self.work_directory.state["phases"].get(self.name)

    @property
    def kept_epoch(self):
        """The epoch (from 1; 0: the phase's start) whose weights early
        stopping kept, from the state, so also after a resume; None without
        early stopping or before an epoch ran."""
        saved = (self.record or {}).get("early_stopping")
        return None if not saved else int(saved["best_epoch"]) + 1

    def fit(self, trainee, train_batches, validation_data, epochs, callbacks=(),
            verbose="auto"):
        """Runs (or resumes, or skips) the phase's Keras fit.

        Args:
            trainee: The compiled Keras model this phase trains.
            train_batches: The training data: an `arrays.BatchSource` (or any
                object with `dataset()` and an `epoch` it draws from).
            validation_data: Validation dataset for `fit`.
            epochs: Epochs of the whole phase.
            callbacks: The phase's own callbacks (an `EarlyStopping` among
                them has its state saved and restored).
            verbose: Passed to `fit`.

        Returns:
            The history dict of the whole phase, the epochs of earlier runs
            included.
        """
        work = self.work_directory
        record = self.record
        if record is not None and record["finished"]:
            # The trainee shares its variables with the classifier, so
            # restoring them restores what the phase left in the classifier.
            _assign(_model_variables(trainee), work.read_arrays(record["checkpoint"]),
                    "model", f"{work.path}/{record['checkpoint']}")
            epochs = record["epochs_done"]
            logger.info("Phase %s finished in an earlier run (%d epoch%s): restored "
                        "its weights from %s", self.name, epochs, "" if epochs == 1 else "s",
                        work.path)
            return record["history"]
        if record is None:
            record = {"epochs_done": 0, "finished": False, "stopped": False,
                      "checkpoint": None, "history": {}, "early_stopping": None}
            work.state["phases"][self.name] = record
            initial_epoch = 0
        else:
            # A phase that early stopping ended runs no further epoch; it
            # only finishes (restores the best weights).
            initial_epoch = epochs if record["stopped"] else record["epochs_done"]
            work.state["resumed"].append({
                "phase": self.name, "initial_epoch": initial_epoch,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            logger.info("Resuming phase %s at epoch %d of %d from %s",
                        self.name, initial_epoch + 1, epochs, work.path)
        work.state["phase"] = self.name
        work.save_state()
        # The data of each epoch is drawn from (seed, epoch): start where
        # the interrupted run would have been.
        train_batches.epoch = initial_epoch
        saver = _CheckpointCallback(self, _early_stopping(callbacks))
        shown = [c for c in callbacks if isinstance(c, progress.ProgressCallback)]
        trainee.fit(
            train_batches.dataset(), validation_data=validation_data, epochs=epochs,
            initial_epoch=initial_epoch, verbose=verbose, shuffle=False,
            # After the others, so that early stopping has updated (or
            # reset) its state before this saves (or restores) it; before
            # the progress lines, so that an epoch logged is an epoch saved.
            callbacks=[c for c in callbacks if c not in shown] + [saver] + shown)
        return self.record["history"]


class _CheckpointCallback(keras.callbacks.Callback):
    """Saves the phase's state after every epoch and restores it at the start."""

    def __init__(self, phase, early_stopping):
        super().__init__()
        self.phase = phase
        self.early_stopping = early_stopping

    def _variables(self):
        return _model_variables(self.model), list(self.model.optimizer.variables)

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if not optimizer.built:
            # Built here, before the first step would build it, so that its
            # variables exist to be restored and come in the same order in
            # every run.
            optimizer.build(self.model.trainable_weights)
        record = self.phase.record
        if not record["checkpoint"]:
            return
        work = self.phase.work_directory
        arrays = work.read_arrays(record["checkpoint"])
        source = f"{work.path}/{record['checkpoint']}"
        model_variables, optimizer_variables = self._variables()
        _assign(model_variables, arrays, "model", source)
        _assign(optimizer_variables, arrays, "optimizer", source)
        if self.early_stopping is not None and record["early_stopping"]:
            saved = record["early_stopping"]
            stopping = self.early_stopping
            stopping.wait = saved["wait"]
            stopping.stopped_epoch = saved["stopped_epoch"]
            stopping.best = saved["best"]
            stopping.best_epoch = saved["best_epoch"]
            stopping.best_weights = None
            if saved["has_best_weights"]:
                stopping.best_weights = _saved_values(self.model.weights, arrays,
                                                      "best", source)

    def on_epoch_end(self, epoch, logs=None):
        record = self.phase.record
        for key, value in (logs or {}).items():
            record["history"].setdefault(key, []).append(float(value))
        model_variables, optimizer_variables = self._variables()
        arrays = _named("model", model_variables)
        arrays.update(_named("optimizer", optimizer_variables))
        stopping = self.early_stopping
        if stopping is not None:
            if stopping.best_weights is not None:
                # Keras keeps these as a list in `model.get_weights()` order.
                arrays.update(_named("best", self.model.weights, stopping.best_weights))
            record["early_stopping"] = {
                "wait": int(stopping.wait), "stopped_epoch": int(stopping.stopped_epoch),
                "best": None if stopping.best is None else float(stopping.best),
                "best_epoch": int(stopping.best_epoch),
                "has_best_weights": stopping.best_weights is not None}
        record["epochs_done"] = epoch + 1
        record["stopped"] = bool(self.model.stop_training)
        self._commit(f"{self.phase.name}-epoch-{epoch + 1:04d}.npz", arrays)

    def on_train_end(self, logs=None):
        self.phase.record["finished"] = True
        self._commit(f"{self.phase.name}-final.npz",
                     _named("model", _model_variables(self.model)))

    def _commit(self, name, arrays):
        """Makes `name` the phase's checkpoint, crash-safely: the new file
        first, then the state naming it, then the old file goes."""
        work, record = self.phase.work_directory, self.phase.record
        previous, record["checkpoint"] = record["checkpoint"], name
        work.write_arrays(name, arrays)
        work.save_state()
        if previous != name:
            work.delete(previous)


def _model_variables(model):
    """Every variable of a model, random-seed states included, each once."""
    seen, variables = set(), []
    for variable in model.variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            variables.append(variable)
    return variables


def _variable_key(prefix, index, variable):
    # Keras numbers auto-named layers per process (dense, dense_1, ...): the
    # numbers are dropped so that a model built again in the same process
    # (a notebook) keeps its names; the position keeps keys unique. An
    # optimizer variable's name joins the whole path of the variable it
    # serves with "_", so there every number goes (the model's variables,
    # checked by name first, pin the order).
    pattern = r"_\d+(?=[/_]|$)" if prefix == "optimizer" else r"_\d+(?=/|$)"
    return f"{prefix}/{index:05d}/{re.sub(pattern, '', variable.path)}"


def _named(prefix, variables, values=None):
    """{"<prefix>/<position>/<variable path>": value}; `values` default to
    the variables' own."""
    values = [v.numpy() for v in variables] if values is None else values
    return {_variable_key(prefix, index, variable): np.asarray(value)
            for index, (variable, value) in enumerate(zip(variables, values, strict=True))}


def _saved_values(variables, arrays, prefix, source):
    """The arrays saved for `variables`, checked to be theirs.

    Raises:
        ValueError: if the model's variables differ from the checkpoint's in
            number, order, name or shape (naming the first difference).
    """
    saved = sorted(key for key in arrays if key.startswith(prefix + "/"))
    wanted = [_variable_key(prefix, i, v) for i, v in enumerate(variables)]
    difference = None
    if saved != wanted:
        first = next((i for i, (a, b) in enumerate(zip(saved, wanted)) if a != b),
                     min(len(saved), len(wanted)))
        difference = (f"{len(saved)} saved variables against {len(wanted)} in the "
                      f"model; at position {first}: saved "
                      f"{saved[first] if first < len(saved) else None!r}, model "
                      f"{wanted[first] if first < len(wanted) else None!r}")
    else:
        shapes = [(key, arrays[key].shape, tuple(v.shape))
                  for key, v in zip(wanted, variables) if arrays[key].shape != tuple(v.shape)]
        if shapes:
            difference = f"{shapes[0][0]!r} was saved as {shapes[0][1]}, the model has {shapes[0][2]}"
    if difference:
        raise ValueError(
            f"The checkpoint {source!r} does not fit this model ({difference}). "
            "Was the work_dir written by another version of the model? Pass a "
            "new work_dir to start over.")
    return [arrays[key] for key in wanted]


def _assign(variables, arrays, prefix, source):
    """Assigns each variable the array saved under its position and name."""
    for variable, value in zip(variables, _saved_values(variables, arrays, prefix, source)):
        variable.assign(value)

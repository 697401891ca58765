"""`FineTuner`: a hub backbone in, a served classifier out."""

import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import arrays
from tfhub_ft import backbone as backbone_lib
from tfhub_ft import cache, checkpoints, checks, cpu_memory
from tfhub_ft import data as data_lib
from tfhub_ft import distribution, duplicates, image_files
from tfhub_ft import export as export_lib
from tfhub_ft import lr_finder, preprocessing, progress
from tfhub_ft import model as model_lib
from tfhub_ft import recipe
from tfhub_ft import time_budget as time_budget_lib
from tfhub_ft import tflite as tflite_lib
from tfhub_ft.config import FineTuneConfig

logger = logging.getLogger(__name__)

# What `fit` sets before it replaces the model (`load_data` included): put
# back when a `fit` is refused there, so the earlier model still matches it.
_RUN_STATE = ("image_size", "skipped_files", "skip_reasons", "_decode_seconds",
              "time_plan", "stage_seconds", "kept_epoch")


def _with_progress(callbacks, progress_callbacks):
    """A function from the phase name to its callbacks: the caller's (a
    list, or a function of the phase, or None), then the progress ones."""
    def phase_callbacks(phase):
        callers = callbacks(phase) if callable(callbacks) else callbacks or ()
        return [*callers, *progress_callbacks(phase)]
    return phase_callbacks


def _image_folders(train, validation):
    """{"training" / "validation": real path} of the sources that are folders."""
    return {name: os.path.realpath(source)
            for name, source in (("training", train), ("validation", validation))
            if isinstance(source, (str, os.PathLike)) and os.path.isdir(source)}


class FineTuner:
    """Fine-tunes a TF Hub image feature vector on your labelled images.

    Example:

    ```python
    tuner = FineTuner("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    tuner.fit("photos/train", validation="photos/validation")
    print(tuner.evaluate("photos/test"))
    tuner.export("export/photos")
    ```

    Args:
        hub_handle: tfhub.dev or Kaggle Models URL, Kaggle handle, or local
            SavedModel folder of an image feature vector.
        config: A `FineTuneConfig`; defaults to `FineTuneConfig()`.
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
            The backbone, model and optimizers are created in its scope.
        block_pattern: Overrides how variables are grouped into blocks (see
            `blocks.block_of`).
        start_time: Where the config's `time_budget_s` counts from, a
            reading of `clock`: the command passes when it started. None:
            now, before the backbone loads. The first `fit` counts from it;
            a later `fit` from its own start.
        clock: The budget's clock, a function returning seconds;
            `time.monotonic` by default (tests pass a fake one).
        **options: Fields of `FineTuneConfig` to change, e.g.
            `unfreeze_blocks=2`.

    Attributes:
        backbone: The `HubBackbone`, loaded at construction, so its blocks
            can be listed (`backbone.block_summary()`) before `fit`.
        image_size: The side, in pixels, that images are resized to (int).
            Fixed at construction by the config's `image_size` or the
            module's own size; with neither, 224 until a `fit` (or
            `load_data`) chooses it from the training images
            (`config.choose_image_size`: 160 for images under 112 px) and
            the chosen size from then on, for `evaluate`, `predict` and the
            exports.
        model: The `ImageClassifier`, after `fit`.
        class_names: The classes, after `fit`.
        validation_metrics: `evaluate`'s dict on the validation data,
            after `fit`.
        cache_usage: {"memory_bytes", "spilled_bytes"} of the decoded
            images and cached activations of the last `fit`.
        history: `fit`'s return value, after `fit`.
        kept_epoch: ("fine_tune", epoch) whose weights early stopping kept
            in the last `fit` (epoch from 1; 0: none beat the start of
            fine-tuning, so the head phase's weights stayed); None where
            phase 2 did not run or ran no epoch.
        stage_seconds: Wall seconds of each stage of the last `fit` (and
            `export`): "load" (listing and checking the image files),
            "decode" (decoding them), "frozen_pass", "head", "fine_tune",
            "validation", "export".
        unfrozen_blocks: Names of the blocks fine-tuned, after `fit`.
        skipped_files: Files the last `load_data` (or `fit`) could not use,
            training and validation.
        skip_reasons: {path: why} for every path in `skipped_files`
            (empty, truncated, unknown format, too large, decoder message).
        near_duplicates: [(validation path, training path, cosine
            similarity)] of the validation images of the last `fit` whose
            frozen features nearly equal a training image's (see
            `near_duplicate_threshold`); indices stand in for paths when the
            data has none.
        validation_labels, validation_probabilities: int [N] and float32
            [N, C] on the validation images, after `fit` (for `report`).
        time_plan: With `time_budget_s`, the last `fit`'s
            `time_budget.TimePlan` (the reserve, each phase's last plan and
            reason, the epochs run); else None.
    """

    def __init__(self, hub_handle, config=None, strategy=None,
                 block_pattern=None, start_time=None, clock=None, **options):
        self._clock = clock or time.monotonic
        self._budget_start = self._clock() if start_time is None else start_time
        config = config or FineTuneConfig()
        if not isinstance(config, FineTuneConfig):
            raise TypeError(
                "Invalid value for `config`. Expected a FineTuneConfig. "
                f"Received: config={config!r}")
        self.config = config.replace(**options) if options else config
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            hint = (f"`tfhub_ft.get_strategy({strategy!r})`" if isinstance(strategy, str)
                    else "`tfhub_ft.get_strategy(name)`")
            raise TypeError(
                "Invalid value for `strategy`. Expected a tf.distribute.Strategy or None. "
                f"Received: strategy={strategy!r}. Pass {hint}.")
        self.strategy = strategy or tf.distribute.get_strategy()
        loading = self._clock()
        with self.strategy.scope():
            self.backbone = backbone_lib.HubBackbone(
                hub_handle, batch_norm_trainable=self.config.batch_norm_trainable,
                block_pattern=block_pattern, input_range=self.config.input_range)
        # A time budget estimates the export from it (time_budget.estimate_reserve).
        self._backbone_load_seconds = self._clock() - loading
        self.image_size = self.backbone.resolve_image_size(self.config.image_size)
        self._image_size_from_data = (self.config.image_size is None
                                      and self.backbone.image_size is None)
        block_count = len(self.backbone.blocks)
        if self.config.unfreeze_blocks > block_count:
            # The default suits deep backbones; a shallow one is trained whole.
            logger.warning("unfreeze_blocks=%d but %s has %d blocks: fine-tuning all of them.",
                           self.config.unfreeze_blocks, self.backbone.hub_handle, block_count)
            self.config = self.config.replace(unfreeze_blocks=block_count)
        self.model = None
        self._model_replaced = self._unfinished_fit = False
        # {"training" / "validation": folder} of the last fit's folder sources.
        self._image_folders = {}
        self.class_names = None
        self.validation_metrics = None
        self.cache_usage = None
        # Kept by `fit` for `export(tflite=...)`: int8 calibration images and
        # the parity check's validation images and labels (seeded samples).
        self._representative_images = None
        self._parity_data = None
        self._pretrained_weights = None  # the backbone's, kept by the first `fit`
        self.history = None
        self.kept_epoch = None
        self.stage_seconds = {}
        self._decode_seconds = 0.0
        self.unfrozen_blocks = []
        self.skipped_files = []
        self.skip_reasons = {}
        self.near_duplicates = []
        self.validation_labels = None
        self.validation_probabilities = None
        self._mistakes = None
        self._validation_paths = None
        self._image_counts = None
        self.time_plan = None

    def load_data(self, train, validation=None, validation_split=None,
                  class_names=None, data_dir=None, budget=None):
        """Loads training and validation `ImageSet`s from any supported source.

        Args:
            train: Image folder, TFDS name, tf.data.Dataset or `ImageSet`.
            validation: The same kinds, or None to hold out
                `validation_split` of `train` (stratified, seeded). For a
                TFDS name, a split name such as "validation" also works.
            validation_split: Overrides the config's fraction, in (0, 1).
            class_names: Class names of a tf.data.Dataset source.
            data_dir: TFDS data folder.
            budget: `arrays.ArrayBudget` the decoded images of every source
                (folder, TFDS, tf.data) are written into; a new one of
                `config.cache_memory_mb` when None.

        Returns:
            (train `ImageSet`, validation `ImageSet`).

        Raises:
            ValueError: for both `validation` and `validation_split`, a
                `validation_split` outside (0, 1), when a held-out split
                would be empty (every class
                has fewer than 2 images), or with `on_bad_image="error"`
                and a bad file, or for an infinite tf.data source, or when
                the validation data has classes the training data lacks
                (two folders: checked before anything is decoded), or a
                class has no training image. A class without validation
                images is a warning.
            ImportError: when a package TFDS needs is missing (named, with
                its `pip install`).
        """
        if validation is not None and validation_split is not None:
            raise ValueError(
                "Invalid arguments: `validation` and `validation_split` both given. Pass "
                "validation data, or `validation_split` to hold out part of `train`, not "
                f"both. Received: validation_split={validation_split}.")
        # Checked as the config checks its own, before anything is decoded
        # (0 is not "the config's fraction", 2 not "all but one per class").
        fraction = (self.config.validation_split if validation_split is None else
                    self.config.replace(validation_split=validation_split).validation_split)
        if class_names is not None and not isinstance(train, tf.data.Dataset):
            logger.warning(
                "`class_names` is for a tf.data.Dataset source, and is ignored here: a "
                "folder's classes are its subfolder names (sorted), a TFDS dataset's come "
                "with it. Received: class_names=%r", list(class_names))
            class_names = None
        # Neither the config nor the module fixes the size: the training
        # images choose it (config.choose_image_size), validation follows.
        size = None if self._image_size_from_data else self.image_size
        budget = budget or self._new_budget()
        if all(isinstance(source, (str, os.PathLike)) and os.path.isdir(source)
               for source in (train, validation)):
            if os.path.samefile(train, validation):
                # A warning, not an error: scoring the training images is a
                # check some users (and this project's tests) make on purpose.
                logger.warning(
                    "The validation folder is the training folder (%s): the validation "
                    "score measures memory, not how the model does on new images, and early "
                    "stopping cannot see overfitting. Pass a folder of other images, or none "
                    "to hold out `validation_split` of the training images.",
                    os.fspath(validation))
            data_lib.check_class_folders(train, validation)
        is_tfds = data_lib.is_tfds_name(train)
        train_set = data_lib.load_images(train, size, class_names, split="train",
                                         data_dir=data_dir, budget=budget, config=self.config)
        data_lib.check_training_classes(train_set)
        if size is None:
            self.image_size = size = int(train_set.images.shape[1])
        self.skipped_files = list(train_set.skipped)
        self.skip_reasons = dict(train_set.skip_reasons)
        # An ImageSet passed in was decoded before this call: not this run's time.
        self._decode_seconds = train_set.decode_seconds if train_set is not train else 0.0
        if validation is None:
            data_lib.check_validation_split(train_set.labels, train_set.class_names,
                                            fraction, self.config.seed)
            train_indices, validation_indices = data_lib.stratified_split(
                train_set.labels, fraction, self.config.seed)
            return train_set.subset(train_indices), train_set.subset(validation_indices)
        if is_tfds and data_lib.is_tfds_name(validation):
            validation_set = data_lib.load_tfds(train, validation, size, data_dir, budget)
        else:
            # Some classes, or one, is a warning below, not an error.
            validation_set = data_lib.load_images(
                validation, size, class_names or train_set.class_names, budget=budget,
                config=self.config, min_classes=1)
        self.skipped_files += list(validation_set.skipped)
        self.skip_reasons.update(validation_set.skip_reasons)
        if validation_set is not validation:
            self._decode_seconds += validation_set.decode_seconds
        validation_set = data_lib.match_classes(
            validation_set, train_set.class_names, "validation")
        data_lib.warn_missing_validation_classes(validation_set.labels,
                                                 train_set.class_names)
        return train_set, validation_set

    def fit(self, train, validation=None, validation_split=None,
            class_names=None, data_dir=None, verbose="auto", work_dir=None,
            tensorboard_dir=None, callbacks=None, budget_reserve_s=0.0):
        """Trains the head, then fine-tunes the top blocks.

        Args: see `load_data`; `verbose`: see `progress.keras_progress`
            ("auto": Keras's progress bars on a terminal or in a notebook,
            one INFO log line per epoch elsewhere; 0: none);
            `work_dir`: a folder where every epoch is checkpointed, so that
            calling `fit` again with the same arguments after an
            interruption resumes the run instead of starting over (see
            `checkpoints`); None trains without checkpoints.
            `tensorboard_dir`: a folder for TensorBoard logs, one run per
            phase (`head/`, `fine_tune/`, each with `train/` and
            `validation/`): loss, accuracy and learning rate per epoch,
            through `keras.callbacks.TensorBoard`; None writes none.
            `callbacks`: extra Keras callbacks for both phases, or a
            function from the phase name ("head", "fine_tune") to a list
            of them.
            `budget_reserve_s`: with the config's `time_budget_s`, seconds the
            budget keeps, beyond the final validation and one `export`, for
            what the caller does after them (the command: its exit).

        Each call is a run of its own: it starts from the module's
        pretrained weights (not from a backbone an earlier `fit` on this
        tuner fine-tuned) and removes its spill files as it ends. A call
        refused before training (its arguments, its data, another run in
        `work_dir`) leaves the earlier model as it was; one stopped while
        training (an error, Ctrl-C) leaves none, and `predict` and `export`
        ask for `fit` again.

        Under `time_budget_s` (see `time_budget`), the budget counts from
        the tuner's `start_time`; phase 2, when it cannot reach it, is
        skipped with a warning (phase 1 runs at least one epoch, over a
        spent budget with a warning), and `time_plan` records what was
        planned and run.

        Returns:
            {"head": phase-1 history, "fine_tune": phase-2 history}, each a
            dict of per-epoch lists (loss, accuracy, val_loss, val_accuracy).

        Raises:
            ValueError: for an unknown `verbose`, `time_budget_s` with
                `work_dir` or under a multi-worker strategy,
                `validation_split` outside (0, 1), and what `load_data`
                raises.
        """
        verbose, progress_callbacks = progress.keras_progress(verbose)
        callbacks = _with_progress(callbacks, progress_callbacks)
        folders = _image_folders(train, validation)
        for folder_name, folder in folders.items():
            for name, value in (("work_dir", work_dir), ("tensorboard_dir", tensorboard_dir)):
                checks.check_outside_image_folder(name, value, f"the {folder_name} folder",
                                                  folder)
        earlier = {name: getattr(self, name) for name in _RUN_STATE}
        time_budget = self._start_budget(work_dir)
        self.time_plan = None
        self.stage_seconds = {}
        self.kept_epoch = None
        if not self.config.head_epochs and not self.config.fine_tune_epochs:
            logger.warning(
                "head_epochs=0 and fine_tune_epochs=0: nothing will be trained. The head "
                "keeps its random start, so the classifier is no better than chance. Set "
                "head_epochs=%d (phase 1 on cached features costs seconds).",
                FineTuneConfig.head_epochs)
        self._model_replaced = False
        try:
            # What is kept after `fit` (samples for TFLite, the report's
            # images) is copied out of the budget's arrays: its spill files
            # go at the end.
            with checkpoints.work_directory_lock(
                    work_dir, is_chief=self.strategy.extended.should_checkpoint), \
                    contextlib.closing(self._new_budget()) as budget:
                history = self._fit(budget, time_budget, train, validation, validation_split,
                                    class_names, data_dir, verbose, work_dir, tensorboard_dir,
                                    callbacks, budget_reserve_s)
            self._image_folders = folders
            return history
        except BaseException:
            if not self._model_replaced:
                # Refused before training: the earlier model, and what
                # describes it, stay as they were.
                for name, value in earlier.items():
                    setattr(self, name, value)
            else:
                # Stopped while training: what is left is neither the
                # earlier model nor a finished one, and is not exported.
                self.model = self.validation_metrics = self.history = None
                self._unfinished_fit = True
            raise

    def _fit(self, budget, time_budget, train, validation, validation_split, class_names,
             data_dir, verbose, work_dir, tensorboard_dir, callbacks, budget_reserve_s):
        """`fit`'s stages, with the array budget `fit` closes after them."""
        checkpoints.check_settings_before_loading(work_dir, self.config,
                                                  self.backbone.hub_handle)
        with self._stage("load") as note:
            started = time.perf_counter()
            train_set, validation_set = self.load_data(
                train, validation, validation_split, class_names, data_dir, budget)
            if self._decode_seconds:
                note["detail"] = (f"listing and checking the files "
                                  f"{time.perf_counter() - started - self._decode_seconds:.1f} "
                                  f"s, decoding {self._decode_seconds:.1f} s")
        # "load" is listing and checking the files; "decode", decoding them.
        self.stage_seconds["decode"] = self._decode_seconds
        self.stage_seconds["load"] -= self._decode_seconds
        logger.info("Training on %d images, validating on %d, %d classes",
                    len(train_set), len(validation_set), len(train_set.class_names))
        cpu_memory.note_if_unpooled(logger.warning)
        data_lib.check_class_balance(train_set.labels, train_set.class_names,
                                     class_weight=self.config.class_weight)
        if self.config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(self.config.seed)
        work = checkpoints.open_work_directory(
            work_dir, checkpoints.run_identity(
                self.config, self.backbone.hub_handle, list(train_set.class_names),
                len(train_set), len(validation_set), fingerprints=None if work_dir is None else {
                    "train": train_set.fingerprint(),
                    "validation": validation_set.fingerprint()}),
            is_chief=self.strategy.extended.should_checkpoint)
        # Only now, with the arguments, the data and the work directory
        # accepted, does this fit replace the tuner's earlier model: a fit
        # refused before here (a mistyped path) leaves it as it was.
        self._model_replaced = True
        self._unfinished_fit = False
        self._start_from_pretrained_weights()
        self.class_names = list(train_set.class_names)
        with self.strategy.scope():
            self.model = model_lib.build_classifier(
                self.backbone, len(self.class_names), self.image_size,
                self.config.dropout_rate, self.config.augmentation,
                self.config.seed)
            self.backbone.freeze_all()
            plan = recipe.plan_fine_tune(self.backbone, self.config)
            frozen_start = self._clock()
            with self._stage("frozen_pass"):
                frozen = cache.compute_frozen_activations(
                    self.model, train_set, validation_set, self.config, budget, plan.split)
                for problem in backbone_lib.feature_problems(
                        arrays.take(frozen.train_features[0],
                                    np.arange(min(len(train_set), 64))),
                        self.config.input_range):
                    logger.warning("Calibration of %s: %s", self.backbone.hub_handle, problem)
                validation_set, frozen = self._check_near_duplicates(
                    train_set, validation_set, frozen)
            timers, plans = {}, {}
            if time_budget is not None:
                self._reserve_time(time_budget, self._clock() - frozen_start, len(train_set),
                                   len(frozen.train_features), len(validation_set),
                                   budget_reserve_s, cached_scoring=frozen.split is not None)
            head_timer = self._phase_timer(
                "head", time_budget, "start-up, loading and the frozen pass", timers, plans)
            with self._stage("head"):
                over_budget = "head" in plans and plans["head"].over_budget
                head_history = recipe.train_head(
                    self.model, frozen, train_set, validation_set,
                    self.config.replace(head_epochs=1) if over_budget else self.config,
                    verbose, checkpoint=work.phase("head"),
                    callbacks=self._phase_callbacks("head", tensorboard_dir, callbacks),
                    phase_timer=head_timer)
            fine_tune_timer = self._phase_timer(
                "fine_tune", time_budget, "start-up, loading, the frozen pass and phase 1",
                timers, plans)
            with self._stage("fine_tune") as stage:
                if not self.config.fine_tune_epochs:
                    stage["skipped"] = "fine_tune_epochs=0"
                elif "fine_tune" in plans and plans["fine_tune"].epochs == 0:
                    stage["skipped"] = "the time budget, see the warning above"
                if stage.get("skipped"):
                    fine_tune_history, self.unfrozen_blocks = {}, []
                else:
                    self.backbone.unfreeze_top_blocks(len(plan.blocks))
                    self.unfrozen_blocks = [block.name for block in plan.blocks]
                    fine_tune_checkpoint = work.phase("fine_tune", self.unfrozen_blocks)
                    fine_tune_history = recipe.fine_tune(
                        self.model, frozen, train_set, validation_set, self.config, verbose,
                        checkpoint=fine_tune_checkpoint,
                        callbacks=self._phase_callbacks("fine_tune", tensorboard_dir,
                                                        callbacks),
                        phase_timer=fine_tune_timer)
                    kept = fine_tune_checkpoint.kept_epoch
                    if kept is not None:
                        self.kept_epoch = ("fine_tune", kept)
        work.finish()
        self.cache_usage = {"memory_bytes": budget.used_bytes,
                            "spilled_bytes": budget.spilled_bytes}
        with self._stage("validation"):
            # From the cached boundary where the backbone is split (what phase 2
            # validated on; the bottom never trains): the images through the
            # whole model again took about a second.
            scorer, _, inputs = recipe.fine_tune_trainee(self.model, frozen, train_set,
                                                         validation_set)
            self.validation_metrics = self._score(validation_set, keep=True, model=scorer,
                                                  inputs=inputs)
        self._image_counts = {"train": len(train_set), "validation": len(validation_set)}
        logger.info("Validation accuracy %.4f on %d images",
                    self.validation_metrics["accuracy"], len(validation_set))
        self._log_most_confused()
        if time_budget is not None:
            self.time_plan = time_budget_lib.TimePlan(
                time_budget.seconds, time_budget.reserve_s, time_budget.reserve_reason,
                head=timers["head"].plan if "head" in timers else plans.get("head"),
                fine_tune=(timers["fine_tune"].plan if "fine_tune" in timers
                           else plans.get("fine_tune")),
                epochs_run={"head": len(head_history.get("loss", [])),
                            "fine_tune": len(fine_tune_history.get("loss", []))},
                used_s=time_budget.used())
            left = time_budget.seconds - self.time_plan.used_s
            logger.info("Time budget %g s: fit done at %.1f s, %s (%.1f s reserved for "
                        "them)", time_budget.seconds, self.time_plan.used_s,
                        f"leaving {left:.1f} s for the export and after" if left >= 0 else
                        f"{-left:.1f} s over before the export", time_budget.reserve_s)
        self._keep_tflite_data(train_set, validation_set)
        self.history = {"head": head_history, "fine_tune": fine_tune_history}
        return self.history

    def _log_most_confused(self):
        """One line naming the classes the validation images confuse most
        (the report draws them all)."""
        from tfhub_ft import report
        pairs = report.most_confused(self.validation_labels,
                                     self.validation_probabilities.argmax(-1), self.class_names)
        if pairs:
            logger.info("Most confused (true -> predicted, validation images): %s",
                        ", ".join(f"{true} -> {predicted} {count}"
                                  for true, predicted, count in pairs))

    def _start_from_pretrained_weights(self):
        """Each `fit` is a run of its own, from the module's weights.

        Phase 2 changes the backbone's variables in place, so a second `fit`
        on the same tuner (a notebook cell run again) would otherwise
        fine-tune the backbone the first one fine-tuned, and give other
        numbers for the same seed and data. The first `fit` keeps a copy
        (the backbone's size in memory); a later one puts it back.
        """
        variables = self.backbone.weights
        if self._pretrained_weights is None:
            self._pretrained_weights = [variable.numpy() for variable in variables]
            return
        for variable, value in zip(variables, self._pretrained_weights):
            variable.assign(value)
        logger.info("This fit starts again from the pretrained weights of %s, not from the "
                    "backbone the earlier fit on this tuner fine-tuned.",
                    self.backbone.hub_handle)

    def _start_budget(self, work_dir):
        """The `TimeBudget` of a `fit` (None without `time_budget_s`): from the
        tuner's start for the first `fit`, from now for a later one."""
        start = self._clock() if self._budget_start is None else self._budget_start
        self._budget_start = None
        if self.config.time_budget_s is None:
            return None
        time_budget_lib.check_time_budget_use(
            self.config.time_budget_s, work_dir,
            multi_worker=isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy))
        return time_budget_lib.TimeBudget(self.config.time_budget_s, start, self._clock)

    def _reserve_time(self, time_budget, frozen_seconds, train_count, variants,
                      validation_count, extra_s, cached_scoring):
        """Estimates (and logs) what the budget keeps for validation and
        export, and phase 2's first epoch, from the frozen pass."""
        frozen_images = train_count * variants + validation_count
        time_budget.reserve_s, time_budget.reserve_reason = time_budget_lib.estimate_reserve(
            frozen_seconds, frozen_images, validation_count, self._backbone_load_seconds,
            extra_s, cached_scoring)
        time_budget.fine_tune_s = time_budget_lib.estimate_fine_tune_epoch(
            frozen_seconds, frozen_images, train_count)
        logger.info("Time budget %g s: reserving %.1f s after the phases: %s",
                    time_budget.seconds, time_budget.reserve_s, time_budget.reserve_reason)

    def _phase_timer(self, phase, time_budget, used_by, timers, plans):
        """A phase's start under the budget: its plan goes in `plans[phase]`
        (logged, or a warning when it is skipped), and the returned function
        makes its `PhaseTimer` (kept in `timers[phase]`). None without a
        budget or without epochs of the phase."""
        epochs = self.config.head_epochs if phase == "head" else self.config.fine_tune_epochs
        if time_budget is None or not epochs:
            return None
        if phase == "fine_tune" and "head" in plans and plans["head"].over_budget:
            # Phase 1's warning said that the budget was spent.
            plans[phase] = time_budget_lib.PhasePlan(
                phase, 0, epochs, deadline_s=time_budget.used(), steps=0,
                reason="skipped: the budget was spent before phase 1")
            return None
        plans[phase] = time_budget_lib.phase_plan_for(phase, self.config, time_budget, used_by)
        if plans[phase].over_budget:
            return None  # its one epoch is not timed: it runs whatever the clock says

        def make_timer(**options):
            timers[phase] = time_budget_lib.PhaseTimer(time_budget, plans[phase], **options)
            return timers[phase]
        return make_timer

    @contextlib.contextmanager
    def _stage(self, name):
        """Times a stage; the body may set the yielded dict's "skipped" to
        the reason the stage did nothing, or its "detail" to what the time
        went to, which the line then says."""
        start, note = time.perf_counter(), {}
        yield note
        self.stage_seconds[name] = time.perf_counter() - start
        if note.get("skipped"):
            logger.info("Stage %s skipped (%s)", name, note["skipped"])
        else:
            logger.info("Stage %s done in %.1f s%s", name, self.stage_seconds[name],
                        f" ({note['detail']})" if note.get("detail") else "")

    @staticmethod
    def _phase_callbacks(phase, tensorboard_dir, callbacks):
        extra = list(callbacks(phase))
        if tensorboard_dir:
            if importlib.util.find_spec("tensorboard") is None:
                raise ValueError(
                    "Invalid value for `tensorboard_dir`: writing TensorBoard logs needs "
                    "the `tensorboard` package, which is not installed. Install it "
                    "(`pip install tensorboard`) or leave `tensorboard_dir` unset.")
            # The graph of a hub module split in two is large and not what
            # a user looks for; the per-epoch scalars are.
            extra.append(keras.callbacks.TensorBoard(
                os.path.join(os.fspath(tensorboard_dir), phase), write_graph=False,
                update_freq="epoch"))
        return extra

    def _keep_tflite_data(self, train_set, validation_set):
        seed = self.config.seed
        self._representative_images = arrays.take(train_set.images, tflite_lib.sample_rows(
            len(train_set), tflite_lib.REPRESENTATIVE_IMAGE_COUNT, seed))
        rows = tflite_lib.sample_rows(len(validation_set), tflite_lib.PARITY_IMAGE_COUNT, seed)
        self._parity_data = (arrays.take(validation_set.images, rows),
                             validation_set.labels[rows])

    def _check_near_duplicates(self, train_set, validation_set, frozen):
        """Reports (and with `drop_near_duplicates` drops) validation images
        whose frozen features nearly equal a training image's."""
        found = duplicates.find_near_duplicates(
            frozen.train_features[0], frozen.validation_features,
            self.config.near_duplicate_threshold)

        def name(image_set, index):
            return (image_files.display_path(image_set.paths[index])
                    if image_set.paths is not None else f"#{index}")

        self.near_duplicates = [
            (name(validation_set, d.validation_index), name(train_set, d.train_index),
             d.similarity) for d in found]
        if not found:
            return validation_set, frozen
        dropping = self.config.drop_near_duplicates
        logger.warning(
            "%d of %d validation image(s) are near-duplicates of training images "
            "(cosine similarity of frozen features >= %g)%s: %s", len(found),
            len(validation_set), self.config.near_duplicate_threshold,
            "; dropped from validation" if dropping else
            "; they flatter the validation score (drop_near_duplicates=True removes them)",
            image_files.listing((f"{v} ~ {t} ({s:.3f})" for v, t, s in self.near_duplicates),
                                "near-duplicates (tuner.near_duplicates)"))
        if not dropping:
            return validation_set, frozen
        flagged = {d.validation_index for d in found}
        keep = np.asarray([i for i in range(len(validation_set)) if i not in flagged],
                          np.int64)
        if len(keep) == 0:
            raise ValueError(
                "Every validation image is a near-duplicate of a training image; "
                "nothing would be left to validate on. Pass other validation "
                "data, or drop_near_duplicates=False.")
        frozen.validation_features = arrays.subset(frozen.validation_features, keep)
        if frozen.validation_boundary is not None:
            frozen.validation_boundary = tuple(
                arrays.subset(part, keep) for part in frozen.validation_boundary)
        return validation_set.subset(keep), frozen

    def _new_budget(self):
        return arrays.ArrayBudget(self.config.cache_memory_mb * 2**20)

    def _decode_options(self):
        return {"max_pixels": self.config.max_image_pixels,
                "exif_orientation": self.config.exif_orientation}

    def _check_outside_image_folders(self, name, path):
        """Refuses an output inside the last fit's image folders."""
        for folder_name, folder in self._image_folders.items():
            checks.check_outside_image_folder(
                name, path, f"the {folder_name} folder of the last `fit`", folder)

    def _require_model(self):
        if self.model is None and self._unfinished_fit:
            raise ValueError(
                "The classifier is not trained: the last `fit` stopped before it finished. "
                "Call `fit` again (if it had a `work_dir`, the same call resumes where it "
                "stopped).")
        if self.model is None:
            raise ValueError("The classifier is not trained yet: call `fit` first.")

    def predict(self, images, batch_size=None):
        """Class probabilities for images.

        Args:
            images: uint8 [N, H, W, C] in [0, 255] or float [N, H, W, C] in
                [0, 1] (numpy or tensor), any H, W; C = 3 (RGB), or 1
                (gray), 2 or 4 (with alpha, composited over white as in
                training); one image [H, W, C] is a batch of one; a list
                of images may mix sizes.
            batch_size: Images per model call, >= 1; the config's when None.

        Returns:
            float32 numpy [N, num_classes], rows summing to 1 ([0,
            num_classes] for no image).

        Raises:
            TypeError: for paths or a dataset (files are scored from an
                export by `tfhub_ft.predict.predict_files`, a labelled
                folder by `evaluate`), or images neither uint8 nor float.
            ValueError: for images of another shape, float images with
                values outside [0, 1] or not finite, or `batch_size` < 1.
        """
        self._require_model()
        batch_size = checks.check_integer("batch_size", batch_size, 1, optional=True)
        if isinstance(images, (list, tuple)) and len({np.shape(i) for i in images}) > 1:
            # Sizes differ: no one array holds them; the model resizes each.
            return np.concatenate([self.predict(image, batch_size) for image in images])
        received = None
        if isinstance(images, (str, os.PathLike)):
            received = f"the path {os.fspath(images)!r}"
        elif isinstance(images, tf.data.Dataset):
            received = "a tf.data.Dataset"
        elif (isinstance(images, (list, tuple)) and images
              and isinstance(images[0], (str, os.PathLike))):
            received = f"a {type(images).__name__} of paths"
        else:
            images = np.asarray(images)
            if images.dtype.kind in "USO":
                received = f"an array of {images.dtype} (paths?)"
        if received is not None:
            raise TypeError(
                f"Invalid value for `images`. Expected image arrays. Received: {received}. "
                "For image files use the export: "
                "`tfhub_ft.predict.predict_files(export_dir, paths)` (or `python -m "
                "tfhub_ft.predict`); for a folder with one subfolder per class, "
                "`evaluate(folder)`.")
        if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
            raise TypeError(
                "Invalid value for `images`. Expected uint8 in [0, 255] or float in [0, 1]. "
                f"Received: images of dtype {images.dtype}. Cast 0-255 values to uint8.")
        shape = images.shape
        if len(shape) not in (3, 4) or shape[-1] not in (1, 2, 3, 4):
            raise ValueError(
                "Invalid value for `images`. Expected images [N, H, W, C] (or one "
                "[H, W, C]), C = 3 (RGB), 1 (gray), 2 or 4 (with alpha). Received: "
                f"images of shape {shape}.")
        tolerance = data_lib.UNIT_RANGE_TOLERANCE
        not_finite = 0 if images.dtype == np.uint8 else np.size(images) - np.isfinite(
            images).sum()
        if not_finite:
            raise ValueError(
                "Invalid value for `images`. Expected float values in [0, 1]. Received: "
                f"{not_finite} NaN or infinite value(s). "
                "Replace them (e.g. `np.nan_to_num(images)`) or leave those images out.")
        if images.dtype != np.uint8 and images.size and (images.min() < -tolerance
                                                         or images.max() > 1 + tolerance):
            raise ValueError(
                "Invalid value for `images`. Expected uint8 in [0, 255] or float in [0, 1]. "
                f"Received: {images.dtype} values from {images.min():g} to "
                f"{images.max():g}. Divide 0-255 values by 255 (or cast them to uint8); "
                "pass images before any normalisation (the model normalises them).")
        if len(shape) == 3:
            images = images[None]
        if not len(images):
            return np.zeros((0, len(self.class_names)), np.float32)
        if shape[-1] != 3:
            # As `data` does for training images: to uint8, then over white.
            if images.dtype != np.uint8:
                images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
            images = preprocessing.composite_over_background(images).numpy()
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(
            batch_size or self.config.batch_size)
        return self._probabilities(dataset)

    def _probabilities(self, dataset, model=None):
        model = self.model if model is None else model
        with self.strategy.scope():
            logits = np.concatenate(list(distribution.map_batches(
                lambda batch: model(batch, training=False), dataset)))
        return tf.nn.softmax(logits).numpy()

    def evaluate(self, data, class_names=None, data_dir=None, split="test"):
        """Loss and accuracy on held-out data (folder, TFDS name, dataset).

        The data may hold some of the classes, or one; a class the training
        data lacks is an error.

        Returns:
            {"loss": mean cross-entropy without label smoothing,
             "accuracy": top-1 accuracy in [0, 1], "count": images scored}.
        """
        self._require_model()
        image_set = data_lib.match_classes(
            data_lib.load_images(data, self.image_size,
                                 class_names or self.class_names, split, data_dir,
                                 budget=self._new_budget(), config=self.config,
                                 min_classes=1),
            self.class_names, "evaluation")
        return self._score(image_set)

    def _score(self, image_set, keep=False, model=None, inputs=None):
        """Loss and accuracy of `model` (the classifier) on `inputs` (the
        images, or what `model` takes for them); `keep` keeps the
        probabilities and the most confident mistakes for the report."""
        probabilities = self._probabilities(arrays.BatchSource(
            image_set.images if inputs is None else inputs,
            batch_size=self.config.batch_size).dataset(), model)
        labels = image_set.labels
        if keep:
            from tfhub_ft import report as report_lib
            self.validation_labels = np.asarray(labels)
            self.validation_probabilities = probabilities
            indices = report_lib.most_confident_mistakes(labels, probabilities)
            self._mistakes = (indices, arrays.take(image_set.images, indices))
            self._validation_paths = image_set.paths
        chosen = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
        return {"loss": float(-np.mean(np.log(chosen))),
                "accuracy": float(np.mean(probabilities.argmax(-1) == labels)),
                "count": int(len(labels))}

    def export(self, export_dir, tflite=None):
        """Writes the SavedModel (and labels.txt) to `export_dir`, atomically.

        See `export.export_saved_model` for the signatures. In a
        multi-worker run every worker must call this (saving may need all of
        them), but only the chief writes `export_dir`; the others write to a
        temporary folder that is removed.

        Args:
            export_dir: The folder to write; an earlier export there is
                replaced.
            tflite: None, or one of `tflite.TFLITE_MODES` ("float32",
                "float16", "dynamic", "int8") to also write
                `export_dir/model.tflite` (uint8 [1, S, S, 3] in, float32
                probabilities [1, C] out; see `tfhub_ft.tflite`) and its
                parity report against the SavedModel on the validation
                images, `export_dir/tflite_parity.json`. int8 calibrates on
                a seeded sample of the training images, and dynamic and
                int8 are bias-corrected on it (`tflite.bias_correction`).

        Returns:
            The export folder path; None on a non-chief worker.

        Raises:
            ValueError: for an unknown `tflite` mode, a `tflite` mode for a
                backbone that computes in float16 (`tflite.check_backbone`),
                before `fit`, or for an `export_dir` inside the last fit's
                image folders.
        """
        self._require_model()
        self._check_outside_image_folders("export_dir", export_dir)
        write_extras = None
        if tflite is not None:
            tflite_lib.check_mode(tflite)
            tflite_lib.check_backbone(self.backbone, tflite)
            validation_images, validation_labels = self._parity_data or (None, None)

            def write_extras(folder):
                tflite_lib.export_tflite(
                    self.model, self.image_size, folder, tflite,
                    self._representative_images, validation_images, validation_labels)

        if self.strategy.extended.should_checkpoint:
            with self._stage("export"):
                return export_lib.export_saved_model(self.model, self.class_names,
                                                     export_dir, self.image_size,
                                                     write_extras=write_extras,
                                                     **self._decode_options())
        scratch = tempfile.mkdtemp(prefix="tfhub_ft_worker_export_")
        try:
            export_lib.export_saved_model(self.model, self.class_names,
                                          os.path.join(scratch, "export"), self.image_size,
                                          **self._decode_options())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

    def export_backbone(self, export_dir):
        """Writes the backbone, with its fine-tuned weights, as a TF Hub module.

        A TF2 SavedModel in the image feature-vector convention (float32
        [N, H, W, 3] RGB in [0, 1] -> float32 [N, D]), with the variable
        names of the original module, written atomically; it loads as a
        `FineTuner` or `HubBackbone` handle and in `hub.KerasLayer`. See
        `hub_export.export_backbone`. Before `fit` it writes the module as
        loaded. As with `export`, every worker of a multi-worker run must
        call it and only the chief writes `export_dir`.

        Returns:
            The export folder path; None on a non-chief worker.

        Raises:
            ValueError: after a `fit` that stopped before it finished (the
                backbone is half fine-tuned), or for an `export_dir` inside
                the last fit's image folders (see `hub_export.export_backbone`
                for the rest).
        """
        from tfhub_ft import hub_export
        if self._unfinished_fit:
            self._require_model()
        self._check_outside_image_folders("export_dir", export_dir)
        if self.strategy.extended.should_checkpoint:
            return hub_export.export_backbone(self.backbone, export_dir)
        scratch = tempfile.mkdtemp(prefix="tfhub_ft_worker_export_")
        try:
            hub_export.export_backbone(self.backbone, os.path.join(scratch, "backbone"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

    def report(self, report_dir):
        """Writes the run report of the last `fit` into `report_dir`.

        curves.png, confusion_matrix.png and .csv, per_class.csv,
        mistakes.png and .csv, and summary.json (see `report.write_report`): the
        validation images' metrics, the history of both phases, the epoch
        whose weights were kept, the most confused pairs of classes, the
        config, hub handle, blocks unfrozen, image counts, skipped files and
        the seconds of each stage.

        Returns:
            {file name: path} of the files written.

        Raises:
            ValueError: before `fit`, if `report_dir` cannot be written, or
                for one inside the last fit's image folders.
        """
        self._require_model()
        self._check_outside_image_folders("report_dir", report_dir)
        from tfhub_ft import report as report_lib
        indices, images = self._mistakes
        summary = {
            "hub_handle": str(self.backbone.hub_handle),
            "config": dataclasses.asdict(self.config),
            "image_size": self.image_size,
            "blocks": len(self.backbone.blocks),
            "blocks_unfrozen": self.unfrozen_blocks,
            "image_counts": self._image_counts,
            "skipped_files": self.skipped_files,
            "stage_seconds": {name: round(seconds, 3)
                              for name, seconds in self.stage_seconds.items()},
            "validation_metrics": dict(self.validation_metrics or {}),
            "cache_usage": self.cache_usage,
        }
        if self.time_plan is not None:
            summary["time_plan"] = dataclasses.asdict(self.time_plan)
        return report_lib.write_report(
            report_dir, self.class_names, self.validation_labels,
            self.validation_probabilities, history=self.history,
            mistake_images=images, mistake_indices=indices, summary=summary,
            paths=self._validation_paths, kept_epoch=self.kept_epoch,
            loss_name=recipe.loss_description(self.config))

    def find_learning_rate(self, train, phase="head", validation=None,
                           validation_split=None, class_names=None, data_dir=None,
                           min_learning_rate=1e-7, max_learning_rate=10.0, steps=100,
                           plot_path=None):
        """The learning-rate range test of one phase, on cached activations.

        Runs `steps` training steps of the phase's optimizer (Adam for
        "head", AdamW with the config's weight decay for "fine_tune") at
        rates growing exponentially from `min_learning_rate` to
        `max_learning_rate` (Smith 2017; fastai's `lr_find`), stopping when
        the loss diverges, on the frozen activations computed once, so it
        costs seconds. For "fine_tune" the head is first trained as `fit`'s
        phase 1 would, then the top `unfreeze_blocks` are unfrozen. The
        classifier built here is a scratch one: the weights it ends with are
        those it started the test with, and `self.model` is not changed.

        Args:
            train, validation, validation_split, class_names, data_dir: as
                `load_data` (the validation images are only decoded, not
                used, except for phase 1 before "fine_tune").
            phase: "head" or "fine_tune".
            min_learning_rate, max_learning_rate: The range (> 0).
            steps: Steps of the test, one rate each (>= 2).
            plot_path: Where to write the plot (lr_find.png); None: none.

        Returns:
            A `lr_finder.LearningRateFinding`: rates, losses, `suggestion`
            and the `rule` that chose it.

        Raises:
            ValueError: for an unknown phase or rate range.
        """
        if phase not in ("head", "fine_tune"):
            raise ValueError(
                "Invalid value for `phase`. Expected \"head\" or \"fine_tune\". "
                f"Received: phase={phase!r}")
        lr_finder.exponential_rates(min_learning_rate, max_learning_rate, steps)
        config = self.config
        if phase == "fine_tune" and config.fine_tune_epochs == 0:
            config = config.replace(fine_tune_epochs=1)
        # Nothing of the test's arrays outlives it: its spill files go now.
        with contextlib.closing(self._new_budget()) as budget:
            train_set, validation_set = self.load_data(
                train, validation, validation_split, class_names, data_dir, budget)
            keras.utils.set_random_seed(config.seed)
            classes = len(train_set.class_names)
            with self.strategy.scope():
                model = model_lib.build_classifier(
                    self.backbone, classes, self.image_size, config.dropout_rate,
                    config.augmentation, config.seed)
                self.backbone.freeze_all()
                # The head's test needs only the features: no split.
                plan = (recipe.plan_fine_tune(self.backbone, config) if phase == "fine_tune"
                        else recipe.FineTunePlan())
                frozen = cache.compute_frozen_activations(model, train_set, validation_set,
                                                          config, budget, plan.split)
                loss = recipe.classification_loss(config, train_set.labels, model.num_classes)
                if phase == "head":
                    trainee = model_lib.CachedInputClassifier(model)
                    inputs = frozen.train_features
                    make_optimizer = keras.optimizers.Adam
                else:
                    recipe.train_head(model, frozen, train_set, validation_set, config, verbose=0)
                    self.backbone.unfreeze_top_blocks(len(plan.blocks))
                    trainee, inputs, _ = recipe.fine_tune_trainee(
                        model, frozen, train_set, validation_set)

                    def make_optimizer(rate):
                        return recipe.fine_tune_optimizer(rate, config)
                batches = cache.training_batches(inputs, train_set.labels, classes, config)
                finding = lr_finder.range_test(
                    trainee, batches.batches, make_optimizer, loss, min_learning_rate,
                    max_learning_rate, steps)
                self.backbone.freeze_all()
        if plot_path:
            name = f"{phase}_learning_rate"
            finding.plot_path = lr_finder.plot(
                finding, plot_path, title=f"Learning-rate range test, {phase} phase",
                current=(name, getattr(self.config, name)))
        return finding

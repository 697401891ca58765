"""The two training phases: head on a frozen backbone, then the top blocks.

Each phase is a function of (model, cached activations, data, config) that
returns its Keras history, so `FineTuner.fit` reads as the recipe itself.
"""

import contextlib
import dataclasses
import logging
import math
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import _keras_fit_workaround, cache, checkpoints
from tfhub_ft import model as model_lib
from tfhub_ft.blocks import top_blocks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FineTunePlan:
    """What phase 2 trains, and how: decided once, before phase 1.

    Attributes:
        blocks: The `blocks.Block`s phase 2 unfreezes, bottom to top (empty
            when there is no phase 2).
        split: The `backbone.BackboneSplit` phase 2 trains from (its bottom
            is run once by the frozen pass), or None: phase 2 runs the whole
            model on the images each step.
        whole_module_reason: Why there is no split (None when there is).
    """

    blocks: Tuple = ()
    split: object = None
    whole_module_reason: Optional[str] = None


def plan_fine_tune(backbone, config) -> FineTunePlan:
    """Chooses phase 2's blocks and whether the backbone is split for it.

    Args:
        backbone: The `HubBackbone`.
        config: `FineTuneConfig` (`fine_tune_epochs`, `unfreeze_blocks`).

    Raises:
        ValueError: if `unfreeze_blocks` exceeds the backbone's blocks.
    """
    if config.fine_tune_epochs == 0:
        return FineTunePlan(whole_module_reason="no phase 2 (fine_tune_epochs=0)")
    blocks = tuple(top_blocks(backbone.blocks, config.unfreeze_blocks))
    split, reason = backbone.plan_split(config.unfreeze_blocks)
    if blocks:
        logger.info(
            "Phase 2 will fine-tune the top %d of %d blocks (%s; %s weights, batch-norm "
            "statistics included) %s",
            len(blocks), len(backbone.blocks),
            blocks[0].name if len(blocks) == 1 else f"{blocks[0].name} to {blocks[-1].name}",
            f"{sum(block.parameter_count for block in blocks):,}",
            "through the whole module each step" if split is None else
            "from the cached output of the frozen blocks below them (split backbone)"
            if len(blocks) < len(backbone.blocks) else "from the cached input (no block "
            "below them stays frozen)")
    else:
        logger.info("Phase 2 fine-tunes no block (unfreeze_blocks=0): it trains the head "
                    "further at fine_tune_learning_rate, on the cached features as phase 1 "
                    "does.")
    return FineTunePlan(blocks, split, reason)


def classification_loss(config, labels=None, num_classes=None):
    """The cross-entropy of both phases, from logits, with label smoothing.

    With `config.class_weight == "balanced"` each image's loss is weighted
    by `balanced_class_weights(labels, num_classes)` of its class.
    """
    if config.class_weight == "balanced":
        return WeightedCategoricalCrossentropy(
            balanced_class_weights(labels, num_classes), config.label_smoothing)
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing)


def loss_description(config):
    """What `classification_loss` computes, in words, for the loss axis of
    the report's curves: "cross-entropy, label smoothing 0.1"."""
    parts = ["cross-entropy"]
    if config.label_smoothing:
        parts.append(f"label smoothing {config.label_smoothing:g}")
    if config.class_weight == "balanced":
        parts.append("class-weighted")
    return ", ".join(parts)


def balanced_class_weights(labels, num_classes):
    """Weights N / (C * count of the class), as scikit-learn's "balanced".

    A uniform class distribution gets weight 1 everywhere, and the weights
    average to 1 over the training images.

    Args:
        labels: int [N] training labels in [0, num_classes).

    Returns:
        float numpy [num_classes]; a class without images gets 0.
    """
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


class WeightedCategoricalCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy from logits, each example's loss weighted
    by its class's weight (read from the one-hot label).

    Args:
        class_weights: float [C].
        label_smoothing: As `keras.losses.CategoricalCrossentropy`.
    """

    def __init__(self, class_weights, label_smoothing=0.0, name="weighted_crossentropy"):
        super().__init__(name=name)
        self.class_weights = [float(w) for w in class_weights]
        self.label_smoothing = label_smoothing
        self._crossentropy = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def call(self, y_true, y_pred):
        weights = keras.ops.sum(
            keras.ops.cast(y_true, "float32") * keras.ops.array(self.class_weights, "float32"),
            axis=-1)
        return self._crossentropy(y_true, y_pred) * weights

    def get_config(self):
        return {"class_weights": self.class_weights,
                "label_smoothing": self.label_smoothing, "name": self.name}


def train_head(model, frozen, train, validation, config, verbose="auto",
               checkpoint=checkpoints.NO_WORK_DIRECTORY.phase("head"), callbacks=(),
               phase_timer=None):
    """Phase 1: trains the Dense head with the whole backbone frozen.

    The head trains on the cached backbone features (`frozen`), each image
    in one random augmentation variant per epoch, as the full model would
    see it.

    Args:
        model: an `ImageClassifier` whose backbone is frozen.
        frozen: `cache.FrozenActivations` of `train` and `validation`.
        train, validation: `data.ImageSet`s (for the labels).
        config: `FineTuneConfig`.
        checkpoint: A `checkpoints.PhaseCheckpoint` that saves every epoch
            and resumes an interrupted phase; by default a
            `checkpoints.PlainPhase` (no checkpoints).
        callbacks: Extra Keras callbacks (timing, logging).
        phase_timer: None, or under a time budget a function of
            (steps_per_epoch, validation_steps, validates_at_start, on_plan)
            returning the phase's `time_budget.PhaseTimer`, which may stop
            the phase early.

    Returns:
        The Keras history dict (loss, accuracy, val_loss, val_accuracy).
    """
    if config.head_epochs == 0:
        return {}
    head = model_lib.CachedInputClassifier(model)
    head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate),
                 loss=classification_loss(config, train.labels, model.num_classes),
                 metrics=["accuracy"])
    classes = model.num_classes
    train_batches = cache.training_batches(frozen.train_features, train.labels, classes,
                                           config)
    validation_batches = cache.evaluation_batches(
        frozen.validation_features, validation.labels, classes, config)
    if phase_timer is not None:
        callbacks = [TimeBudgetCallback(phase_timer(
            steps_per_epoch=train_batches.steps, validation_steps=validation_batches.steps,
            validates_at_start=False, on_plan=None)), *callbacks]
    return _fit(head, train_batches, validation_batches.dataset(), config.head_epochs,
                verbose, callbacks, checkpoint)


def fine_tune_schedule(config, train_size, replannable=False):
    """Phase 2's learning rate: cosine decay from `fine_tune_learning_rate`
    to 0 over `fine_tune_epochs` epochs of `train_size` images (SGDR,
    Loshchilov & Hutter 2017, without restarts).

    Args:
        replannable: Under a time budget: a `ReplannableCosineDecay`, whose
            end the budget's plans move.

    Returns:
        A `keras.optimizers.schedules.CosineDecay` (or the
        `ReplannableCosineDecay`) of the optimizer step.
    """
    steps = math.ceil(train_size / config.batch_size) * config.fine_tune_epochs
    schedule = ReplannableCosineDecay if replannable else keras.optimizers.schedules.CosineDecay
    return schedule(config.fine_tune_learning_rate, steps)


class ReplannableCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A cosine decay to 0 whose end can be moved while training.

    Phase 2's schedule under a time budget. Keras traces the train function
    once, at the first step, and a `CosineDecay`'s step count is a Python
    number baked into that trace; the step count is only known once steps
    have been timed, after that trace. This schedule reads its end from
    variables, so `replan` takes effect at the next step without a retrace
    (tests/test_recipe.py checks the rate a fitted model's optimizer uses).
    The other way, a short probe that times steps before the phase's `fit`,
    would train steps outside the phase (or throw them away) and time them
    through another trace; here every timed step is one of the phase's.
    From a replan the rate continues from where it was along a cosine that
    reaches 0 at the new end: rate = peak * (1 + cos(pi * p)) / 2, with the
    progress p going linearly from its value at the replan to 1 at the end.
    Before any replan it is `CosineDecay(peak, decay_steps)`.

    Args:
        initial_learning_rate: The peak rate, at step 0.
        decay_steps: The end until the first `replan`.
    """

    def __init__(self, initial_learning_rate, decay_steps):
        super().__init__()
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)

        def variable(value, name):
            return keras.Variable(float(value), dtype="float32", trainable=False, name=name)

        self.start_step = variable(0, "cosine_start_step")
        self.start_progress = variable(0, "cosine_start_progress")
        self.end_step = variable(max(1, self.decay_steps), "cosine_end_step")

    def progress(self, step):
        """The cosine's progress in [0, 1] at `step`, in Python."""
        start, end = float(self.start_step.numpy()), float(self.end_step.numpy())
        done = float(self.start_progress.numpy())
        fraction = min(max((step - start) / max(end - start, 1.0), 0.0), 1.0)
        return done + (1.0 - done) * fraction

    def replan(self, step, end_step):
        """Makes the rate reach 0 at `end_step`, continuing from `step`."""
        progress = self.progress(step)
        self.start_progress.assign(progress)
        self.start_step.assign(float(step))
        self.end_step.assign(float(max(end_step, step + 1)))

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        span = ops.maximum(self.end_step - self.start_step, 1.0)
        fraction = ops.clip((step - self.start_step) / span, 0.0, 1.0)
        progress = self.start_progress + (1.0 - self.start_progress) * fraction
        return self.initial_learning_rate * 0.5 * (1.0 + ops.cos(math.pi * progress))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps}


class TimeBudgetCallback(keras.callbacks.Callback):
    """Feeds a phase's `time_budget.PhaseTimer` and stops the phase when it says.

    Put first among the phase's callbacks, so that its `on_train_begin`
    runs before early stopping's evaluation (timed as the first estimate of
    a validation) and its `on_epoch_end` right after the validation.
    """

    def __init__(self, timer):
        super().__init__()
        self.timer = timer

    def on_train_begin(self, logs=None):
        self.timer.train_begin()

    def on_epoch_begin(self, epoch, logs=None):
        self.timer.epoch_begin()

    def on_train_batch_begin(self, batch, logs=None):
        if self.timer.steps_done == 0:
            self.timer.first_batch_begin()

    def on_train_batch_end(self, batch, logs=None):
        if self.timer.batch_end():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.timer.epoch_end():
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.timer.train_end()


def fine_tune_optimizer(learning_rate, config, blocks=()):
    """Phase 2's optimizer: AdamW with the config's weight decay, none on
    batch-norm scales and biases (decaying them only pulls the pretrained
    normalisation away from what the following layers expect), and with
    `config.layer_decay` < 1 a lower rate for each lower block
    (`layer_rate_scales`).

    Args:
        learning_rate: A float or a Keras schedule.
        blocks: The unfrozen blocks' Keras variables, one list per block,
            bottom to top (only read when `config.layer_decay` < 1).
    """
    scales = [(variable, scale) for scale, variables in zip(
        layer_rate_scales(len(blocks), config.layer_decay), blocks) for variable in variables]
    optimizer = LayerwiseAdamW(scales, learning_rate, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def layer_rate_scales(block_count, layer_decay):
    """Learning-rate factors of `block_count` blocks, bottom to top: the top
    block gets 1, each block below `layer_decay` times the one above.

    Returns:
        A list of floats in (0, 1].
    """
    return [layer_decay ** (block_count - 1 - i) for i in range(block_count)]


class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW whose update of each variable uses the learning rate times its
    scale (1 for variables without one, such as the head's), applied by
    TensorFlow's fused Adam kernel.

    Adam's step is invariant to a gradient's scale, so the rates themselves
    are scaled, per variable, in `update_step`. The update is Keras's Adam
    (Kingma & Ba 2015, Algorithm 1 with epsilon added to sqrt(v), as
    Keras does) computed by `tf.raw_ops.ResourceApplyAdam`, one op per
    variable where Keras builds about fifteen: phase 2's first step, which
    traces the update of every unfrozen variable, is about 0.6 s shorter.
    Weights agree with `keras.optimizers.AdamW` to float32 rounding
    (tests/test_recipe.py). Weight decay stays Keras's own step, before it.
    Sparse gradients and amsgrad take Keras's update.

    Args:
        scales: [(Keras variable, factor)] for the variables to scale.
        Others: as `keras.optimizers.AdamW`.
    """

    def __init__(self, scales, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # _var_key: the key Keras's own per-variable state uses, the same for
        # a Keras variable and the tf.Variable update_step receives.
        self._rate_scales = {self._var_key(v): scale for v, scale in scales if scale != 1.0}

    def update_step(self, gradient, variable, learning_rate):
        scale = self._rate_scales.get(self._var_key(variable), 1.0)
        if scale != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, scale)
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def fine_tune_trainee(model, frozen, train, validation):
    """What phase 2 trains and on what: the top of a split backbone on the
    cached boundary tensors, the head alone on the cached features when no
    block is unfrozen, or the whole model on the images.

    Returns:
        (Keras model, training inputs: one array tuple per augmentation
        variant, validation inputs).
    """
    if frozen.split is not None:
        return (model_lib.CachedInputClassifier(model, top=frozen.split.top),
                frozen.train_boundary, frozen.validation_boundary)
    if not model.backbone.trainable_weights:
        # No block unfrozen: the features are the frozen pass's, as in phase 1.
        return (model_lib.CachedInputClassifier(model), frozen.train_features,
                frozen.validation_features)
    return model, [train.images], validation.images


def fine_tune(model, frozen, train, validation, config, verbose="auto",
              checkpoint=checkpoints.NO_WORK_DIRECTORY.phase("fine_tune"), callbacks=(),
              phase_timer=None):
    """Phase 2: trains the unfrozen top blocks and the head at a low rate.

    AdamW with a cosine decay from `fine_tune_learning_rate` to 0 over the
    phase, and early stopping on validation loss that restores the best
    weights, the phase's starting weights included when phase 1 trained
    the head (with `head_epochs=0` the start is an untrained head, which is
    never kept). With a split backbone
    only the top runs, from the cached boundary tensors; otherwise the whole
    model runs on the images. Under a time budget (`phase_timer`) the
    cosine is a `ReplannableCosineDecay` that the timer's plans move to the
    planned end.

    Args: as `train_head`.

    Returns:
        The Keras history dict.
    """
    if config.fine_tune_epochs == 0:
        return {}
    schedule = fine_tune_schedule(config, len(train), replannable=phase_timer is not None)
    optimizer = fine_tune_optimizer(
        schedule, config,
        [model.backbone.block_variables(block)
         for block in top_blocks(model.backbone.blocks, config.unfreeze_blocks)])
    classes = model.num_classes
    trainee, train_inputs, validation_inputs = fine_tune_trainee(
        model, frozen, train, validation)
    train_batches = cache.training_batches(train_inputs, train.labels, classes, config)
    validation_batches = cache.evaluation_batches(validation_inputs, validation.labels,
                                                  classes, config)
    trainee.compile(optimizer=optimizer,
                    loss=classification_loss(config, train.labels, classes),
                    metrics=["accuracy"])
    callbacks = [EarlyStoppingFromStart(
        validation_batches, patience=config.early_stopping_patience,
        count_start=config.head_epochs > 0), *callbacks]
    if phase_timer is not None:
        # First, so that it times early stopping's evaluation at the start.
        callbacks.insert(0, TimeBudgetCallback(phase_timer(
            steps_per_epoch=train_batches.steps, validation_steps=validation_batches.steps,
            validates_at_start=True,
            on_plan=lambda plan, step: schedule.replan(step, plan.steps))))
    return _fit(trainee, train_batches, validation_batches.dataset(),
                config.fine_tune_epochs, verbose, callbacks, checkpoint)


class EarlyStoppingFromStart(keras.callbacks.EarlyStopping):
    """Early stopping on validation loss whose first candidate is the start.

    The weights the phase starts from compete with every epoch's: if no
    epoch beats their validation loss, they come back, so a fine-tuning run
    that diverges (too high a learning rate for the data) ends where the
    head phase left it instead of worse.

    Args:
        validation_batches: The validation `arrays.BatchSource`.
        patience: Epochs without a better validation loss before stopping.
        count_start: False where the start is not a model to go back to (an
            untrained head: phase 1 did not run). Its validation loss, near
            log(classes), can beat an epoch that is already far more
            accurate; without it, the best epoch is kept.
    """

    def __init__(self, validation_batches, patience, count_start=True):
        super().__init__(monitor="val_loss", patience=patience,
                         restore_best_weights=True)
        self.validation_batches = validation_batches
        self.count_start = count_start

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.epochs_run = 0
        if not self.count_start:
            return
        self.best = self.start_loss = self.model.evaluate(
            self.validation_batches.dataset(), verbose=0, return_dict=True)["loss"]
        self.best_weights = self.model.get_weights()
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.epochs_run = epoch + 1

    def on_train_end(self, logs=None):
        if self.epochs_run and self.best_epoch == -1:
            # Cut short by something else (the time budget), the phase may
            # just not have had the time: no advice on the recipe then.
            planned = (self.params or {}).get("epochs", 0)
            cut = self.epochs_run < planned and not self.stopped_epoch
            logger.warning(
                "Phase 2 did not lower the validation loss below where it started "
                "(%.4f): the model keeps the weights from before it, as phase 1 left them.%s",
                self.start_loss,
                f" It was cut short after {self.epochs_run} of {planned} "
                "epochs." if cut else " A lower fine_tune_learning_rate, or fewer "
                "unfreeze_blocks, may help.")
        elif self.epochs_run and self.best_epoch + 1 < self.epochs_run:
            logger.info("Phase 2 keeps the weights of its epoch %d of %d (the lowest "
                        "validation loss, %.4f)", self.best_epoch + 1, self.epochs_run,
                        self.best)
        super().on_train_end(logs)


def _fit(trainee, train_batches, validation_data, epochs, verbose, callbacks, checkpoint):
    """Keras fit of one phase through its checkpoint (`checkpoints.PlainPhase`
    when the run has no work directory)."""
    if not trainee.optimizer.built:
        # Slot variables created inside the first training step make
        # tf.function trace that step twice (variables may only be made on
        # a first trace): built here, phase 2 starts about 3 s sooner.
        trainee.optimizer.build(trainee.trainable_weights)
    with _keras_fit_workaround.keras_fit_under_strategy(trainee, train_batches.element_spec), \
            _without_keras_retracing_warnings():
        return checkpoint.fit(trainee, train_batches, validation_data, epochs,
                              callbacks, verbose)


class _KerasRetracingFilter(logging.Filter):
    """Drops TensorFlow's frequent-retracing warning about Keras's own step
    functions. Every phase of every `fit` makes new ones, and a last partial
    batch is a new shape, so a notebook that fits a few times in one process
    saw "5 out of the last 13 calls to <function TensorFlowTrainer.
    _make_function.<locals>.multi_step_on_iterator> triggered tf.function
    retracing" twice per fit, about nothing it could change."""

    def filter(self, record):
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and "TensorFlowTrainer._make_function" in message)


@contextlib.contextmanager
def _without_keras_retracing_warnings():
    tf_logger = logging.getLogger("tensorflow")
    retracing = _KerasRetracingFilter()
    tf_logger.addFilter(retracing)
    try:
        yield
    finally:
        tf_logger.removeFilter(retracing)

"""A time budget for a whole run (`FineTuneConfig.time_budget_s`).

The budget is the wall time a user waits for, counted from a start
(`FineTuner`'s creation, or the `start_time` its caller gives: the command
passes the moment its `main` started) through loading and decoding, the
frozen pass, both phases, the final validation scoring and one export.

- Loading, decoding and the frozen pass cannot be shortened: they are
  measured as they happen.
- Then the validation scoring and the export are estimated and reserved
  (`estimate_reserve`): the scoring from the frozen pass's seconds per
  image, the export from how long the backbone took to load (config.py's
  `TIME_BUDGET_*` constants say what was measured).
- Phase 2, when the budget can no longer reach it, is skipped with a
  WARNING saying what to do (`plan_phase_start`); phase 1 is not skipped:
  with the budget spent it runs one untimed epoch over it, with a WARNING
  (a head left untrained would make the classifier no better than chance).
  Phase 1 may use at most `TIME_BUDGET_HEAD_SHARE` of what is left when
  phase 2 follows; phase 2 gets the rest, and does not start with less
  than a guess of its first epoch from the frozen pass
  (`estimate_fine_tune_epoch`; then phase 1 may use all).
- Each phase is planned from its own measured step and validation times
  (`plan_epochs`, fed by a `PhaseTimer`): first after a few timed steps of
  its first epoch (the first step, which traces the train function, is left
  out), then again after every epoch. The plan is whole epochs, except when
  not even the first epoch fits: then phase 2's is cut to the steps that
  fit (phase 1's first epoch always ends, past its deadline if need be,
  with a WARNING: a head trained on a few steps would make the classifier
  hardly better than chance); and
  phase 2 gives the time left after its whole epochs to one more epoch cut
  to the steps that fit (at least `TIME_BUDGET_PARTIAL_EPOCH_SHARE` of an
  epoch; phase 1 leaves that time to phase 2). Phase 2's cosine is moved
  to end at the planned step (`recipe.ReplannableCosineDecay`), so the rate
  still reaches ~0. A phase stops at its planned end, or mid-epoch when the
  measured steps say the next would not fit before its deadline (not in
  phase 1's first epoch).

Everything here is arithmetic on readings of a clock that is a parameter
(`time.monotonic` by default), with no TensorFlow, so tests drive it with a
fake clock; `recipe.TimeBudgetCallback` feeds a `PhaseTimer` from Keras.
"""

import dataclasses
import logging
import math
import time
from typing import Optional

from tfhub_ft import config as config_lib

logger = logging.getLogger(__name__)

# Timed steps (after the first, traced one) before a phase's first plan.
PROBE_STEPS = 5
PHASE_NAMES = {"head": ("phase 1", "head epochs"),
               "fine_tune": ("phase 2", "fine-tune epochs")}


def check_time_budget_use(time_budget_s, work_dir=None, multi_worker=False):
    """Refuses a budget where it cannot work.

    A budgeted run's epochs follow from times measured while it runs, so a
    run resumed from a `work_dir` could not continue it consistently (its
    cosine and epoch count were planned for the first run's clock), and the
    workers of a multi-worker run would each plan from their own clock.

    Raises:
        ValueError: with `work_dir` or `multi_worker`.
    """
    if time_budget_s is None:
        return
    if work_dir is not None:
        raise ValueError(
            "Invalid value for `time_budget_s`: a time budget cannot be combined with "
            f"`work_dir` (received: time_budget_s={time_budget_s!r}, "
            f"work_dir={str(work_dir)!r}). The budget plans the epochs from times "
            "measured as the run goes, which a resumed run could not repeat. Drop "
            "one: checkpoints without a budget, or a budget without work_dir.")
    if multi_worker:
        raise ValueError(
            "Invalid value for `time_budget_s`: a time budget is not supported in a "
            "multi-worker run (each worker would plan its epochs from its own clock). "
            "Set fine_tune_epochs and head_epochs instead.")


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """What one phase may do within the budget, and why.

    Attributes:
        phase: "head" or "fine_tune".
        epochs: Epochs to run, the last one cut to `steps` when `steps` <
            epochs x steps per epoch (in phase 2, the first epoch when it
            does not fit whole, or one more after the whole epochs that
            fit); 0: the phase is skipped.
        config_epochs: The config's epochs of the phase (the most).
        deadline_s: Seconds after the budget's start by which the phase
            must end.
        steps: Training steps in all; None until steps were measured (the
            config's count stands until then).
        epoch_seconds: Estimated seconds of one epoch, its steps and its
            validation; None until measured.
        reason: One readable line: what was chosen and why.
        over_budget: The budget was spent before phase 1, which runs one
            epoch anyway (untimed): an untrained head would make the
            classifier no better than chance.
        overruns: Phase 1's first epoch does not fit before the phase's
            deadline and runs to its end anyway (a head cut to a few steps
            was near chance), past the deadline; kept by the later plans of
            the phase.
    """

    phase: str
    epochs: int
    config_epochs: int
    deadline_s: float
    steps: Optional[int] = None
    epoch_seconds: Optional[float] = None
    reason: str = ""
    over_budget: bool = False
    overruns: bool = False


@dataclasses.dataclass(frozen=True)
class TimePlan:
    """The budget of one `fit`, as it was spent (`FineTuner.time_plan`).

    Attributes:
        budget_s: The budget.
        reserve_s: Seconds kept for the final validation scoring, one
            export and `extra_reserve_s`.
        reserve_reason: What `reserve_s` is made of (validation, export,
            after fit).
        head, fine_tune: The last `PhasePlan` of each phase (None: the
            phase has no epochs in the config).
        epochs_run: {"head": epochs, "fine_tune": epochs} actually run.
        used_s: Seconds of the budget used when `fit` returned.
    """

    budget_s: float
    reserve_s: float
    reserve_reason: str
    head: Optional[PhasePlan]
    fine_tune: Optional[PhasePlan]
    epochs_run: dict
    used_s: float


class TimeBudget:
    """The budget's clock: seconds used since the start.

    Args:
        seconds: The budget.
        start: The clock reading the budget counts from.
        clock: A function returning seconds (monotonic).
    """

    def __init__(self, seconds, start, clock=time.monotonic):
        self.seconds = float(seconds)
        self.start = start
        self.clock = clock
        self.reserve_s = 0.0
        self.reserve_reason = "nothing reserved yet"
        # The first phase-2 epoch estimated before it runs (plan_phase_start).
        self.fine_tune_s = 0.0

    def used(self):
        """Seconds since the start."""
        return self.clock() - self.start


def estimate_reserve(frozen_seconds, frozen_images, validation_images, load_seconds,
                     extra_s=0.0, cached_scoring=False):
    """Seconds to keep for the final validation scoring and one export.

    Args:
        frozen_seconds: What the frozen pass took.
        frozen_images: Images it ran the backbone on (training images times
            the augmentation variants, plus the validation images).
        validation_images: Images the final scoring runs the model on.
        load_seconds: What loading the backbone (creating the `FineTuner`)
            took; the export is estimated from it (config.py).
        extra_s: Added as it is (the command's exit).
        cached_scoring: The final scoring reads the cached boundary tensors
            of a split backbone (the top only), not the images.

    Returns:
        (seconds, a readable account of them).
    """
    per_image = frozen_seconds / max(frozen_images, 1)
    if cached_scoring:
        share, fixed = (config_lib.TIME_BUDGET_CACHED_SCORING_SHARE,
                        config_lib.TIME_BUDGET_CACHED_SCORING_S)
    else:
        share, fixed = 1.0, config_lib.TIME_BUDGET_TRACE_S
    validation = share * per_image * validation_images + fixed
    export = (config_lib.TIME_BUDGET_EXPORT_BASE_S
              + config_lib.TIME_BUDGET_EXPORT_PER_LOAD * load_seconds)
    # How each was estimated is config.py's; the line says what was kept.
    reason = (f"{validation:.1f} s for validation ({validation_images} images), "
              f"{export:.1f} s for the export (the backbone loaded in {load_seconds:.1f} s)")
    if extra_s:
        reason += f", {extra_s:.1f} s for what runs after fit"
    return validation + export + extra_s, reason


def _budget_words(budget_s):
    return f"Time budget {budget_s:g} s"


def estimate_fine_tune_epoch(frozen_seconds, frozen_images, train_images):
    """A first guess of phase 2's first epoch, before anything of it ran.

    The frozen pass's seconds per image times the training images, times
    config.py's `TIME_BUDGET_FIRST_EPOCH_FACTOR`. It only decides whether
    phase 2 starts at all (and so whether phase 1 leaves it anything); its
    epochs are planned from its own measured steps.
    """
    return (config_lib.TIME_BUDGET_FIRST_EPOCH_FACTOR * frozen_seconds
            * train_images / max(frozen_images, 1))


def plan_phase_start(phase, config_epochs, budget_s, used_s, reserve_s, used_by,
                     fine_tune_s=None):
    """Before a phase: its deadline, or 0 epochs when the budget cannot reach it.

    Args:
        phase: "head" or "fine_tune".
        config_epochs: The config's epochs of the phase (> 0).
        budget_s, used_s, reserve_s: The budget, the seconds used so far and
            the seconds reserved after `fit`'s phases.
        used_by: What used them, for the reason ("loading and the frozen
            pass").
        fine_tune_s: The estimated first epoch of phase 2
            (`estimate_fine_tune_epoch`); None when there is no phase 2.
            Phase 1 leaves phase 2 part of the time only when at least this
            is left, and phase 2 does not start with less.

    Returns:
        A `PhasePlan` (`epochs` is 0 when the phase is skipped; else the
        config's, until measured). Phase 1 is never skipped: with the
        budget spent it runs one epoch over it (`over_budget`), and phase 2
        is skipped.
    """
    name, _ = PHASE_NAMES[phase]
    left = budget_s - reserve_s - used_s
    spent = (f"{_budget_words(budget_s)} already spent before {name}: {used_s:.1f} s "
             f"used by {used_by}, {reserve_s:.1f} s reserved for validation and export")
    needed = 0.0
    if left > 0 and phase == "fine_tune" and fine_tune_s and left < fine_tune_s:
        spent = (f"{_budget_words(budget_s)}: {used_s:.1f} s used by {used_by}, "
                 f"{reserve_s:.1f} s reserved for validation and export: the {left:.1f} s "
                 f"left cannot fit a first {name} epoch (~{fine_tune_s:.1f} s, estimated "
                 "from the frozen pass)")
        needed = fine_tune_s
    if left <= 0 or needed:
        above = (f"~{math.ceil(used_s + reserve_s + needed)} s" if needed else
                 f"{math.ceil(used_s + reserve_s)} s plus the time {name} needs")
        advice = (f"Raise time_budget_s (--time_budget) above {above}, or load less "
                  "(fewer or smaller images, image_size).")
        if phase == "head":
            # On cached features an epoch takes well under a second; a head
            # left at its random start would make the export useless.
            skipped = "" if fine_tune_s is None else ", and phase 2 is skipped"
            return PhasePlan(
                phase, 1, config_epochs, deadline_s=used_s, over_budget=True, reason=(
                    f"{spent}. One head epoch runs anyway, over the budget (without it "
                    f"the head is untrained and the classifier no better than chance)"
                    f"{skipped}. {advice}"))
        return PhasePlan(
            phase, 0, config_epochs, deadline_s=used_s, steps=0, reason=(
                f"{spent}. {name.capitalize()} skipped, the head alone is trained (or set "
                f"fine_tune_epochs=0 to skip phase 2 without this warning). {advice}"))
    phase_s, why = left, ""
    if phase == "head" and fine_tune_s is not None:
        share = config_lib.TIME_BUDGET_HEAD_SHARE
        if left - share * left >= fine_tune_s:
            phase_s = share * left
            why = f" ({share:g} of the {left:.1f} s left, the rest for phase 2)"
        elif left >= fine_tune_s:
            # Half would leave phase 2 too little to start: phase 2 runs only
            # if phase 1 ends early enough to leave it a first epoch, as with
            # half, but a phase 1 that does not is not stopped at half to
            # leave time that nothing uses.
            why = (f" (all of it: half would not leave the ~{fine_tune_s:.1f} s a first "
                   "phase 2 epoch needs, which it gets if phase 1 ends in time)")
        else:
            why = (f" (all of it: less than the ~{fine_tune_s:.1f} s a first phase 2 "
                   "epoch needs is left)")
    return PhasePlan(
        phase, config_epochs, config_epochs, deadline_s=used_s + phase_s, reason=(
            f"{_budget_words(budget_s)}: {used_s:.1f} s used by {used_by}, {reserve_s:.1f} s "
            f"reserved, so {name} may take up to {phase_s:.1f} s{why}"))


def plan_epochs(plan, budget_s, used_s, steps_per_epoch, steps_done, step_s, validation_s):
    """How many of a phase's epochs fit before its deadline, from measured times.

    Pure arithmetic (no model). At an epoch's end (`steps_done` a multiple
    of `steps_per_epoch`) whole epochs are planned: as many as fit in full,
    at most the config's. Mid-epoch (the first plan, after a few timed steps)
    the current epoch is finished if it fits, and cut to the steps that fit
    before its validation if it does not (phase 1's first epoch is finished
    anyway: `overruns`). In phase 2, time left after the
    whole epochs goes to one more epoch cut to the steps that fit before its
    validation, when they are at least config.py's
    `TIME_BUDGET_PARTIAL_EPOCH_SHARE` of an epoch and the config has epochs
    left (phase 1 leaves such time to phase 2, whose deadline is set from
    what was used).

    Args:
        plan: The phase's current `PhasePlan` (its `deadline_s`,
            `config_epochs`).
        budget_s: For the reason.
        used_s: Seconds of the budget used now.
        steps_per_epoch: Training steps of one epoch.
        steps_done: Steps the phase has run.
        step_s: Measured seconds of one step (the traced first step left
            out).
        validation_s: Measured (or estimated) seconds of one validation.

    Returns:
        The new `PhasePlan`.
    """
    name, epoch_words = PHASE_NAMES[plan.phase]
    left = plan.deadline_s - used_s
    epoch_s = steps_per_epoch * step_s + validation_s
    epochs_done, into = divmod(steps_done, steps_per_epoch)
    cut, cut_extra, overrun_s = None, False, None
    if epoch_s <= 0:  # nothing measurable (a fake clock standing still): all fit
        epochs = plan.config_epochs
    elif into:
        finish = (steps_per_epoch - into) * step_s + validation_s
        if finish > left and plan.phase == "head" and not epochs_done:
            # Phase 1's first epoch ends whatever the clock says (as when the
            # budget is spent before it): a head trained on a few steps gave
            # a classifier near chance (0.17 on clothing-small).
            epochs, overrun_s = 1, finish - left
        elif finish > left:
            more = max(0, math.floor((left - validation_s) / step_s)) if step_s > 0 else 0
            cut = into + min(more, steps_per_epoch - into)
            epochs, steps = epochs_done + 1, steps_done + (cut - into)
        else:
            epochs = epochs_done + 1 + max(0, math.floor((left - finish) / epoch_s))
    else:
        epochs = epochs_done + max(0, math.floor(left / epoch_s))
    if cut is None:
        epochs = max(epochs_done, min(plan.config_epochs, epochs))
        steps = epochs * steps_per_epoch
        if (plan.phase == "fine_tune" and 0 < epoch_s and 0 < step_s
                and epochs < plan.config_epochs):
            # Whole epochs to run from here, the current one counted as its rest.
            planned = (epochs - epochs_done) * epoch_s - (into * step_s if into else 0)
            more = min(math.floor((left - planned - validation_s) / step_s),
                       steps_per_epoch - 1)
            if more >= max(1, math.ceil(
                    config_lib.TIME_BUDGET_PARTIAL_EPOCH_SHARE * steps_per_epoch)):
                cut, cut_extra = more, True
                epochs, steps = epochs + 1, steps + cut
    timing = (f"{name} epoch ~{epoch_s:.1f} s ({steps_per_epoch} steps of "
              f"{step_s * 1000:.0f} ms + {validation_s:.1f} s validation)")
    head = (f"{_budget_words(budget_s)}: {used_s:.1f} s used, {timing}, {left:.1f} s left "
            f"for {name}")
    if overrun_s is not None:
        reason = (f"{head}: its first epoch runs to its end anyway, ~{overrun_s:.1f} s past "
                  f"{name}'s deadline (a head cut to a few steps is near chance), and no "
                  "other")
    elif cut_extra:
        reason = (f"{head}, so {epochs - 1} of {plan.config_epochs} {epoch_words} and "
                  f"{cut} of {steps_per_epoch} steps of one more")
    elif cut is not None:
        reason = f"{head}: epoch {epochs} cut to {cut} of {steps_per_epoch} steps"
    else:
        reason = f"{head}, so {epochs} of {plan.config_epochs} {epoch_words}"
    return dataclasses.replace(plan, epochs=epochs, steps=steps, epoch_seconds=epoch_s,
                               reason=reason,
                               overruns=plan.overruns or overrun_s is not None)


class PhaseTimer:
    """Times one phase's steps and validation, and keeps its plan.

    Driven by Keras callbacks (`recipe.TimeBudgetCallback`); `batch_end`
    and `epoch_end` return whether the phase should stop. A step is timed
    from the end of the one before (or the epoch's start), so what runs
    between steps counts; the phase's first step, which traces the train
    function, is left out of the step time; the validation is timed from
    the last step's end to the epoch's end.

    Args:
        budget: The `TimeBudget`.
        plan: The phase's `PhasePlan` from `plan_phase_start`.
        steps_per_epoch, validation_steps: Batches of one epoch and of one
            validation.
        validates_at_start: Whether the phase evaluates the validation data
            before its first step (phase 2's early stopping does): that
            time, tracing included, then bounds the validation estimate
            until a real one is measured.
        on_plan: Called with (plan, steps done) when the planned steps
            change (phase 2 moves its cosine's end there).
        log: Where the plans are written (INFO by default).
        warn: Where a plan that overruns its deadline is written (WARNING
            by default).
    """

    def __init__(self, budget, plan, steps_per_epoch, validation_steps,
                 validates_at_start=False, on_plan=None, log=None, warn=None):
        self.budget = budget
        self.plan = plan
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.validation_steps = int(validation_steps)
        self.validates_at_start = validates_at_start
        self.on_plan = on_plan
        self.log = log or logger.info
        self.warn = warn or logger.warning
        self.steps_done = 0
        self.epochs_done = 0
        self.step_times = []
        self.traced_step_s = None
        self.validation_s = None
        self.start_validation_s = None
        self.stopped_reason = None
        self._mark = None
        self._epoch_end = None
        self._train_begin = None
        self._phase_start = None
        self._stopped_at = None
        self._first_plan = None  # (epochs, steps) of the plan logged at the start

    # Keras hooks.

    def train_begin(self):
        self._phase_start = self._train_begin = self.budget.clock()

    def first_batch_begin(self):
        if self.validates_at_start and self.start_validation_s is None:
            self.start_validation_s = self.budget.clock() - self._train_begin

    def epoch_begin(self):
        self._mark = self.budget.clock()
        if self._epoch_end is not None:
            # What the other callbacks did after the epoch (early stopping
            # copying the weights, logs) counts with its validation.
            self.validation_s += self._mark - self._epoch_end

    def batch_end(self):
        """After a step: returns True to stop the phase now."""
        now = self.budget.clock()
        elapsed, self._mark = now - self._mark, now
        self.steps_done += 1
        if self.traced_step_s is None:
            self.traced_step_s = elapsed
        else:
            self.step_times.append(elapsed)
        if self.plan.steps is None and len(self.step_times) >= min(
                PROBE_STEPS, self.steps_per_epoch - 1):
            if self.steps_done % self.steps_per_epoch:
                self._replan()
        if self.plan.steps is not None and self.steps_done >= self.plan.steps:
            self.stopped_reason = "planned end"
            return True
        if (self.step_times and self.steps_done % self.steps_per_epoch
                and (self.epochs_done or self.plan.phase != "head")):
            # The plan assumed steps as fast as the measured ones; stop
            # before a step whose time would cut into the validation after.
            if (self.budget.used() + self.step_s() + self.validation_estimate()
                    > self.plan.deadline_s):
                self.stopped_reason = "deadline"
                self._stopped_at = (self.steps_done % self.steps_per_epoch,
                                    self.epochs_done + 1)
                return True
        return False

    def epoch_end(self):
        """After an epoch and its validation: returns True to stop the phase."""
        self._epoch_end = self.budget.clock()
        self.validation_s = self._epoch_end - self._mark
        self.epochs_done += 1
        if self.stopped_reason is None:
            self._replan()
        if self.epochs_done >= self.plan.epochs or self.stopped_reason:
            self.stopped_reason = self.stopped_reason or "planned end"
            return True
        return False

    def train_end(self):
        name = PHASE_NAMES[self.plan.phase][0]
        if self.stopped_reason == "deadline":
            why = ("stopped after step {} of epoch {}: the next would not have ended "
                   "in time".format(*self._stopped_at))
        elif self.stopped_reason == "planned end" and self.plan.steps < (
                self.plan.epochs * self.steps_per_epoch):
            why = f"the last cut to {self.plan.steps % self.steps_per_epoch} steps to fit"
        elif self.epochs_done >= self.plan.config_epochs:
            why = "all of them"
        elif self.plan.overruns:
            late = self.budget.used() - self.plan.deadline_s
            why = (f"the first, which always ends, ended {max(late, 0):.1f} s past the "
                   "phase's deadline")
        elif self.stopped_reason == "planned end":
            left = self.plan.deadline_s - self.budget.used()
            # Hundredths under a second: "~0.3 s would not end in the 0.3 s
            # left" read as a contradiction.
            digits = 2 if self.plan.epoch_seconds < 1 else 1
            why = (f"another (~{self.plan.epoch_seconds:.{digits}f} s) would not end in the "
                   f"{max(left, 0):.{digits}f} s left")
        else:
            why = "early stopping"
        if self._first_plan is not None and self._first_plan[1] != self.steps_done:
            # The plan logged at the start was a first estimate, remade as epochs were
            # timed: say so, or the two lines read as a promise broken.
            why += (f"; {self._first_plan[1]} steps were planned from the first ones, "
                    "replanned as epochs were timed")
        self.log(f"Time budget: {name} ran {self.epochs_done} of "
                 f"{self.plan.config_epochs} epochs ({self.steps_done} steps) in "
                 f"{self.budget.clock() - self._phase_start:.1f} s ({why}), ending "
                 f"{self.budget.used():.1f} s into the {self.budget.seconds:g} s budget")

    # Estimates and plans.

    def step_s(self):
        """Mean seconds of the last epoch's worth of timed steps (the traced
        first step only while no other was timed)."""
        recent = self.step_times[-self.steps_per_epoch:]
        return sum(recent) / len(recent) if recent else (self.traced_step_s or 0.0)

    def validation_estimate(self):
        """The last validation's seconds; before one: at most the
        validation steps at training-step speed (a training step does more
        than a validation step), or the start's evaluation if shorter."""
        if self.validation_s is not None:
            return self.validation_s
        estimate = self.validation_steps * self.step_s()
        if self.start_validation_s is not None:
            estimate = min(estimate, self.start_validation_s)
        return estimate

    def _replan(self):
        old = self.plan
        self.plan = plan_epochs(
            old, self.budget.seconds, self.budget.used(), self.steps_per_epoch,
            self.steps_done, self.step_s(), self.validation_estimate())
        if self.plan.steps != old.steps and self.on_plan is not None:
            self.on_plan(self.plan, self.steps_done)
        if old.steps is None:
            self._first_plan = (self.plan.epochs, self.plan.steps)
            (self.warn if self.plan.overruns else self.log)(self.plan.reason)
        elif (self.plan.epochs, self.plan.steps) != (old.epochs, old.steps):
            # Replanned after an epoch: the end line says what came of it.
            logger.debug(self.plan.reason)


def phase_plan_for(phase, config, budget, used_by):
    """`plan_phase_start` on a `TimeBudget` now; logs the plan, or warns
    when the phase is skipped.

    Returns:
        The `PhasePlan`.
    """
    epochs = config.head_epochs if phase == "head" else config.fine_tune_epochs
    plan = plan_phase_start(phase, epochs, budget.seconds, budget.used(), budget.reserve_s,
                            used_by, budget.fine_tune_s if config.fine_tune_epochs else None)
    if plan.epochs == 0 or plan.over_budget:
        logger.warning(plan.reason)
    else:
        logger.info(plan.reason)
    return plan

"""The time budget (issue 10): the planner and the phase timer are pure
functions of a fake clock (no timing asserts on real time), then `fit`
under a budget on that clock."""

import json
import logging

import pytest

from tfhub_ft import FineTuner, time_budget
from tfhub_ft import config as config_lib


class FakeClock:
    """A clock that moves only when told (`advance`), or by `tick` per reading."""

    def __init__(self, tick=0.0):
        self.now, self.tick = 100.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now

    def advance(self, seconds):
        self.now += seconds


def _budget(seconds, clock, used=0.0, reserve=0.0):
    budget = time_budget.TimeBudget(seconds, start=clock.now - used, clock=clock)
    budget.reserve_s = reserve
    return budget


def _run_phase(timer, clock, config_epochs, steps_per_epoch, step_seconds, validation_s,
               start_validation_s=0.0):
    """Drives a PhaseTimer as Keras's fit loop calls its callbacks; returns
    (epochs run, steps run). `step_seconds(step)` is each step's duration."""
    timer.train_begin()
    clock.advance(start_validation_s)
    epochs = steps = 0
    for _ in range(config_epochs):
        timer.epoch_begin()
        stop = False
        for _ in range(steps_per_epoch):
            if timer.steps_done == 0:
                timer.first_batch_begin()
            clock.advance(step_seconds(steps))
            steps += 1
            if timer.batch_end():
                stop = True
                break
        clock.advance(validation_s)
        epochs += 1
        if timer.epoch_end() or stop:
            break
    timer.train_end()
    return epochs, steps


def test_phase_start_gives_phase_one_half_of_what_is_left_or_what_phase_2_leaves():
    ample = time_budget.plan_phase_start("head", 10, budget_s=90, used_s=30, reserve_s=6,
                                         used_by="loading", fine_tune_s=10.0)
    assert ample.epochs == 10 and ample.deadline_s == pytest.approx(30 + 0.5 * 54)
    assert ample.reason == (
        "Time budget 90 s: 30.0 s used by loading, 6.0 s reserved, so phase 1 may take up "
        "to 27.0 s (0.5 of the 54.0 s left, the rest for phase 2)")
    alone = time_budget.plan_phase_start("head", 10, 90, 30, 6, "loading")
    assert alone.deadline_s == pytest.approx(84)
    # Half would not leave phase 2 its first epoch (54 s left, a 30 s epoch):
    # phase 1 is not stopped at half, which left 27 s unused when it ran to
    # its deadline; phase 2 still runs if phase 1 ends by 24 s.
    tight = time_budget.plan_phase_start("head", 10, 90, 30, 6, "loading", fine_tune_s=30.0)
    assert tight.deadline_s == pytest.approx(30 + 54)
    assert ("(all of it: half would not leave the ~30.0 s a first phase 2 epoch needs, which "
            "it gets if phase 1 ends in time)") in tight.reason
    # Less left than phase 2's first epoch needs: phase 1 may take it all,
    # and phase 2 does not start.
    short = time_budget.plan_phase_start("head", 10, 40, 28, 8, "loading", fine_tune_s=9.0)
    assert short.deadline_s == pytest.approx(32) and "(all of it" in short.reason
    unreachable = time_budget.plan_phase_start("fine_tune", 6, 40, 30, 8, "loading",
                                               fine_tune_s=9.0)
    assert unreachable.epochs == 0
    assert "the 2.0 s left cannot fit a first phase 2 epoch (~9.0 s" in unreachable.reason
    assert "Raise time_budget_s (--time_budget) above ~47 s" in unreachable.reason
    spent = time_budget.plan_phase_start("fine_tune", 6, budget_s=40, used_s=37.5,
                                         reserve_s=4, used_by="loading")
    assert spent.epochs == 0 and spent.steps == 0
    assert "Time budget 40 s already spent before phase 2" in spent.reason
    assert "Raise time_budget_s (--time_budget) above 42 s" in spent.reason
    # Phase 1 is never skipped: one epoch over the budget, not a random head.
    head = time_budget.plan_phase_start("head", 10, 20, 23.0, 5, "loading")
    assert head.epochs == 1 and head.over_budget
    assert "One head epoch runs anyway, over the budget" in head.reason
    assert "phase 2 is skipped" not in head.reason
    head = time_budget.plan_phase_start("head", 10, 20, 23.0, 5, "loading", fine_tune_s=3.0)
    assert head.epochs == 1 and "and phase 2 is skipped" in head.reason


def test_estimate_reserve_from_the_frozen_pass_and_the_load():
    # 1,000 frozen images in 2 s: 2 ms each; 100 validation images; a 3 s load.
    seconds, reason = time_budget.estimate_reserve(2.0, 1000, 100, 3.0, extra_s=0.5)
    validation = 0.002 * 100 + config_lib.TIME_BUDGET_TRACE_S
    export = config_lib.TIME_BUDGET_EXPORT_BASE_S + config_lib.TIME_BUDGET_EXPORT_PER_LOAD * 3.0
    assert seconds == pytest.approx(validation + export + 0.5)
    assert reason == (f"{validation:.1f} s for validation (100 images), {export:.1f} s for the "
                      "export (the backbone loaded in 3.0 s), 0.5 s for what runs after fit")
    # Scored from the cached boundary tensors: a share of that, the top only.
    cached, reason = time_budget.estimate_reserve(2.0, 1000, 100, 3.0, cached_scoring=True)
    assert cached == pytest.approx(
        config_lib.TIME_BUDGET_CACHED_SCORING_SHARE * 0.002 * 100
        + config_lib.TIME_BUDGET_CACHED_SCORING_S + export)
    assert reason == (f"{cached - export:.1f} s for validation (100 images), {export:.1f} s "
                      "for the export (the backbone loaded in 3.0 s)")


def test_plan_epochs_ample_tight_and_cut():
    start = time_budget.PhasePlan("fine_tune", 6, 6, deadline_s=80.0)

    def plan(used_s, steps_done):
        # 10 steps of 0.5 s and 1 s of validation: 6 s an epoch.
        return time_budget.plan_epochs(start, 90, used_s, steps_per_epoch=10,
                                       steps_done=steps_done, step_s=0.5, validation_s=1.0)
    ample = plan(used_s=20.0, steps_done=10)
    assert (ample.epochs, ample.steps) == (6, 60)
    assert "so 6 of 6 fine-tune epochs" in ample.reason
    # 20 s left after epoch 1: three more whole epochs fit (18 s), not four.
    tight = plan(used_s=60.0, steps_done=10)
    assert (tight.epochs, tight.steps, tight.epoch_seconds) == (4, 40, 6.0)
    assert tight.reason == (
        "Time budget 90 s: 60.0 s used, phase 2 epoch ~6.0 s (10 steps of 500 ms + 1.0 s "
        "validation), 20.0 s left for phase 2, so 4 of 6 fine-tune epochs")
    # Mid-epoch (the first plan): finishing the epoch takes 4.5 s, 2.5 s are
    # left: cut it to the 3 more steps that end before its validation.
    cut = plan(used_s=77.5, steps_done=3)
    assert (cut.epochs, cut.steps) == (1, 6)
    assert "epoch 1 cut to 6 of 10 steps" in cut.reason
    # At an epoch's end 4 s are left: no whole epoch, but 6 steps and their
    # validation; 2 s would leave 2 steps, under a quarter of an epoch.
    partial = plan(used_s=76.0, steps_done=20)
    assert (partial.epochs, partial.steps) == (3, 26)
    assert partial.reason.endswith(
        "4.0 s left for phase 2, so 2 of 6 fine-tune epochs and 6 of 10 steps of one more")
    assert plan(used_s=78.0, steps_done=20).epochs == 2
    # Whole epochs, then the rest: 15 s after epoch 1 are two epochs (12 s)
    # and 4 steps before a validation. Mid-epoch, 13 s left: the rest of
    # epoch 1 (4.5 s) and one epoch (6 s) leave 2.5 s, 3 steps of a third.
    assert plan(used_s=65.0, steps_done=10).steps == 34
    mid = plan(used_s=67.0, steps_done=3)
    assert (mid.epochs, mid.steps) == (3, 23)


def _fine_tune_timer(clock, budget_s, epochs, **options):
    """(budget, PhaseTimer, cosine moves, log lines) for phase 2 with 20 s
    used, 4 s reserved, 10 steps an epoch and 3 validation steps."""
    budget = _budget(budget_s, clock, used=20.0, reserve=4.0)
    start = time_budget.plan_phase_start("fine_tune", epochs, budget_s, budget.used(), 4.0,
                                         "loading")
    moves, lines = [], []
    timer = time_budget.PhaseTimer(
        budget, start, steps_per_epoch=10, validation_steps=3,
        on_plan=lambda plan, step: moves.append((step, plan.steps)), log=lines.append,
        **options)
    return budget, timer, moves, lines


def test_phase_timer_plans_moves_the_cosine_and_ends_within_the_deadline():
    clock = FakeClock()
    budget, timer, moves, lines = _fine_tune_timer(clock, 40, 6, validates_at_start=True)
    # The first step traces (3 s), the others take 0.5 s, validation 0.4 s:
    # 16 s for phase 2 -> 1 s start validation + 3 s + 4.5 s + 0.4 s for
    # epoch 1, then 5.4 s epochs: one more fits, a third does not.
    epochs, steps = _run_phase(timer, clock, 6, 10, lambda step: 3.0 if step == 0 else 0.5,
                               validation_s=0.4, start_validation_s=1.0)
    assert (epochs, steps) == (2, 20)
    assert budget.used() <= 40 - 4.0
    # Planned after 5 timed steps (step 6), the cosine's end set then.
    assert moves[0] == (6, 20) and timer.plan.steps == 20
    assert timer.plan.epochs == 2 and timer.stopped_reason == "planned end"
    assert lines[0].startswith("Time budget 40 s: ") and "so 2 of 6 fine-tune epochs" in lines[0]
    assert lines[-1].startswith("Time budget: phase 2 ran 2 of 6 epochs (20 steps)")
    assert "(another (~5.4 s) would not end in the" in lines[-1]


def test_the_end_line_says_when_the_first_plan_was_remade():
    clock = FakeClock()
    budget, timer, _, lines = _fine_tune_timer(clock, 60, 6)
    # The first steps are slow (0.5 s: a plan of a few epochs), the rest fast
    # (0.1 s): every epoch runs, more than the first plan said.
    _run_phase(timer, clock, 6, 10, lambda step: 0.5 if step < 6 else 0.1, validation_s=0.1)
    assert ", so 5 of 6 fine-tune epochs and 4 of 10 steps of one more" in lines[0]
    assert timer.epochs_done == 6
    assert lines[-1].startswith("Time budget: phase 2 ran 6 of 6 epochs (60 steps) in ")
    assert ("(all of them; 54 steps were planned from the first ones, replanned as epochs "
            "were timed)") in lines[-1]


def test_phase_timer_stops_mid_epoch_rather_than_overrun():
    clock = FakeClock()
    budget, timer, _, lines = _fine_tune_timer(clock, 40, 6)
    # Steps slow down to 3 s after the plan (the machine got busy): the
    # timer stops before a step that would end past the deadline.
    epochs, steps = _run_phase(timer, clock, 6, 10, lambda step: 0.5 if step < 12 else 3.0,
                               validation_s=0.4)
    assert budget.used() <= 40 - 4.0
    assert timer.stopped_reason == "deadline" and steps < 2 * 10
    assert "(stopped after step" in lines[-1] and "the next would not have ended" in lines[-1]


def test_phase_timer_runs_a_last_epoch_cut_to_the_time_left():
    clock = FakeClock()
    budget, timer, moves, lines = _fine_tune_timer(clock, 40.6, 3)
    # 6 s epochs (10 steps of 0.5 s, 1 s validation) and 16.6 s to the
    # deadline: two whole epochs, then 7 steps and a validation of a third.
    # The first plan guesses the validation at 3 steps (1.5 s): 4 steps.
    epochs, steps = _run_phase(timer, clock, 3, 10, lambda step: 0.5, validation_s=1.0)
    assert (epochs, steps) == (3, 27) and moves == [(6, 24), (10, 27)]
    assert "so 2 of 3 fine-tune epochs and 4 of 10 steps of one more" in lines[0]
    assert "ran 3 of 3 epochs (27 steps)" in lines[-1]
    assert ("(the last cut to 7 steps to fit; 24 steps were planned from the first ones, "
            "replanned as epochs were timed)") in lines[-1]
    assert budget.used() <= 40.6 - 4.0


def test_phase_timer_cuts_a_first_epoch_that_does_not_fit():
    clock = FakeClock()
    budget = _budget(30, clock, used=20.0, reserve=4.0)
    start = time_budget.plan_phase_start("fine_tune", 6, 30, budget.used(), 4.0, "loading")
    moves = []
    timer = time_budget.PhaseTimer(budget, start, steps_per_epoch=100, validation_steps=3,
                                   on_plan=lambda p, s: moves.append(s))
    epochs, steps = _run_phase(timer, clock, 6, 100, lambda step: 0.1, validation_s=0.2)
    # 6 s for phase 2: the first plan cuts epoch 1 to what ends before its
    # validation (a validation estimated at 3 steps' time until measured).
    assert epochs == 1 and steps == timer.plan.steps < 100
    assert budget.used() <= 30 - 4.0
    assert "cut to" in timer.plan.reason


def test_phase_timer_finishes_phase_one_first_epoch_past_its_deadline():
    clock = FakeClock()
    budget = _budget(30, clock, used=20.0, reserve=4.0)
    start = time_budget.plan_phase_start("head", 10, 30, budget.used(), 4.0, "loading")
    lines, warnings = [], []
    timer = time_budget.PhaseTimer(budget, start, steps_per_epoch=100, validation_steps=3,
                                   log=lines.append, warn=warnings.append)
    # 6 s for phase 1 and 10 s epochs: a head cut to a few steps was near
    # chance, so the first epoch runs to its end, and no other starts.
    epochs, steps = _run_phase(timer, clock, 10, 100, lambda step: 0.1, validation_s=0.2)
    assert (epochs, steps) == (1, 100) and timer.plan.epochs == 1
    assert timer.plan.overruns  # the phase's last plan (tuner.time_plan) still says so
    assert len(warnings) == 1 and warnings[0].startswith("Time budget 30 s: ")
    assert warnings[0].endswith(
        "5.4 s left for phase 1: its first epoch runs to its end anyway, ~4.3 s past "
        "phase 1's deadline (a head cut to a few steps is near chance), and no other")
    assert lines[-1].startswith("Time budget: phase 1 ran 1 of 10 epochs (100 steps)")
    assert "(the first, which always ends, ended 4.2 s past the phase's deadline)" in lines[-1]


@pytest.mark.slow
def test_fit_within_a_budget_on_a_fake_clock(tiny_backbone_path, image_folders, small_config,
                                             tmp_path, caplog):
    train, validation, _, _ = image_folders
    # Every reading of the clock moves it 0.05 s: the run's plans follow
    # from how often the code reads it, not from this machine's speed.
    clock = FakeClock(tick=0.05)
    # Patience above the epochs: only the budget may end phase 2 here.
    config = small_config.replace(head_epochs=3, fine_tune_epochs=30, time_budget_s=12,
                                  early_stopping_patience=30)
    tuner = FineTuner(tiny_backbone_path, config=config, clock=clock)
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        history = tuner.fit(train, validation, verbose=0)
    plan = tuner.time_plan
    assert plan.budget_s == 12 and plan.reserve_s > 0
    assert plan.epochs_run == {"head": 3, "fine_tune": plan.fine_tune.epochs}
    assert 1 <= plan.fine_tune.epochs < 30 and len(history["fine_tune"]["loss"]) \
        == plan.fine_tune.epochs
    assert plan.used_s <= 12 - plan.reserve_s + 1.0
    assert any("fine-tune epochs" in r.message and "s left for phase 2, so" in r.message
               for r in caplog.records)
    tuner.report(tmp_path / "report")
    with open(tmp_path / "report" / "summary.json") as f:
        summary = json.load(f)
    assert summary["time_plan"]["fine_tune"]["epochs"] == plan.fine_tune.epochs


@pytest.mark.slow
def test_a_spent_budget_trains_one_head_epoch_and_skips_phase_2(
        tiny_backbone_path, image_folders, small_config, caplog):
    train, validation, _, _ = image_folders
    clock = FakeClock(tick=0.05)
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(time_budget_s=1),
                      clock=clock, start_time=clock.now - 5)
    history = tuner.fit(train, validation, verbose=0)
    assert len(history["head"]["loss"]) == 1 and history["fine_tune"] == {}
    assert tuner.time_plan.epochs_run == {"head": 1, "fine_tune": 0}
    warnings = [r.message for r in caplog.records
                if r.levelname == "WARNING" and "Time budget" in r.message]
    assert len(warnings) == 1 and "already spent before phase 1" in warnings[0]
    assert "One head epoch runs anyway, over the budget" in warnings[0]
    assert "and phase 2 is skipped" in warnings[0]
    assert tuner.time_plan.fine_tune.reason == "skipped: the budget was spent before phase 1"
    assert tuner.unfrozen_blocks == []


def test_a_budget_with_a_work_dir_is_refused(tiny_backbone_path, small_config, tmp_path):
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(time_budget_s=60))
    with pytest.raises(ValueError, match="cannot be combined with `work_dir`"):
        tuner.fit("no/such/folder", work_dir=tmp_path / "work")

"""The freezing is real: each phase changes exactly what it should."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuneConfig, FineTuner, recipe


def snapshot(tuner):
    return {v.name: v.numpy().copy() for v in tuner.backbone.module.variables}


def changed(before, tuner):
    return sorted(v.name for v in tuner.backbone.module.variables
                  if not np.array_equal(before[v.name], v.numpy()))


@pytest.mark.slow
def test_phase_one_changes_no_backbone_variable(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(fine_tune_epochs=0))
    before = snapshot(tuner)
    history = tuner.fit(train, validation, verbose=0)
    assert changed(before, tuner) == []
    assert len(history["head"]["loss"]) == 2 and history["fine_tune"] == {}
    assert np.abs(tuner.model.head.kernel.numpy()).sum() > 0


# The tiny backbone's layers: its layer `head` is the block `top`.
@pytest.mark.parametrize("unfreeze_blocks, expected_layers", [
    (1, ["head"]),
    (3, ["block_2", "block_3", "head"]),
])
@pytest.mark.slow
def test_phase_two_changes_exactly_the_top_blocks(
        tiny_backbone_path, image_folders, small_config, unfreeze_blocks, expected_layers):
    train, _, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        unfreeze_blocks=unfreeze_blocks, early_stopping_patience=5, head_epochs=0))
    before = snapshot(tuner)
    # Validating on the training images, the loss falls with training, so the
    # start is not the best epoch and no epoch is rolled back.
    tuner.fit(train, train, verbose=0)
    expected = sorted(
        f"{prefix}_{layer}/{name}:0" for prefix in expected_layers
        for layer, name in [("conv", "kernel"), ("bn", "gamma"), ("bn", "beta")])
    # Every trainable variable of the top blocks moved, nothing else did:
    # no lower block, and no moving statistic (batch norm in inference mode).
    assert changed(before, tuner) == expected


@pytest.mark.slow
def test_trainable_batch_norm_updates_moving_statistics(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        batch_norm_trainable=True, head_epochs=1, fine_tune_epochs=1))
    before = snapshot(tuner)
    tuner.fit(train, validation, verbose=0)
    assert any("moving_mean" in name for name in changed(before, tuner))


@pytest.mark.slow
def test_diverging_fine_tune_falls_back_to_the_head_phase(tiny_backbone_path, image_folders,
                                                          small_config):
    train, validation, _, _ = image_folders
    config = small_config.replace(fine_tune_learning_rate=0.5, weight_decay=0.0,
                                  early_stopping_patience=5)
    tuner = FineTuner(tiny_backbone_path, config=config)
    before = snapshot(tuner)
    history = tuner.fit(train, validation, verbose=0)
    head_loss = history["head"]["val_loss"][-1]
    if min(history["fine_tune"]["val_loss"]) < head_loss:
        pytest.skip("fine-tuning did not diverge at this learning rate")
    # No fine-tuning epoch beat the head phase: its weights came back.
    assert changed(before, tuner) == []
    head_only = FineTuner(tiny_backbone_path, config=config.replace(fine_tune_epochs=0))
    head_only.fit(train, validation, verbose=0)
    np.testing.assert_array_equal(tuner.model.head.kernel.numpy(),
                                  head_only.model.head.kernel.numpy())
    assert tuner.validation_metrics == head_only.validation_metrics


def test_fine_tune_schedule_is_a_cosine_from_the_peak_to_zero():
    from tfhub_ft import FineTuneConfig
    from tfhub_ft.recipe import fine_tune_schedule

    schedule = fine_tune_schedule(FineTuneConfig(
        batch_size=10, fine_tune_epochs=2, fine_tune_learning_rate=1e-3), train_size=95)
    # 10 steps an epoch, 20 in all.
    assert [float(schedule(step)) for step in (0, 10, 20, 40)] == pytest.approx(
        [1e-3, 5e-4, 0.0, 0.0], abs=1e-9)


# Issue 9, kind 10: class_weight="balanced" weights each image's loss.
def test_balanced_class_weights_and_weighted_loss():
    import keras

    from tfhub_ft import FineTuneConfig
    labels = np.repeat([0, 1, 2], [6, 2, 4])
    weights = recipe.balanced_class_weights(labels, 4)
    np.testing.assert_allclose(weights, [12 / 18, 12 / 6, 12 / 12, 0.0])
    loss = recipe.classification_loss(FineTuneConfig(class_weight="balanced",
                                                     label_smoothing=0.0), labels, 4)
    assert isinstance(loss, recipe.WeightedCategoricalCrossentropy)
    y_true = np.eye(4, dtype=np.float32)[[0, 1, 2]]
    logits = np.array([[2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 3.0]], np.float32)
    plain = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(
        y_true, logits).numpy()
    np.testing.assert_allclose(float(loss(y_true, logits)),
                               np.mean(plain * weights[[0, 1, 2]]), rtol=1e-6)
    assert isinstance(recipe.classification_loss(FineTuneConfig()),
                      keras.losses.CategoricalCrossentropy)


def test_layer_rate_scales_decay_from_the_top_block_down():
    assert recipe.layer_rate_scales(3, 0.5) == [0.25, 0.5, 1.0]
    assert recipe.layer_rate_scales(2, 1.0) == [1.0, 1.0]
    assert recipe.layer_rate_scales(0, 0.5) == []


def test_fine_tune_optimizer_scales_each_blocks_rate():
    import keras
    from tfhub_ft import FineTuneConfig
    bottom, top, head = (keras.Variable(np.ones(3, "float32")) for _ in range(3))
    optimizer = recipe.fine_tune_optimizer(
        0.1, FineTuneConfig(layer_decay=0.5, weight_decay=0.0), [[bottom], [top]])
    optimizer.build([bottom, top, head])
    optimizer.apply([np.ones(3, "float32")] * 3, [bottom, top, head])
    # Adam's first step moves each weight by its learning rate.
    np.testing.assert_allclose(bottom.numpy(), 1 - 0.05, rtol=1e-5)
    np.testing.assert_allclose(top.numpy(), 1 - 0.1, rtol=1e-5)
    np.testing.assert_allclose(head.numpy(), 1 - 0.1, rtol=1e-5)


def test_fused_adamw_matches_keras_adamw(monkeypatch):
    # LayerwiseAdamW applies Adam with ResourceApplyAdam: ten epochs of a
    # small model under a cosine, weight decay on, give Keras's AdamW's
    # weights to float32 rounding. (Per-block rates: the test above.)
    import keras
    import tensorflow as tf
    from tfhub_ft import FineTuneConfig

    def train(optimizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7),
                                  keras.layers.Dense(3)])
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        features = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
        labels = np.random.default_rng(1).integers(0, 3, 16)
        model.fit(features, labels, epochs=10, batch_size=4, verbose=0)
        return [weight.numpy() for weight in model.weights]

    def schedule():
        return keras.optimizers.schedules.CosineDecay(1e-2, 40)

    reference = keras.optimizers.AdamW(schedule(), weight_decay=0.05)
    reference.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    wanted = train(reference)
    fused_updates = []
    apply_adam = tf.raw_ops.ResourceApplyAdam
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam",
                        lambda **kwargs: fused_updates.append(1) or apply_adam(**kwargs))
    got = train(recipe.fine_tune_optimizer(schedule(), FineTuneConfig(weight_decay=0.05)))
    # One op per variable (4) in each trace of the train step.
    assert fused_updates and len(fused_updates) % 4 == 0
    keras.utils.set_random_seed(0)
    initial = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7),
                                keras.layers.Dense(3)]).get_weights()
    for got_weights, want_weights, start in zip(got, wanted, initial):
        assert np.abs(want_weights - start).max() > 0.05  # trained
        np.testing.assert_allclose(got_weights, want_weights, atol=1e-5)


# Issue 10: a time budget. The planner and the phase timer are pure; a fake
# clock drives them (no timing asserts on real time).

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
    from tfhub_ft import time_budget
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


def test_phase_start_gives_phase_one_half_of_what_is_left_or_skips_when_spent():
    from tfhub_ft import time_budget
    ample = time_budget.plan_phase_start("head", 10, budget_s=90, used_s=30, reserve_s=6,
                                         used_by="loading", fine_tune_s=10.0)
    assert ample.epochs == 10 and ample.deadline_s == pytest.approx(30 + 0.5 * 54)
    assert "(0.5 of the 54.0 s left, the rest for phase 2)" in ample.reason
    alone = time_budget.plan_phase_start("head", 10, 90, 30, 6, "loading")
    assert alone.deadline_s == pytest.approx(84)
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
    from tfhub_ft import config, time_budget
    # 1,000 frozen images in 2 s: 2 ms each; 100 validation images; a 3 s load.
    seconds, reason = time_budget.estimate_reserve(2.0, 1000, 100, 3.0, extra_s=0.5)
    validation = 0.002 * 100 + config.TIME_BUDGET_TRACE_S
    export = config.TIME_BUDGET_EXPORT_BASE_S + config.TIME_BUDGET_EXPORT_PER_LOAD * 3.0
    assert seconds == pytest.approx(validation + export + 0.5)
    assert "100 images at the frozen pass's 2.0 ms" in reason and "0.5 s for what runs after fit" in reason
    # Scored from the cached boundary tensors: a share of that, the top only.
    cached, reason = time_budget.estimate_reserve(2.0, 1000, 100, 3.0, cached_scoring=True)
    assert cached == pytest.approx(
        config.TIME_BUDGET_CACHED_SCORING_SHARE * 0.002 * 100
        + config.TIME_BUDGET_CACHED_SCORING_S + export)
    assert "0.25x the frozen pass's 2.0 ms" in reason


def test_plan_epochs_ample_tight_and_cut():
    from tfhub_ft import time_budget
    start = time_budget.PhasePlan("fine_tune", 6, 6, deadline_s=80.0)

    def plan(used_s, steps_done):
        # 10 steps of 0.5 s and 1 s of validation: 6 s an epoch.
        return time_budget.plan_epochs(start, 90, 10, used_s, steps_per_epoch=10,
                                       steps_done=steps_done, step_s=0.5, validation_s=1.0,
                                       used_by="loading")
    ample = plan(used_s=20.0, steps_done=10)
    assert (ample.epochs, ample.steps) == (6, 60)
    assert "so 6 of 6 fine-tune epochs" in ample.reason
    # 20 s left after epoch 1: three more whole epochs fit (18 s), not four.
    tight = plan(used_s=60.0, steps_done=10)
    assert (tight.epochs, tight.steps, tight.epoch_seconds) == (4, 40, 6.0)
    assert tight.reason == (
        "Time budget 90 s: 60.0 s used by loading, phase 2 epoch ~6.0 s (10 steps of "
        "500 ms + 1.0 s validation), 20.0 s left for phase 2, so 4 of 6 fine-tune "
        "epochs (reserving 10.0 s for validation and export)")
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
        "4.0 s left for phase 2, so 2 of 6 fine-tune epochs and 6 of 10 steps of one "
        "more (reserving 10.0 s for validation and export)")
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
    from tfhub_ft import time_budget
    budget = _budget(budget_s, clock, used=20.0, reserve=4.0)
    start = time_budget.plan_phase_start("fine_tune", epochs, budget_s, budget.used(), 4.0,
                                         "loading")
    moves, lines = [], []
    timer = time_budget.PhaseTimer(
        budget, start, steps_per_epoch=10, validation_steps=3, used_by="loading",
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
    assert "(the last cut to 7 steps to fit)" in lines[-1]
    assert budget.used() <= 40.6 - 4.0


def test_phase_timer_cuts_a_first_epoch_that_does_not_fit():
    from tfhub_ft import time_budget
    clock = FakeClock()
    budget = _budget(30, clock, used=20.0, reserve=4.0)
    start = time_budget.plan_phase_start("fine_tune", 6, 30, budget.used(), 4.0, "loading")
    moves = []
    timer = time_budget.PhaseTimer(budget, start, steps_per_epoch=100, validation_steps=3,
                                   used_by="loading", on_plan=lambda p, s: moves.append(s))
    epochs, steps = _run_phase(timer, clock, 6, 100, lambda step: 0.1, validation_s=0.2)
    # 6 s for phase 2: the first plan cuts epoch 1 to what ends before its
    # validation (a validation estimated at 3 steps' time until measured).
    assert epochs == 1 and steps == timer.plan.steps < 100
    assert budget.used() <= 30 - 4.0
    assert "cut to" in timer.plan.reason


def test_phase_timer_finishes_phase_one_first_epoch_past_its_deadline():
    from tfhub_ft import time_budget
    clock = FakeClock()
    budget = _budget(30, clock, used=20.0, reserve=4.0)
    start = time_budget.plan_phase_start("head", 10, 30, budget.used(), 4.0, "loading")
    lines, warnings = [], []
    timer = time_budget.PhaseTimer(budget, start, steps_per_epoch=100, validation_steps=3,
                                   used_by="loading", log=lines.append, warn=warnings.append)
    # 6 s for phase 1 and 10 s epochs: a head cut to a few steps was near
    # chance, so the first epoch runs to its end, and no other starts.
    epochs, steps = _run_phase(timer, clock, 10, 100, lambda step: 0.1, validation_s=0.2)
    assert (epochs, steps) == (1, 100) and timer.plan.epochs == 1
    assert timer.plan.overruns  # the phase's last plan (tuner.time_plan) still says so
    assert len(warnings) == 1 and warnings[0].startswith("Time budget 30 s: ")
    assert warnings[0].endswith(
        "5.4 s left for phase 1: its first epoch runs to its end anyway, ~4.3 s past "
        "phase 1's deadline (a head cut to a few steps is near chance), and no other "
        "(reserving 4.0 s for validation and export)")
    assert lines[-1].startswith("Time budget: phase 1 ran 1 of 10 epochs (100 steps)")
    assert "(the first, which always ends, ended 4.2 s past the phase's deadline)" in lines[-1]


def test_replannable_cosine_is_keras_cosine_and_moves_its_end_without_a_retrace():
    import tensorflow as tf

    schedule = recipe.ReplannableCosineDecay(1e-3, 20)
    keras_cosine = recipe.keras.optimizers.schedules.CosineDecay(1e-3, 20)
    traces = []

    @tf.function
    def rate(step):
        traces.append(1)
        return schedule(step)

    assert [float(rate(tf.constant(s))) for s in (0, 5, 10, 20)] == pytest.approx(
        [float(keras_cosine(s)) for s in (0, 5, 10, 20)], abs=1e-9)
    before = float(rate(tf.constant(5)))
    schedule.replan(5, 10)  # the end moves from step 20 to 10
    assert float(rate(tf.constant(5))) == pytest.approx(before)  # continuous
    assert float(rate(tf.constant(10))) == pytest.approx(0.0, abs=1e-9)
    assert 0 < float(rate(tf.constant(7))) < float(keras_cosine(7))
    assert len(traces) == 1


def test_a_replanned_end_reaches_the_traced_train_step():
    import keras

    schedule = recipe.ReplannableCosineDecay(0.1, 100)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=recipe.fine_tune_optimizer(schedule, FineTuneConfig()),
                  loss="mse")
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    for _ in range(3):
        model.train_on_batch(x, y)
    # The cosine now ends at step 4: the traced step trains step 3 at a
    # positive rate, step 4 at rate 0.
    schedule.replan(3, 4)
    weights = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    assert not np.array_equal(weights[0], model.get_weights()[0])
    weights = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_fit_within_a_budget_on_a_fake_clock(tiny_backbone_path, image_folders, small_config,
                                             tmp_path, caplog):
    import json
    import logging

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
    assert any("fine-tune epochs" in r.message and "(reserving" in r.message
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


class _Batches:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def dataset(self):
        return tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(4)


@pytest.mark.parametrize("losses, expected", [
    # No epoch beat the start: the start's weights come back, with a WARNING.
    ([+1.0, +2.0], ("WARNING", "Phase 2 did not lower the validation loss below where it "
                    "started ({start:.4f}): the model keeps the weights from before it, as "
                    "phase 1 left them. A lower fine_tune_learning_rate, or fewer "
                    "unfreeze_blocks, may help.")),
    # An earlier epoch was best: said at INFO.
    ([-1.0, +2.0], ("INFO", "Phase 2 keeps the weights of its epoch 1 of 2 (the lowest "
                    "validation loss, {best:.4f})")),
    ([-1.0, -2.0], None),
    # Cut short (by the time budget): no advice on the recipe.
    ([+1.0, None], ("WARNING", "Phase 2 did not lower the validation loss below where it "
                    "started ({start:.4f}): the model keeps the weights from before it, as "
                    "phase 1 left them. It was cut short after 1 of 2 epochs.")),
])
def test_early_stopping_from_start_says_which_weights_it_kept(losses, expected, caplog):
    from tfhub_ft.recipe import EarlyStoppingFromStart

    rng = np.random.default_rng(0)
    x = rng.random((8, 3)).astype(np.float32)
    y = rng.random((8, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input([3]), keras.layers.Dense(1)])
    model.compile(loss="mse")
    callback = EarlyStoppingFromStart(_Batches(x, y), patience=5)
    callback.set_model(model)
    callback.set_params({"epochs": len(losses)})
    start_weights = model.get_weights()
    with caplog.at_level(logging.INFO, logger="tfhub_ft.recipe"):
        callback.on_train_begin()
        start = callback.start_loss
        for epoch, delta in enumerate(loss for loss in losses if loss is not None):
            model.layers[0].kernel.assign_add(np.ones([3, 1], np.float32))
            callback.on_epoch_end(epoch, {"val_loss": start + delta})
        callback.on_train_end()
    records = [(r.levelname, r.getMessage()) for r in caplog.records
               if r.name == "tfhub_ft.recipe"]
    if expected is None:
        assert records == []
        return
    level, text = expected
    assert records == [(level, text.format(start=start, best=start - 1.0))]
    if level == "WARNING":
        np.testing.assert_array_equal(model.get_weights()[0], start_weights[0])


def test_an_untrained_head_is_not_a_start_to_go_back_to(caplog):
    from tfhub_ft.recipe import EarlyStoppingFromStart

    rng = np.random.default_rng(0)
    x = rng.random((8, 3)).astype(np.float32)
    y = rng.random((8, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input([3]), keras.layers.Dense(1)])
    model.compile(loss="mse")
    callback = EarlyStoppingFromStart(_Batches(x, y), patience=5, count_start=False)
    callback.set_model(model)
    callback.set_params({"epochs": 2})
    with caplog.at_level(logging.INFO, logger="tfhub_ft.recipe"):
        callback.on_train_begin()
        # Both epochs worse than the start would have been: the better one is kept.
        for epoch, loss in enumerate([50.0, 60.0]):
            model.layers[0].kernel.assign(np.full([3, 1], epoch + 1.0, np.float32))
            callback.on_epoch_end(epoch, {"val_loss": loss})
        callback.on_train_end()
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.ones([3, 1]))
    assert [r.getMessage() for r in caplog.records if r.name == "tfhub_ft.recipe"] == [
        "Phase 2 keeps the weights of its epoch 1 of 2 (the lowest validation loss, 50.0000)"]


def test_the_fine_tune_plan_names_its_blocks_and_how_they_train(tiny_backbone_path, caplog):
    from tfhub_ft.backbone import HubBackbone

    backbone = HubBackbone(tiny_backbone_path)
    with caplog.at_level(logging.INFO, logger="tfhub_ft.recipe"):
        plan = recipe.plan_fine_tune(backbone, FineTuneConfig(unfreeze_blocks=2))
        recipe.plan_fine_tune(HubBackbone(tiny_backbone_path, batch_norm_trainable=True),
                              FineTuneConfig(unfreeze_blocks=1))
    assert plan.split is not None
    # TinyBackbone(widths=(4, 8, 8, 16)): block_3 1,216 and top 320 parameters.
    assert [r.getMessage() for r in caplog.records if r.name == "tfhub_ft.recipe"] == [
        "Phase 2 will fine-tune the top 2 of 5 blocks (block_3 to top; 1,536 weights, "
        "batch-norm statistics included) from the cached output of the frozen blocks below "
        "them (split backbone)",
        "Phase 2 will fine-tune the top 1 of 5 blocks (top; 320 weights, batch-norm "
        "statistics included) through the whole module each step"]

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
    assert tuner.kept_epoch == ("fine_tune", 0)
    head_only = FineTuner(tiny_backbone_path, config=config.replace(fine_tune_epochs=0))
    head_only.fit(train, validation, verbose=0)
    np.testing.assert_array_equal(tuner.model.head.kernel.numpy(),
                                  head_only.model.head.kernel.numpy())
    assert tuner.validation_metrics == head_only.validation_metrics


def test_the_loss_is_described_as_it_is_trained():
    assert recipe.loss_description(FineTuneConfig(label_smoothing=0.1)) == (
        "cross-entropy, label smoothing 0.1")
    assert recipe.loss_description(FineTuneConfig(label_smoothing=0.0,
                                                  class_weight="balanced")) == (
        "cross-entropy, class-weighted")


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
        nothing = recipe.plan_fine_tune(backbone, FineTuneConfig(unfreeze_blocks=0))
    assert plan.split is not None
    assert nothing.blocks == () and nothing.split is None
    # TinyBackbone(widths=(4, 8, 8, 16)): block_3 1,216 and top 320 parameters.
    assert [r.getMessage() for r in caplog.records if r.name == "tfhub_ft.recipe"] == [
        "Phase 2 will fine-tune the top 2 of 5 blocks (block_3 to top; 1,536 weights, "
        "batch-norm statistics included) from the cached output of the frozen blocks below "
        "them (split backbone)",
        "Phase 2 will fine-tune the top 1 of 5 blocks (top; 320 weights, batch-norm "
        "statistics included) through the whole module each step",
        "Phase 2 fine-tunes no block (unfreeze_blocks=0): it trains the head further at "
        "fine_tune_learning_rate, on the cached features as phase 1 does."]
    # The backbone did not log a split it did not need.
    assert "Not splitting" not in caplog.text


@pytest.mark.slow
def test_phase_two_without_blocks_trains_the_head_on_cached_features(
        tiny_backbone_path, image_folders, small_config, monkeypatch):
    from tfhub_ft import model as model_lib

    train, validation, _, _ = image_folders
    trainees = []
    chooser = recipe.fine_tune_trainee

    def recorded(*args):
        trainees.append(chooser(*args))
        return trainees[-1]

    monkeypatch.setattr(recipe, "fine_tune_trainee", recorded)
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(unfreeze_blocks=0))
    before = snapshot(tuner)
    tuner.fit(train, validation, verbose=0)
    assert tuner.history["fine_tune"]["loss"] and not changed(before, tuner)
    # Phase 2 and the final validation: the head on the frozen pass's
    # features, never the images through the module.
    assert len(trainees) == 2
    for trainee, inputs, _ in trainees:
        assert isinstance(trainee, model_lib.CachedInputClassifier) and trainee.top is None
        assert inputs[0].shape[1:] == (tuner.backbone.feature_dim,)


def test_only_keras_step_retracing_warnings_are_dropped_during_fit(caplog):
    tf_logger = logging.getLogger("tensorflow")
    keras_steps = ("5 out of the last 13 calls to <function TensorFlowTrainer._make_function."
                   "<locals>.multi_step_on_iterator at 0x7f55> triggered tf.function retracing.")
    ours = "5 out of the last 6 calls to <function decode> triggered tf.function retracing."
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        with recipe._without_keras_retracing_warnings():
            tf_logger.warning(keras_steps)
            tf_logger.warning(ours)
        tf_logger.warning(keras_steps)
    assert caplog.messages == [ours, keras_steps]

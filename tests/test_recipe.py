"""The freezing is real: each phase changes exactly what it should."""

import numpy as np
import pytest

from tfhub_ft import FineTuner, recipe


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


@pytest.mark.parametrize("unfreeze_blocks, expected_blocks", [
    (1, ["head"]),
    (3, ["block_2", "block_3", "head"]),
])
@pytest.mark.slow
def test_phase_two_changes_exactly_the_top_blocks(
        tiny_backbone_path, image_folders, small_config, unfreeze_blocks, expected_blocks):
    train, _, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        unfreeze_blocks=unfreeze_blocks, early_stopping_patience=5, head_epochs=0))
    before = snapshot(tuner)
    # Validating on the training images, the loss falls with training, so the
    # start is not the best epoch and no epoch is rolled back.
    tuner.fit(train, train, verbose=0)
    expected = sorted(
        f"{block}_{layer}/{name}:0" for block in expected_blocks
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

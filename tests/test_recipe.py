"""The freezing is real: each phase changes exactly what it should."""

import numpy as np
import pytest

from tfhub_ft import FineTuner, recipe


def snapshot(tuner):
    return {v.name: v.numpy().copy() for v in tuner.backbone.module.variables}


def changed(before, tuner):
    return sorted(v.name for v in tuner.backbone.module.variables
                  if not np.array_equal(before[v.name], v.numpy()))


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
def test_phase_two_changes_exactly_the_top_blocks(
        tiny_backbone_path, image_folders, small_config, unfreeze_blocks, expected_blocks):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        unfreeze_blocks=unfreeze_blocks, early_stopping_patience=5))
    before = snapshot(tuner)
    tuner.fit(train, validation, verbose=0)
    expected = sorted(
        f"{block}_{layer}/{name}:0" for block in expected_blocks
        for layer, name in [("conv", "kernel"), ("bn", "gamma"), ("bn", "beta")])
    # Every trainable variable of the top blocks moved, nothing else did:
    # no lower block, and no moving statistic (batch norm in inference mode).
    assert changed(before, tuner) == expected


def test_trainable_batch_norm_updates_moving_statistics(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        batch_norm_trainable=True, head_epochs=1, fine_tune_epochs=1))
    before = snapshot(tuner)
    tuner.fit(train, validation, verbose=0)
    assert any("moving_mean" in name for name in changed(before, tuner))


def test_extract_features_flip_is_the_mirror_image(tiny_backbone_path, small_config):
    from tfhub_ft import build_classifier, data
    from tfhub_ft.backbone import HubBackbone
    model = build_classifier(HubBackbone(tiny_backbone_path), 2, 32)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    image_set = data.ImageSet(images, np.array([0, 1, 0], np.int32), ["a", "b"])
    flipped = recipe.extract_features(model, image_set, 2, flip=True)
    mirrored = data.ImageSet(images[:, :, ::-1].copy(), image_set.labels, ["a", "b"])
    np.testing.assert_allclose(flipped, recipe.extract_features(model, mirrored, 2), rtol=1e-5, atol=1e-6)
    plain = model.backbone.module(images.astype(np.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(recipe.extract_features(model, image_set, 2), plain, rtol=1e-5, atol=1e-6)

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuneConfig, arrays, build_classifier, cache, data, recipe
from tfhub_ft.backbone import HubBackbone


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    train = data.ImageSet(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
                          np.array([0, 1, 0, 1, 1], np.int32), ["a", "b"])
    validation = data.ImageSet(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                               np.array([0, 1, 1], np.int32), ["a", "b"])
    return train, validation


@pytest.mark.slow
def test_split_and_whole_backbone_give_the_same_features(tiny_backbone_path, sets):
    train, validation = sets
    model = build_classifier(HubBackbone(tiny_backbone_path), 2, 32, augmentation=("flip",))
    config = FineTuneConfig(batch_size=2, unfreeze_blocks=2)
    plan = recipe.plan_fine_tune(model.backbone, config)
    split = cache.compute_frozen_activations(model, train, validation, config,
                                             arrays.ArrayBudget(), plan.split)
    # A zero budget puts every cached array in a file: same values.
    whole = cache.compute_frozen_activations(
        model, train, validation, config, arrays.ArrayBudget(0))
    assert split.split is not None and whole.split is None
    assert isinstance(whole.train_features[0], arrays.FileArray)
    assert len(split.train_features) == 2 and split.train_features[0].shape == (5, 16)
    for split_features, whole_features in zip(split.train_features, whole.train_features):
        np.testing.assert_allclose(split_features, whole_features.read(range(5)),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.validation_features, whole.validation_features.read(range(3)),
                               rtol=1e-5, atol=1e-6)
    # Variant 0 is the image, variant 1 its mirror.
    expected = model.backbone.module(train.images / np.float32(255), training=False).numpy()
    np.testing.assert_allclose(split.train_features[0], expected, rtol=1e-5, atol=1e-6)
    mirrored = model.backbone.module(train.images[:, :, ::-1] / np.float32(255), training=False)
    np.testing.assert_allclose(split.train_features[1], mirrored.numpy(), rtol=1e-5, atol=1e-6)
    assert len(split.train_boundary) == 2 and len(split.train_boundary[0]) == 1
    assert split.train_boundary[0][0].shape[0] == 5


def test_no_split_when_batch_norm_trains(tiny_backbone_path, sets, caplog):
    train, validation = sets
    backbone = HubBackbone(tiny_backbone_path, batch_norm_trainable=True)
    model = build_classifier(backbone, 2, 32)
    config = FineTuneConfig(batch_size=2, unfreeze_blocks=2)
    with caplog.at_level("INFO"):
        for _ in range(2):
            plan = recipe.plan_fine_tune(backbone, config)
            frozen = cache.compute_frozen_activations(
                model, train, validation, config, arrays.ArrayBudget(), plan.split)
    assert plan.split is None and "batch norm trains" in plan.whole_module_reason
    assert [block.name for block in plan.blocks] == ["block_3", "top"]
    assert frozen.split is None and len(frozen.train_features) == 1
    assert frozen.train_features[0].shape == (5, 16)
    assert caplog.text.count("batch norm trains") == 1  # said once
    # Asked for, so not a warning; its cost is still said.
    (record,) = [r for r in caplog.records if "batch norm trains" in r.getMessage()]
    assert record.levelname == "INFO" and "3-5x slower" in record.getMessage()

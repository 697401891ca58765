import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuneConfig, build_classifier, cache, data
from tfhub_ft.backbone import HubBackbone


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    train = data.ImageSet(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
                          np.array([0, 1, 0, 1, 1], np.int32), ["a", "b"])
    validation = data.ImageSet(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                               np.array([0, 1, 1], np.int32), ["a", "b"])
    return train, validation


def test_split_and_whole_backbone_give_the_same_features(tiny_backbone_path, sets):
    train, validation = sets
    model = build_classifier(HubBackbone(tiny_backbone_path), 2, 32, augmentation=("flip",))
    config = FineTuneConfig(batch_size=2, unfreeze_blocks=2)
    split = cache.compute_frozen_activations(model, train, validation, config)
    whole = cache.compute_frozen_activations(
        model, train, validation, config.replace(fine_tune_epochs=0))
    assert split.split is not None and whole.split is None
    assert split.train_features.shape == (5, 2, 16)
    np.testing.assert_allclose(split.train_features, whole.train_features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.validation_features, whole.validation_features,
                               rtol=1e-5, atol=1e-6)
    # Variant 0 is the image, variant 1 its mirror.
    expected = model.backbone.module(train.images / np.float32(255), training=False).numpy()
    np.testing.assert_allclose(whole.train_features[:, 0], expected, rtol=1e-5, atol=1e-6)
    mirrored = model.backbone.module(train.images[:, :, ::-1] / np.float32(255), training=False)
    np.testing.assert_allclose(whole.train_features[:, 1], mirrored.numpy(), rtol=1e-5, atol=1e-6)
    assert len(split.train_boundary) == 1 and split.train_boundary[0].shape[:2] == (5, 2)


def test_no_split_when_batch_norm_trains(tiny_backbone_path, sets, caplog):
    train, validation = sets
    backbone = HubBackbone(tiny_backbone_path, batch_norm_trainable=True)
    model = build_classifier(backbone, 2, 32)
    with caplog.at_level("INFO"):
        frozen = cache.compute_frozen_activations(model, train, validation, FineTuneConfig(batch_size=2))
        cache.compute_frozen_activations(model, train, validation, FineTuneConfig(batch_size=2))
    assert frozen.split is None and frozen.train_features.shape == (5, 1, 16)
    assert caplog.text.count("batch norm trains") == 1  # said once


def test_variant_dataset_chooses_one_variant_per_example():
    inputs = np.stack([np.arange(6.0), -np.arange(6.0)], axis=1)[:, :, None]  # [6, 2, 1]
    labels = np.arange(6) % 3
    dataset = cache.variant_dataset(inputs, labels, 3, batch_size=4, seed=0)
    seen_mirrored = False
    for _ in range(3):
        values = np.concatenate([x.numpy()[:, 0] for x, _ in dataset])
        labels_seen = np.concatenate([y.numpy().argmax(-1) for _, y in dataset])
        assert sorted(np.abs(values).tolist()) == list(range(6))
        seen_mirrored |= bool((values < 0).any())
    assert seen_mirrored
    batches = list(cache.evaluation_dataset(inputs[:, 0], labels, 3, 4))
    np.testing.assert_array_equal(batches[0][1].numpy().argmax(-1), labels[:4])

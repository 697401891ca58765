import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuneConfig, FineTuner


def test_fit_with_validation_split_evaluate_and_predict(tiny_backbone_path, image_folders, small_config):
    train, validation, _, names = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    history = tuner.fit(train, validation_split=0.25, verbose=0)
    assert set(history) == {"head", "fine_tune"}
    assert set(history["head"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert tuner.class_names == sorted(names)
    assert tuner.validation_metrics["count"] == 12  # 25% of 16 per class, 3 classes
    metrics = tuner.evaluate(validation)
    assert metrics["count"] == 12 and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    probabilities = tuner.predict(np.zeros((3, 40, 20, 3), np.uint8))
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_fit_on_tf_data_dataset(tiny_backbone_path, small_config):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 24, 24, 3), dtype=np.uint8)
    labels = np.arange(20) % 2
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    tuner.fit(dataset, validation=dataset.take(6), class_names=["cat", "dog"], verbose=0)
    assert tuner.class_names == ["cat", "dog"]
    assert tuner.validation_metrics["count"] == 6


def test_same_seed_repeats(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    results = []
    for _ in range(2):
        tuner = FineTuner(tiny_backbone_path, config=small_config.replace(fine_tune_epochs=0))
        results.append(tuner.fit(train, validation, verbose=0)["head"]["val_loss"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_options_and_config_are_checked(tiny_backbone_path):
    assert FineTuner(tiny_backbone_path, unfreeze_blocks=1).config.unfreeze_blocks == 1
    with pytest.raises(TypeError, match="Unknown fine-tuning option"):
        FineTuner(tiny_backbone_path, unfreze_blocks=1)
    with pytest.raises(TypeError, match="Expected a FineTuneConfig"):
        FineTuner(tiny_backbone_path, config={"batch_size": 2})
    with pytest.raises(ValueError, match="call `fit` first"):
        FineTuner(tiny_backbone_path).evaluate("x")


def test_image_size_default_and_override(tiny_backbone_path):
    assert FineTuner(tiny_backbone_path).image_size == 224
    assert FineTuner(tiny_backbone_path, image_size=48).image_size == 48


def test_validation_classes_must_match(tiny_backbone_path, image_folders, tmp_path, small_config):
    from tests import fixtures
    from tfhub_ft.demo import shapes
    train, _, _, _ = image_folders
    images, labels, _ = shapes.make_shape_images(2, 2, 32, task="target")
    fixtures.write_image_folder(str(tmp_path), images, labels, ["alien", "other"])
    with pytest.raises(ValueError, match=r"validation data has class\(es\) \['alien', 'other'\]"):
        FineTuner(tiny_backbone_path, config=small_config).fit(train, str(tmp_path), verbose=0)


def test_fit_under_a_mirrored_strategy(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = FineTuner(tiny_backbone_path, config=small_config, strategy=strategy)
    tuner.fit(train, validation, verbose=0)
    assert tuner.validation_metrics["count"] == 12


def test_spilling_to_disk_gives_the_same_model(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    results = []
    for megabytes in (4096, 0):
        tuner = FineTuner(tiny_backbone_path, config=small_config.replace(cache_memory_mb=megabytes))
        tuner.fit(train, validation, verbose=0)
        results.append((tuner.validation_metrics["loss"], tuner.model.head.kernel.numpy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


def test_more_blocks_than_the_backbone_has_trains_them_all(tiny_backbone_path, caplog):
    with caplog.at_level("WARNING"):
        tuner = FineTuner(tiny_backbone_path, unfreeze_blocks=50)
    assert tuner.config.unfreeze_blocks == 5
    assert "fine-tuning all of them" in caplog.text

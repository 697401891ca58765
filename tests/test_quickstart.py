"""Tests of the offline quickstart (`tfhub_ft.demo.quickstart`) on a tiny run."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuner, export
from tfhub_ft.demo import quickstart, shapes

# Seconds, not minutes: a two-layer backbone, 16-pixel images, one epoch each.
TINY = quickstart.QuickstartConfig(
    source_classes=4, source_images_per_class=8, source_test_images_per_class=2,
    pretrain_epochs=1, widths=(4, 8), image_size=16, target_classes=3,
    train_images_per_class=4, validation_images_per_class=2,
    test_images_per_class=3, batch_size=4, head_epochs=1, fine_tune_epochs=1,
    num_predictions=4, seed=3)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("quickstart")
    return work_dir, quickstart.run_quickstart(str(work_dir), TINY)


@pytest.mark.slow
def test_result_fields(tiny_run):
    work_dir, result = tiny_run
    _, _, names = shapes.make_shape_images(3, 1, 16, task="target")
    assert result.class_names == names
    for name in ("source_accuracy", "fine_tuned_accuracy", "scratch_accuracy",
                 "fine_tuned_test_accuracy", "scratch_test_accuracy",
                 "exported_test_accuracy"):
        value = getattr(result, name)
        assert isinstance(value, float) and 0.0 <= value <= 1.0, name
    assert -1.0 <= result.transfer_gain <= 1.0
    for name in ("pretrain_seconds", "fine_tune_seconds", "scratch_seconds"):
        assert 0 < getattr(result, name) < result.total_seconds, name
    # PNG is lossless and 16 = image_size, so the export sees the same pixels.
    assert abs(result.exported_test_accuracy - result.fine_tuned_test_accuracy) <= 1 / 9
    assert result.export_dir == os.path.join(str(work_dir), quickstart.EXPORT_DIR)
    for folder in (quickstart.PRETRAINED_DIR, quickstart.SCRATCH_DIR, quickstart.EXPORT_DIR):
        assert tf.saved_model.contains_saved_model(os.path.join(str(work_dir), folder))


def test_predictions_are_valid_labels(tiny_run):
    _, result = tiny_run
    assert len(result.predictions) == TINY.num_predictions
    for prediction in result.predictions:
        assert isinstance(prediction, quickstart.Prediction)
        assert prediction.true_label in result.class_names
        assert prediction.predicted_label in result.class_names
        # The top-1 of 3 classes has probability >= 1/3.
        assert 1 / 3 - 1e-6 <= prediction.probability <= 1.0


def test_export_reloads_and_serves_png_bytes(tiny_run):
    _, result = tiny_run
    assert export.read_labels(result.export_dir) == result.class_names
    serve = tf.saved_model.load(result.export_dir).signatures["serving_default"]
    images, _, _ = shapes.make_shape_images(3, 2, 40, seed=9, task="target")
    outputs = serve(image_bytes=tf.constant(
        [tf.io.encode_png(image).numpy() for image in images]))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (6, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert set(outputs["class_ids"].numpy().tolist()) <= {0, 1, 2}
    assert {c.decode() for c in outputs["classes"].numpy()} <= set(result.class_names)


def test_pretrained_backbone_is_a_hub_feature_vector(tiny_run):
    work_dir, _ = tiny_run
    path = os.path.join(str(work_dir), quickstart.PRETRAINED_DIR)
    module = tf.saved_model.load(path)
    # Only the generic traces were saved: any batch size works, also through
    # a shape-losing tf.function (the backbone's probe trace must not leak).
    for batch in (1, 5):
        images = tf.zeros([batch, 16, 16, 3])
        assert module(images, training=False).shape == (batch, 8)
        unknown = tf.function(lambda x: module(x, training=False),
                              input_signature=[tf.TensorSpec([None, None, None, 3])])
        assert unknown(images).shape == (batch, 8)
    tuner = FineTuner(path, image_size=16)
    assert [b.name for b in tuner.backbone.blocks] == ["stem", "block_1", "top"]


@pytest.mark.slow
def test_pretrain_backbone_learns_and_saves(tmp_path):
    config = quickstart.QuickstartConfig(
        source_classes=3, source_images_per_class=6,
        source_test_images_per_class=2, image_size=16, pretrain_epochs=1,
        widths=(4, 8), seed=1)
    info = quickstart.pretrain_backbone(tmp_path / "backbone", config)
    assert set(info) == {"path", "source_accuracy", "train_accuracy",
                         "class_names", "seconds"}
    assert tf.saved_model.contains_saved_model(info["path"])
    assert 0.0 <= info["source_accuracy"] <= 1.0 and info["seconds"] > 0
    assert info["class_names"] == shapes.make_shape_images(3, 1, 8)[2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_classes=16), "target_classes"),
    (dict(source_classes=1), "source_classes"),
    (dict(train_images_per_class=1), "train_images_per_class"),
    (dict(head_epochs=0, fine_tune_epochs=0), "at least one epoch"),
    (dict(widths=(8,)), "widths"),
    (dict(num_predictions=1000), "num_predictions"),
    (dict(scratch_learning_rate=0), "scratch_learning_rate"),
    (dict(head_learning_rate=-1.0), "head_learning_rate"),
    (dict(image_size=4), "image_size"),
    (dict(seed=-1), "seed"),
])
def test_bad_config_fails_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quickstart.QuickstartConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        quickstart.QuickstartConfig().replace(**kwargs)


def test_work_dir_must_be_a_folder(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="which is a file"):
        quickstart.run_quickstart(str(path))


def test_config_is_frozen_and_replace_checks_names():
    config = quickstart.QuickstartConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    assert config.replace(seed=2).seed == 2 and config.seed == 0
    assert config.replace(widths=[4, 8]).widths == (4, 8)
    with pytest.raises(TypeError, match=r"Unknown quickstart option\(s\) \['sede'\]"):
        config.replace(sede=2)


def test_presets():
    assert quickstart.QuickstartConfig.from_preset("default") == quickstart.QuickstartConfig()
    fast = quickstart.QuickstartConfig.from_preset("fast", seed=4)
    assert fast == quickstart.QuickstartConfig(
        source_images_per_class=60, pretrain_epochs=12, widths=(24, 48, 96, 96), seed=4)
    with pytest.raises(ValueError, match=r"Expected one of \['default', 'fast'\]"):
        quickstart.QuickstartConfig.from_preset("slow")


def test_run_quickstart_needs_a_config(tmp_path):
    with pytest.raises(TypeError, match="Expected a `QuickstartConfig`"):
        quickstart.run_quickstart(str(tmp_path / "run"), {"seed": 1})
    assert not os.path.exists(tmp_path / "run")

import os

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuner, HubBackbone, export, hub_export
from tfhub_ft import hub_format


@pytest.fixture(scope="module")
def exported(tiny_backbone_path, tmp_path_factory):
    tuner = FineTuner(tiny_backbone_path, image_size=32)
    # Stands for fine-tuning, deterministically: change the top two blocks'
    # weights through the Keras variables, as the optimizer does.
    for block in tuner.backbone.unfreeze_top_blocks(2):
        for variable in tuner.backbone.block_variables(block):
            variable.assign(variable * 1.5 + 0.05)
    path = tuner.export_backbone(str(tmp_path_factory.mktemp("backbone") / "hub"))
    return tuner, path


def images(count=4, size=32, seed=0):
    return np.random.default_rng(seed).random((count, size, size, 3)).astype(np.float32)


def test_the_export_holds_the_fine_tuned_weights(exported, tiny_backbone_path):
    tuner, path = exported
    reloaded = HubBackbone(path)
    expected = tuner.backbone(images()).numpy()
    np.testing.assert_array_equal(reloaded(images()).numpy(), expected)
    original = HubBackbone(tiny_backbone_path)(images()).numpy()
    assert np.abs(original - expected).max() > 1e-4  # fine-tuning changed them


def test_it_loads_as_a_fine_tuner_handle_with_the_same_blocks(exported):
    tuner, path = exported
    again = FineTuner(path, config=tuner.config)
    assert [b.name for b in again.backbone.blocks] == [b.name for b in tuner.backbone.blocks]
    assert ([(name, count) for name, count, _ in again.backbone.block_summary()]
            == [(name, count) for name, count, _ in tuner.backbone.block_summary()])
    assert ([v.name for v in again.backbone.module.variables]
            == [v.name for v in tuner.backbone.module.variables])
    assert ([v.name for v in again.backbone.module.trainable_variables]
            == [v.name for v in tuner.backbone.module.trainable_variables])
    assert list(again.backbone.module.regularization_losses) == []
    split = again.backbone.split_top_blocks(2)
    assert split is not None
    np.testing.assert_allclose(split.top(split.bottom(images())).numpy(),
                               tuner.backbone(images()).numpy(), rtol=1e-5, atol=1e-6)


def test_hub_keras_layer_gives_the_same_features(exported):
    import tensorflow_hub as hub
    import tf_keras  # noqa: F401  hub.KerasLayer is a tf_keras layer
    tuner, path = exported
    layer = hub.KerasLayer(path, trainable=True)
    np.testing.assert_array_equal(layer(tf.constant(images())).numpy(),
                                  tuner.backbone(images()).numpy())
    assert len(layer.trainable_weights) == len(tuner.backbone.module.trainable_variables)
    # The traced training=True branch (batch statistics) survives the re-save.
    assert layer(tf.constant(images()), training=True).shape == (4, tuner.backbone.feature_dim)


def test_written_atomically_and_errors_are_explained(exported, tmp_path, monkeypatch):
    tuner, _ = exported
    path = tuner.export_backbone(str(tmp_path / "hub"))
    before = sorted(os.listdir(path))

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        tuner.export_backbone(path)
    assert sorted(os.listdir(path)) == before
    assert sorted(os.listdir(tmp_path)) == ["hub"]
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="which is a file"):
        tuner.export_backbone(str(blocker))
    with pytest.raises(TypeError, match="Expected a HubBackbone"):
        hub_export.export_backbone(tuner.model, str(tmp_path / "x"))
    # One kind of export does not replace the other.
    classifier = tmp_path / "classifier"  # what `FineTuner.export` writes, in short
    classifier.mkdir()
    (classifier / "saved_model.pb").write_bytes(b"")
    (classifier / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"earlier backbone export to replace.*holds a "
                                         r"classifier export \(saved_model.pb with "
                                         r"labels.txt\).*Choose another folder"):
        tuner.export_backbone(classifier)
    with pytest.raises(ValueError, match=r"earlier classifier export to replace.*holds a "
                                         r"backbone or hub module \(saved_model.pb without"):
        export.check_replaceable(path)
    assert "labels.txt" in os.listdir(classifier) and "labels.txt" not in os.listdir(path)


def test_a_keras_export_comes_back_as_a_hub_module(tmp_path):
    import tensorflow_hub as hub
    import tf_keras  # noqa: F401  hub.KerasLayer is a tf_keras layer

    from tests import module_shapes
    source, blocks = module_shapes.keras_exported(tmp_path / "keras", package="keras",
                                                  save="export", image_size=32)
    tuner = FineTuner(source)
    for block in tuner.backbone.unfreeze_top_blocks(2):
        for variable in tuner.backbone.block_variables(block):
            variable.assign(variable * 1.5 + 0.05)
    path = tuner.export_backbone(str(tmp_path / "hub"))
    expected = tuner.backbone(images()).numpy()
    again = FineTuner(path)
    assert [b.name for b in again.backbone.blocks] == blocks
    # Still known for a signature, whose `training` changes nothing.
    assert hub_format.is_serving_signature_module(again.backbone.module)
    with pytest.raises(ValueError, match="Invalid value for `batch_norm_trainable`"):
        HubBackbone(path, batch_norm_trainable=True)
    assert again.backbone.image_size == 32
    np.testing.assert_array_equal(again.backbone(images()).numpy(), expected)
    layer = hub.KerasLayer(path, trainable=True)
    np.testing.assert_array_equal(layer(tf.constant(images())).numpy(), expected)
    assert len(layer.trainable_weights) == len(tuner.backbone.module.trainable_variables)


def test_a_backbone_fine_tuned_through_the_split_exports_what_the_classifier_uses(
        tiny_backbone_path, image_folders, small_config, tmp_path, caplog):
    import logging

    import tensorflow_hub as hub
    import tf_keras  # noqa: F401  hub.KerasLayer is a tf_keras layer
    train, validation, _, _ = image_folders
    # Without phase 1 an epoch of phase 2 is always kept (the untrained
    # head's start does not compete), so the backbone is sure to change.
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(head_epochs=0))
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        tuner.fit(train, validation, verbose=0)
    assert "(split backbone)" in caplog.text  # phase 2 trained the split's top
    assert tuner.kept_epoch[0] == "fine_tune" and tuner.kept_epoch[1] >= 1
    path = tuner.export_backbone(str(tmp_path / "hub"))
    batch = images(6)
    expected = tuner.backbone(batch).numpy()
    pretrained = HubBackbone(tiny_backbone_path)(batch).numpy()
    assert np.abs(expected - pretrained).max() > 1e-4  # phase 2 changed the backbone
    for features in (HubBackbone(path)(batch).numpy(),
                     hub.KerasLayer(path)(tf.constant(batch)).numpy()):
        np.testing.assert_array_equal(features, expected)
        # The fine-tuned classifier is this module under its head.
        probabilities = tf.nn.softmax(tuner.model.classify_features(features)).numpy()
        np.testing.assert_allclose(probabilities, tuner.predict(batch), rtol=1e-5, atol=1e-6)

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import build_classifier
from tfhub_ft.backbone import HubBackbone


@pytest.fixture
def classifier(tiny_backbone_path):
    return build_classifier(HubBackbone(tiny_backbone_path), 3, 32, dropout_rate=0.5,
                            augmentation=("flip",), seed=0)


def test_head_is_the_only_new_layer(classifier):
    backbone_weights = {id(w) for w in classifier.backbone.weights}
    new = [w for w in classifier.weights if id(w) not in backbone_weights]
    assert [w.name for w in new] == ["kernel", "bias"]
    assert classifier.head.kernel.shape == (16, 3)
    np.testing.assert_array_equal(classifier.head.bias.numpy(), 0)


def test_uint8_and_float_inputs_of_any_size_agree(classifier):
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    from_uint8 = classifier(images).numpy()
    from_float = classifier(tf.constant(images / 255.0, tf.float32)).numpy()
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-5, atol=1e-6)
    assert classifier(np.zeros((1, 50, 40, 3), np.uint8)).shape == (1, 3)


def test_augmentation_and_dropout_only_in_training(classifier):
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    first, second = classifier(images).numpy(), classifier(images).numpy()
    np.testing.assert_array_equal(first, second)
    training = classifier(images, training=True).numpy()
    assert not np.allclose(training, first)


def test_num_classes_is_checked(tiny_backbone_path):
    with pytest.raises(ValueError, match=r"Expected an integer >= 2.*num_classes=1"):
        build_classifier(HubBackbone(tiny_backbone_path), 1, 32)


def test_a_mixed_global_dtype_policy_leaves_the_classifier_and_the_split_in_float32(
        tiny_backbone_path):
    import keras
    images = np.random.default_rng(2).random((2, 32, 32, 3)).astype(np.float32)
    expected = build_classifier(HubBackbone(tiny_backbone_path), 3, 32, seed=0)(images).numpy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        classifier = build_classifier(HubBackbone(tiny_backbone_path), 3, 32,
                                      augmentation=("flip",), seed=0)
        # Under the mixed policy, the split's graph was once fed float16
        # weights and fell back to the whole module.
        splits = [classifier.backbone.split_top_blocks(count) for count in (2, 5)]
        outputs = classifier(images)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(split is not None for split in splits)
    assert {layer.compute_dtype for layer in [classifier, classifier.backbone, classifier.head,
                                              classifier.dropout, classifier.flip]} == {"float32"}
    assert outputs.dtype == tf.float32
    np.testing.assert_allclose(outputs.numpy(), expected, rtol=1e-6, atol=1e-6)

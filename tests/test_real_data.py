"""Opt-in checks on the real backbone and photos in ../shared.

Run with TFHUB_FT_REAL_DATA=1; skipped otherwise, and skipped when the
shared folder is absent.
"""

import os

import numpy as np
import pytest

from tests.conftest import SHARED

BACKBONE = os.path.join(SHARED, "models", "mobilenet_v2_035_feature_vector")
CLOTHING = os.path.join(SHARED, "data", "clothing-small")
CIFAR = os.path.join(SHARED, "data", "cifar10-small")

pytestmark = [
    pytest.mark.skipif(os.environ.get("TFHUB_FT_REAL_DATA") != "1",
                       reason="real-data tests are opt-in: set TFHUB_FT_REAL_DATA=1"),
    pytest.mark.skipif(not os.path.isdir(BACKBONE) or not os.path.isdir(CLOTHING),
                       reason=f"shared backbone and data not found under {SHARED}"),
]


def test_real_backbone_blocks():
    from tfhub_ft import HubBackbone
    backbone = HubBackbone(BACKBONE)
    names = [b.name for b in backbone.blocks]
    assert names == ["stem"] + [f"block_{i}" for i in range(17)] + ["top"]
    assert backbone.count_params() == 410208 and backbone.feature_dim == 1280
    assert len(backbone.trainable_weights) == 156


def test_default_recipe_on_clothing(tmp_path):
    import tensorflow as tf
    from tfhub_ft import FineTuner
    tuner = FineTuner(BACKBONE)
    tuner.fit(os.path.join(CLOTHING, "train"), os.path.join(CLOTHING, "validation"), verbose=0)
    # make_image_classifier scored 0.807 on this validation folder.
    assert tuner.validation_metrics["accuracy"] > 0.807
    path = tuner.export(str(tmp_path / "clothing"))
    loaded = tf.saved_model.load(path)
    folder = os.path.join(CLOTHING, "validation", "hat")
    files = sorted(os.listdir(folder))[:4]
    encoded = [open(os.path.join(folder, f), "rb").read() for f in files]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    assert outputs["probabilities"].shape == (4, 10)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1, rtol=1e-5)


@pytest.mark.skipif(not os.path.isdir(CIFAR), reason=f"{CIFAR} not found")
def test_small_images_choose_the_small_image_size():
    from tfhub_ft import FineTuner
    tuner = FineTuner(BACKBONE)
    train, validation = tuner.load_data(os.path.join(CIFAR, "train"),
                                        os.path.join(CIFAR, "validation"))
    assert tuner.image_size == 160
    assert train.images.shape[1:] == validation.images.shape[1:] == (160, 160, 3)


def test_real_backbone_reexports_as_a_hub_module(tmp_path):
    import tensorflow_hub as hub
    import tf_keras  # noqa: F401  hub.KerasLayer is a tf_keras layer
    from tfhub_ft import HubBackbone, export_backbone
    backbone = HubBackbone(BACKBONE)
    for variable in backbone.block_variables("top"):
        variable.assign(variable * 1.1)  # stands for fine-tuning
    path = export_backbone(backbone, str(tmp_path / "hub"))
    again = HubBackbone(path)
    assert [b.name for b in again.blocks] == [b.name for b in backbone.blocks]
    assert again.split_top_blocks(8) is not None
    images = np.random.default_rng(0).random((2, 224, 224, 3)).astype(np.float32)
    expected = backbone(images).numpy()
    np.testing.assert_array_equal(again(images).numpy(), expected)
    np.testing.assert_array_equal(hub.KerasLayer(path)(images).numpy(), expected)

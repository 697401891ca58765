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
    assert names == ["stem"] + [f"block_{i}" for i in range(17)] + ["head"]
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

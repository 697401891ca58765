import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft.backbone import HubBackbone
from tfhub_ft.module_graph import ModuleGraph


@pytest.fixture
def backbone(tiny_backbone_path):
    return HubBackbone(tiny_backbone_path)


def test_trace_positions_follow_data_flow(backbone):
    graph = ModuleGraph(backbone.module, backbone.module.variables)
    positions = graph.trace_positions(len(backbone.module.variables))
    kernels = [positions[i] for i, v in enumerate(backbone.module.variables)
               if v.name.endswith("kernel:0")]
    assert kernels == sorted(kernels) and len(set(kernels)) == len(kernels)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_split_top_matches_whole_module_and_its_gradients(backbone, count):
    split = backbone.split_top_blocks(count)
    backbone.unfreeze_top_blocks(count)
    trainable = backbone.trainable_weights
    images = tf.random.stateless_uniform([3, 32, 32, 3], seed=[5, 6])

    @tf.function
    def split_gradients(images):
        boundary = split.bottom(images)
        with tf.GradientTape() as tape:
            features = split.top(boundary)
            loss = tf.reduce_sum(features ** 2)
        return features, tape.gradient(loss, trainable)

    @tf.function
    def whole_gradients(images):
        with tf.GradientTape() as tape:
            features = backbone(images)
            loss = tf.reduce_sum(features ** 2)
        return features, tape.gradient(loss, trainable)

    features, gradients = split_gradients(images)
    expected_features, expected_gradients = whole_gradients(images)
    np.testing.assert_allclose(features.numpy(), expected_features.numpy(), rtol=1e-5, atol=1e-6)
    for got, expected in zip(gradients, expected_gradients):
        assert got is not None
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    top_names = {w.name for w in split.top.weights}
    assert {w.name for w in trainable} <= top_names


def test_split_of_zero_blocks_is_none(backbone):
    assert backbone.split_top_blocks(0) is None

"""Every module shape real hubs publish: forward block order, exact freezing,
an active split equal to the whole module, and the recipe to the end."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import module_shapes
from tfhub_ft import FineTuner
from tfhub_ft.backbone import HubBackbone


@pytest.fixture(scope="module")
def saved_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {name: build(root / name) for name, build in module_shapes.BUILDERS.items()}


SHAPES = sorted(module_shapes.BUILDERS)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_blocks_in_forward_order_from_the_trace(saved_shapes, shape, caplog):
    path, expected = saved_shapes[shape]
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        backbone = HubBackbone(path)
    assert [block.name for block in backbone.blocks] == expected
    assert backbone.block_order_source == "trace"
    assert not caplog.records


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_unfreeze_top_blocks_trains_exactly_their_variables(saved_shapes, shape):
    path, expected = saved_shapes[shape]
    backbone = HubBackbone(path)
    backbone.unfreeze_top_blocks(2)
    top = set(expected[-2:])
    trainable_names = {variable.path for variable in backbone.trainable_weights}
    expected_names = {
        backbone._wrapped[i].path for block in backbone.blocks if block.name in top
        for i in block.variable_indices if backbone._module_trainable[i]}
    assert trainable_names == expected_names and expected_names
    assert all("moving_" not in name for name in trainable_names)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("depth", ["half", "all"])
def test_split_equals_whole_module_features_and_gradients(saved_shapes, shape, depth):
    path, expected = saved_shapes[shape]
    backbone = HubBackbone(path)
    # Every block: the top part starts at the images (the Keras shapes' input
    # was once colocated with a node only the bottom part held).
    count = len(expected) // 2 if depth == "half" else len(expected)
    (features, gradients), (want_features, want_gradients) = module_shapes.split_and_whole_gradients(
        backbone, count, 32)
    np.testing.assert_allclose(features.numpy(), want_features.numpy(), rtol=1e-5, atol=1e-5)
    assert len(gradients) == len(want_gradients) > 0
    for got, want in zip(gradients, want_gradients):
        assert got is not None
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_correction_offsets_reach_every_kernel_op(saved_shapes, shape):
    # Each op's offset goes into a variable or an inserted addition
    # (`ModuleGraph.whole`): zero offsets change nothing, and one on each
    # op changes the features.
    path, _ = saved_shapes[shape]
    backbone = HubBackbone(path)
    ops = backbone.kernel_ops()
    if shape == "bit_resnet":
        # Weight standardisation: the convolutions' kernels are computed
        # from the variables, not read; the converter's rounding of them is
        # not corrected.
        assert ops == []
        return
    assert ops and {op.op for op in ops} <= {"Conv2D", "DepthwiseConv2dNative", "MatMul"}
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
    plain = backbone.inference_features(images).numpy()
    zeros = {op.name: np.zeros(int(np.prod([backbone.kernel_value(op).shape[a]
                                            for a in op.channel_axes])), np.float32)
             for op in ops}
    np.testing.assert_allclose(backbone.inference_features(images, zeros).numpy(), plain,
                               rtol=1e-6, atol=1e-6)
    for op in (ops[0], ops[-1]):
        # Not one constant: a layer or group norm after the op removes that.
        offset = np.linspace(-1.0, 1.0, len(zeros[op.name])).astype(np.float32)
        moved = backbone.inference_features(images, {op.name: offset}).numpy()
        assert np.abs(moved - plain).max() > 1e-4, op.name


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_two_phase_recipe_runs_to_the_end_with_the_split_and_exports_tflite(
        saved_shapes, shape, image_folders, small_config, tmp_path, caplog):
    path, _ = saved_shapes[shape]
    train, validation, _, names = image_folders
    tuner = FineTuner(path, config=small_config, head_epochs=1, fine_tune_epochs=1)
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        history = tuner.fit(train, validation=validation)
    assert len(history["head"]["loss"]) == 1 and len(history["fine_tune"]["loss"]) >= 1
    assert not [r for r in caplog.records if "Not splitting" in r.getMessage()]
    assert tuner.predict(np.zeros([1, 32, 32, 3], np.uint8)).shape == (1, len(names))
    # The Slim shapes' `tf.cond` once failed the converter ("expected type
    # resource != float").
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        export_dir = tuner.export(str(tmp_path / "export"), tflite="float32")
    assert not caplog.records  # converted through the inlined graph, its check passed
    with open(os.path.join(export_dir, "tflite_parity.json")) as f:
        parity = json.load(f)
    assert parity["top1_agreement"] == 1.0
    assert parity["max_probability_difference"] < 1e-5


def test_fixed_size_module_refuses_a_contradicting_image_size(saved_shapes):
    path, _ = saved_shapes["vit"]
    assert FineTuner(path).image_size == 32
    with pytest.raises(ValueError, match=r"Expected 32: the module .* takes only "
                                         r"32x32 images\. Received: image_size=64"):
        FineTuner(path, image_size=64)


@pytest.mark.slow
def test_split_is_used_with_another_input_range(saved_shapes, caplog):
    path, _ = saved_shapes["slim_cond_network"]
    backbone = HubBackbone(path, input_range=(0, 255))
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        split = backbone.split_top_blocks(3)
    assert split is not None and not caplog.records
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[7, 8])
    np.testing.assert_allclose(split.top(split.bottom(images)).numpy(),
                               backbone(images).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_variables_read_inside_xla_functions_fall_back_and_still_export_tflite(
        tmp_path, image_folders, small_config, caplog):
    path = module_shapes.xla_compiled_layers(tmp_path / "xla")
    train, validation, _, _ = image_folders
    tuner = FineTuner(path, config=small_config, head_epochs=1, fine_tune_epochs=1)
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        tuner.fit(train, validation=validation)
    assert [r.getMessage() for r in caplog.records if "Not splitting" in r.getMessage()] == [
        f"Not splitting {path}: the split graph could not be built or run (ValueError: "
        f"some of its variables are read inside functions that are not inlined "
        f"(StatefulPartitionedCall; XLA-compiled ones, such as Keras 3's grouped "
        f"convolutions, stay calls), so its graph cannot be cut there); fine-tuning runs "
        f"the whole module forward each step (about 3-5x slower per fine-tuning step)."]
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[5, 6])
    np.testing.assert_allclose(tuner.backbone.inference_features(images).numpy(),
                               tuner.backbone(images).numpy(), rtol=1e-5, atol=1e-6)
    export_dir = tuner.export(str(tmp_path / "export"), tflite="float32")
    with open(os.path.join(export_dir, "tflite_parity.json")) as f:
        assert json.load(f)["top1_agreement"] == 1.0


@pytest.mark.parametrize("branches", [False, True])
def test_names_no_rule_knows_make_one_block_per_layer_with_a_warning(tmp_path, caplog,
                                                                     branches):
    path, expected = module_shapes.generic_layer_names(tmp_path / "generic",
                                                       branches=branches)
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        backbone = HubBackbone(path)
    variables = backbone.module.variables
    # Each batch norm with its convolution, in parallel branches too.
    assert [sorted(variables[i].name.split("/")[0] for i in block.variable_indices)
            for block in backbone.blocks] == [
        [f"batch_normalization{suffix}"] * 4 + [f"conv2d{suffix}"]
        for suffix in ("", "_1", "_2", "_3")]
    assert [block.name for block in backbone.blocks] == expected
    assert [r.getMessage() for r in caplog.records] == [
        f"The block rules know 0% of the kernels of {path} (not 'conv2d/kernel:0', for "
        f"one): each layer with a kernel is a block here, with its batch norm, so "
        f"unfreeze_blocks counts layers. Pass block_pattern (--block_pattern in the "
        f"command), a regular expression whose first group names the block, to group "
        f"them into the network's own blocks."]
    assert backbone.split_top_blocks(2) is not None
    again = HubBackbone(path, block_pattern=r"^(?:conv2d|batch_normalization)(_\d+)?/")
    assert len(again.blocks) == 3  # the first layer's names have no group: it joins the next


def test_a_block_pattern_that_does_not_compile_is_a_value_error(tmp_path):
    path, _ = module_shapes.generic_layer_names(tmp_path / "generic")
    with pytest.raises(ValueError, match=r"Invalid value for `block_pattern`\. Expected a "
                       r"regular expression .*Received: block_pattern='\('"):
        HubBackbone(path, block_pattern="(")

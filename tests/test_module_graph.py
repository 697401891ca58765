import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import module_shapes
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
    (features, gradients), (expected_features, expected_gradients) = (
        module_shapes.split_and_whole_gradients(backbone, count, 32))
    np.testing.assert_allclose(features.numpy(), expected_features.numpy(), rtol=1e-5, atol=1e-6)
    for got, expected in zip(gradients, expected_gradients):
        assert got is not None
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    top_names = {w.name for w in backbone.split_top_blocks(count).top.weights}
    assert {w.name for w in backbone.trainable_weights} <= top_names


def test_split_of_zero_blocks_is_none(backbone):
    assert backbone.split_top_blocks(0) is None


def _op_types(graph_def):
    return {node.op for node in graph_def.node}


def test_inlining_flattens_nested_calls_and_resolves_constant_conditionals():
    """Pins what TensorFlow's Grappler must keep doing for block tracing:
    nested function calls inlined, `If` and `Case` lowered, and the branch a
    constant predicate takes kept (a TensorFlow upgrade that changes this
    fails here, not silently in users' block order)."""
    from tfhub_ft.module_graph import inline_call_graph

    scale = tf.Variable(3.0)

    @tf.function
    def inner(x, training):
        return tf.cond(training, lambda: x * scale + 100.0, lambda: x * scale)

    @tf.function
    def middle(x, index):
        return tf.switch_case(index, [lambda: inner(x, tf.constant(True)),
                                      lambda: inner(x, tf.constant(False)) - 1.0])

    @tf.function
    def call(x):
        return middle(x, tf.constant(1)) + 0.5

    function = call.get_concrete_function(tf.TensorSpec([None], tf.float32))
    graph_def = inline_call_graph(function)
    assert not _op_types(graph_def) & {
        "PartitionedCall", "StatefulPartitionedCall", "If", "StatelessIf", "Case",
        "StatelessCase", "Switch", "_SwitchN", "Merge"}
    assert "ReadVariableOp" in _op_types(graph_def)
    output = function.graph.outputs[0].name
    placeholder = function.graph.inputs[0].name
    captured = {t.name: v for t, v in zip(function.graph.internal_captures,
                                          function.captured_inputs)}
    run = tf.compat.v1.wrap_function(
        lambda x, handle: tf.graph_util.import_graph_def(
            graph_def, input_map={placeholder: x, next(iter(captured)): handle},
            return_elements=[output])[0],
        [tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.resource)])
    np.testing.assert_allclose(run(tf.constant([1.0, 2.0]), scale.handle).numpy(),
                               [2.5, 5.5])


def test_conditionals_on_a_computed_predicate_are_left_alone():
    from tfhub_ft.module_graph import inline_call_graph

    @tf.function
    def call(x):
        return tf.cond(tf.reduce_sum(x) > 0, lambda: x * 2.0, lambda: x - 1.0)

    graph_def = inline_call_graph(call.get_concrete_function(tf.TensorSpec([None])))
    assert {"Switch", "Merge"} <= _op_types(graph_def)


@pytest.mark.slow
def test_failed_trace_orders_blocks_by_name_and_warns(tmp_path, monkeypatch, caplog):
    from tests import module_shapes
    from tfhub_ft import module_graph

    path, expected = module_shapes.slim_mobilenet(tmp_path / "slim", cond="network")

    def broken(*args):
        raise RuntimeError("no Grappler today")

    monkeypatch.setattr(module_graph, "inline_call_graph", broken)
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        backbone = HubBackbone(path)
    # Natural order (expanded_conv_2 before expanded_conv_10), head last.
    assert [block.name for block in backbone.blocks] == expected
    assert backbone.block_order_source == "names"
    assert {block.order_source for block in backbone.blocks} == {"names"}
    message = caplog.records[0].getMessage()
    assert path in message and "no Grappler today" in message
    assert "ordered by name" in message and "3-5x slower" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        assert backbone.split_top_blocks(2) is None
    assert "could not be traced" in caplog.records[0].getMessage()


def test_split_that_fails_to_run_or_differs_falls_back_with_a_warning(
        backbone, monkeypatch, caplog):
    from tfhub_ft import module_graph

    original = module_graph.SplitGraph.run_top

    def shifted(self, boundary, variables):
        return original(self, boundary, variables) + 1.0

    monkeypatch.setattr(module_graph.SplitGraph, "run_top", shifted)
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        assert backbone.split_top_blocks(2) is None
    message = caplog.records[0].getMessage()
    assert "features differ from the whole module's" in message
    assert "about 3-5x slower" in message

    def failing(self, boundary, variables):
        raise tf.errors.InvalidArgumentError(None, None, "Function foo is not defined")

    monkeypatch.setattr(module_graph.SplitGraph, "run_top", failing)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        assert backbone.split_top_blocks(1) is None
    assert "Function foo is not defined" in caplog.records[0].getMessage()


def test_many_graph_functions_in_one_process_are_not_a_retracing_warning(backbone, caplog):
    # Each split, reloaded backbone or converter call imports its own graph
    # function; TensorFlow warned once six of them had been traced.
    graph = ModuleGraph(backbone.module, backbone.module.variables)
    images = tf.zeros([1, 32, 32, 3])
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        outputs = [graph.whole()(images, backbone.module.variables) for _ in range(7)]
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    np.testing.assert_array_equal(outputs[0].numpy(), outputs[-1].numpy())


@pytest.mark.parametrize("input_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_inference_features_come_from_the_inlined_graph_and_equal_the_call(
        tiny_backbone_path, input_range, caplog):
    backbone = HubBackbone(tiny_backbone_path, input_range=input_range)
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 4])
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        features = backbone.inference_features(images)
    assert backbone._inference_graph.__name__ == "inlined_call" and not caplog.records
    np.testing.assert_allclose(features.numpy(), backbone(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_inference_features_fall_back_to_the_call_when_the_graph_differs(
        backbone, monkeypatch, caplog):
    whole = backbone._graph.whole
    monkeypatch.setattr(backbone._graph, "whole",
                        lambda: lambda images, variables: whole()(images, variables) + 1.0)
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 4])
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        features = backbone.inference_features(images)
    np.testing.assert_array_equal(features.numpy(), backbone(images, training=False).numpy())
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"Converting {backbone.hub_handle} through its own call, not its inlined graph"]
    assert "ValueError: its features differ from the module's by up to 1" in caplog.text


def test_kernel_ops_are_the_convolutions_reading_kernels_in_order(backbone):
    ops = backbone.kernel_ops()
    variables = backbone.module.variables
    assert [variables[op.kernel_index].name for op in ops] == [
        v.name for v in variables if v.name.endswith("kernel:0")]
    assert {op.op for op in ops} == {"Conv2D"} and all(
        op.options["padding"] == "SAME" for op in ops)
    np.testing.assert_array_equal(backbone.kernel_value(ops[0]), variables[0].numpy())


@pytest.mark.parametrize("builder,batch_norm", [
    (None, "head_bn"), (module_shapes.keras_exported, "Conv_1_bn")])
def test_output_offsets_act_as_a_raised_batch_norm_mean(
        tiny_backbone_path, tmp_path, builder, batch_norm):
    # The tiny module's unfused batch norm gets an inserted subtraction; a
    # Keras export's FusedBatchNormV3 takes the offset into its mean.
    path = tiny_backbone_path if builder is None else builder(tmp_path / "module")[0]
    backbone = HubBackbone(path)
    last = backbone.kernel_ops()[-1]
    channels = backbone.kernel_value(last).shape[-1]
    offset = np.linspace(-0.5, 0.5, channels).astype(np.float32)
    moved, inserted = backbone._graph._variable_offsets({last.name: offset})
    assert (bool(moved), bool(inserted)) == ((True, False) if builder else (False, True))
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[5, 6])
    got = backbone.inference_features(images, {last.name: offset}).numpy()
    mean = next(v for v in backbone.module.variables
                if v.name == f"{batch_norm}/moving_mean:0")
    mean.assign_add(offset)
    try:
        expected = backbone(images, training=False).numpy()
    finally:
        mean.assign_sub(offset)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(got - backbone(images, training=False).numpy()).max() > 1e-3


def test_output_offsets_need_the_inlined_graph(backbone, monkeypatch):
    monkeypatch.setattr(backbone, "_graph", None)
    assert backbone.kernel_ops() == []
    with pytest.raises(ValueError, match=r"Invalid value for `output_offsets`. Expected None: offsets need the module's inlined inference graph"):
        backbone.inference_features(tf.zeros([1, 32, 32, 3]), {"conv": np.zeros(4)})


def test_an_offset_goes_into_a_variable_only_where_nothing_else_reads_it(tmp_path):
    # Two convolutions whose fused batch norms share one moving mean: moving
    # the first conv's offset into that mean would shift the second's output.
    v = module_shapes._Variables(seed=0)
    kernels = [v.add(f"conv_{i}/kernel", [3, 3, 3 if i == 0 else 4, 4]) for i in range(2)]
    gamma, beta, mean, variance = v.batch_norm("shared_bn", 4)

    @tf.function
    def call(images, training=False):
        x = images
        for kernel in kernels:
            x = tf.nn.conv2d(x, kernel, 1, "SAME")
            x, *_ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, variance,
                                                     is_training=False)
        return tf.reduce_mean(tf.nn.relu(x), axis=[1, 2])

    path = module_shapes._save(str(tmp_path / "shared"), call, v.all, v.all)
    backbone = HubBackbone(path)
    first = backbone.kernel_ops()[0]
    offset = np.linspace(-1.0, 1.0, 4).astype(np.float32)
    moved, inserted = backbone._graph._variable_offsets({first.name: offset})
    assert (moved, list(inserted)) == ({}, [first.name])
    images = tf.random.stateless_uniform([2, 8, 8, 3], seed=[1, 1])
    x = tf.nn.conv2d(images, kernels[0], 1, "SAME") - offset
    for i, kernel in enumerate(kernels):
        if i:
            x = tf.nn.conv2d(x, kernel, 1, "SAME")
        x, *_ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean, variance,
                                                 is_training=False)
    np.testing.assert_allclose(
        backbone.inference_features(images, {first.name: offset}).numpy(),
        tf.reduce_mean(tf.nn.relu(x), axis=[1, 2]).numpy(), rtol=1e-5, atol=1e-6)


def test_graph_analysis_keeps_grapplers_session_lines_off_stderr(tiny_backbone_path, capfd,
                                                                  caplog):
    capfd.readouterr()
    with caplog.at_level("DEBUG", logger="tfhub_ft.module_graph"):
        HubBackbone(tiny_backbone_path)
    printed = capfd.readouterr().err
    assert "Starting new session" not in printed and "eligible GPUs" not in printed
    # TensorFlow's runtime logs these on every Grappler run (one per module
    # loaded) unless TF_CPP_MIN_LOG_LEVEL, read once at start, hides INFO.
    if int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0) < 1:
        assert "Starting new session" in caplog.text

import re

import pytest

from tfhub_ft import blocks


@pytest.mark.parametrize("name, expected", [
    ("block_3_expand/kernel:0", "block_3"),
    ("block_16_project_BN/moving_mean:0", "block_16"),
    ("expanded_conv_depthwise/depthwise_kernel:0", "block_0"),
    ("Conv1/kernel:0", "stem"),
    ("bn_Conv1/gamma:0", "stem"),
    ("Conv_1_bn/beta:0", "top"),
    ("MobilenetV2/expanded_conv_3/expand/weights:0", "expanded_conv_3"),
    ("MobilenetV2/expanded_conv/depthwise/weights:0", "expanded_conv"),
    ("MobilenetV2/Conv/weights:0", "stem"),
    ("MobilenetV2/Conv_1/weights:0", "top"),
    ("resnet_v2_50/block2/unit_3/bottleneck_v2/conv1/weights:0", "block2/unit_3"),
    ("resnet_v2_50/conv1/weights:0", "stem"),
    ("efficientnet-b0/blocks_7/conv2d/kernel:0", "blocks_7"),
    ("block2a_expand_conv/kernel:0", "block2a"),
    ("conv3_block2_1_conv/kernel:0", "conv3_block2"),
    ("top_conv/kernel:0", "top"),
    ("mystery/kernel:0", None),
])
def test_block_of_builtin_rules(name, expected):
    assert blocks.block_of(name) == expected


def test_block_of_pattern_and_function_overrides():
    assert blocks.block_of("layer7/conv/kernel:0", r"(layer\d+)/") == "layer7"
    assert blocks.block_of("layer7/conv/kernel:0", re.compile(r"layer\d+")) == "layer7"
    assert blocks.block_of("layer7/conv/kernel:0", r"stage\d") is None
    assert blocks.block_of("a/b:0", lambda name: name.upper()) == "A/B"


def test_group_into_blocks_orders_by_trace_and_attaches_unnamed():
    names = ["Conv_1/kernel", "block_2_a/kernel", "block_1_a/kernel",
             "Conv1/kernel", "odd/kernel", "block_1_bn/gamma"]
    positions = [9, 6, 3, 0, 4, 2]
    result = blocks.group_into_blocks(names, positions, [1, 10, 100, 1000, 5, 7])
    assert [b.name for b in result] == ["stem", "block_1", "block_2", "top"]
    # "odd" is read right after block_1's variables, so it joins block_1.
    assert result[1].variable_indices == (2, 4, 5)
    assert [b.parameter_count for b in result] == [1000, 112, 10, 1]


def test_group_into_blocks_unnamed_first_variable_joins_first_block():
    result = blocks.group_into_blocks(["x", "block_1_a"], [0, 1])
    assert [(b.name, b.variable_indices) for b in result] == [("block_1", (0, 1))]


def test_group_into_blocks_errors():
    with pytest.raises(ValueError, match="one position per variable"):
        blocks.group_into_blocks(["a"], [0, 1])
    with pytest.raises(ValueError, match="Pass `block_pattern`"):
        blocks.group_into_blocks(["mystery/kernel"], [0])


def test_top_blocks():
    result = blocks.group_into_blocks(
        ["Conv1/k", "block_1_a/k", "Conv_1/k"], [0, 1, 2])
    assert [b.name for b in blocks.top_blocks(result, 2)] == ["block_1", "top"]
    assert blocks.top_blocks(result, 0) == []
    with pytest.raises(ValueError, match=r"Expected an integer in \[0, 3\].*unfreeze_blocks=4"):
        blocks.top_blocks(result, 4)
    with pytest.raises(ValueError, match="unfreeze_blocks=True"):
        blocks.top_blocks(result, True)


def test_name_order_is_natural_with_stem_first_and_top_names_last():
    names = ["expanded_conv_10", "head", "Conv_1", "expanded_conv_2", "final_norm",
             "expanded_conv", "stem", "expanded_conv_1", "top", "block1/unit10",
             "block1/unit9", "post_norm", "heads_up"]
    assert sorted(names, key=blocks.name_order_key) == [
        "stem", "block1/unit9", "block1/unit10", "expanded_conv", "expanded_conv_1",
        "expanded_conv_2", "expanded_conv_10", "heads_up",
        "Conv_1", "final_norm", "head", "post_norm", "top"]


def test_untraced_blocks_are_placed_by_name_after_their_traced_predecessor():
    names = ["stem/k", "block_1_a/k", "block_2_a/k", "block_3_a/k", "head/k"]
    # block_2 is never read by the traced graph: it goes after block_1.
    positions = [0, 5, float("inf"), 7, 9]
    result = blocks.group_into_blocks(names, positions)
    assert [(b.name, b.order_source) for b in result] == [
        ("stem", "trace"), ("block_1", "trace"), ("block_2", "names"),
        ("block_3", "trace"), ("top", "trace")]


def test_nothing_traced_orders_every_block_by_name():
    names = ["MobilenetV2/Conv_1/w", "MobilenetV2/Conv/w",
             "MobilenetV2/expanded_conv_10/expand/w", "MobilenetV2/expanded_conv_2/expand/w",
             "MobilenetV2/expanded_conv/project/w"]
    result = blocks.group_into_blocks(names, [float("inf")] * 5)
    assert [b.name for b in result] == [
        "stem", "expanded_conv", "expanded_conv_2", "expanded_conv_10", "top"]
    assert {b.order_source for b in result} == {"names"}


@pytest.mark.parametrize("name, expected", [
    ("resnet/root_block/standardized_conv2d/kernel:0", "stem"),
    ("resnet/block3/unit12/a/group_norm/gamma:0", "block3/unit12"),
    ("resnet/group_norm/beta:0", "top"),
    ("embedding/kernel:0", "stem"),
    ("cls:0", "stem"),
    ("Transformer/posembed_input/pos_embedding:0", "stem"),
    ("Transformer/encoderblock_11/MlpBlock_3/Dense_0/kernel:0", "encoderblock_11"),
    ("Transformer/encoder_norm/scale:0", "top"),
])
def test_block_of_bit_and_vit_names(name, expected):
    assert blocks.block_of(name) == expected


@pytest.mark.parametrize("name, expected", [
    # TF-Slim Inception V3 / Inception-ResNet-V2 (TF Hub's inception modules).
    ("InceptionV3/Conv2d_2b_3x3/BatchNorm/beta:0", "stem"),
    ("InceptionV3/Conv2d_4a_3x3/weights:0", "stem"),
    ("InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights:0", "Mixed_6a"),
    ("InceptionV3/Mixed_7c/Branch_2/Conv2d_0d_3x1/weights:0", "Mixed_7c"),
    ("InceptionResnetV2/Repeat/block35_3/Branch_1/Conv2d_0a_1x1/weights:0", "block35_3"),
    ("InceptionResnetV2/Repeat_1/block17_20/Conv2d_1x1/weights:0", "block17_20"),
    ("InceptionResnetV2/Block8/Conv2d_1x1/biases:0", "Block8"),
    ("InceptionResnetV2/Conv2d_7b_1x1/weights:0", "top"),
    # TF-Slim MobileNetV1, NASNet / PNASNet.
    ("MobilenetV1/Conv2d_0/weights:0", "stem"),
    ("MobilenetV1/Conv2d_1_depthwise/depthwise_weights:0", "Conv2d_1"),
    ("MobilenetV1/Conv2d_13_pointwise/BatchNorm/gamma:0", "Conv2d_13"),
    ("conv0/weights:0", "stem"),
    ("cell_stem_0/comb_iter_0/left/separable_5x5/depthwise_weights:0", "cell_stem_0"),
    ("reduction_cell_1/comb_iter_0/left/separable_5x5/depthwise_weights:0", "reduction_cell_1"),
    ("cell_11/beginning_bn/gamma:0", "cell_11"),
    # Keras ConvNeXt, Xception, VGG, DenseNet.
    ("convnext_tiny_stem/convnext_tiny_stem_conv/kernel:0", "stem"),
    ("convnext_tiny_stage_2_block_4_layer_scale/variable:0", "stage_2_block_4"),
    ("convnext_tiny_downsampling_block_0/convnext_tiny_downsampling_layernorm_0/gamma:0",
     "downsampling_block_0"),
    ("block4_sepconv1/depthwise_kernel:0", "block4"),
    ("block5_conv3/kernel:0", "block5"),
    ("conv1_conv/kernel:0", "stem"),
    ("conv2_block1_0_bn/gamma:0", "conv2_block1"),
])
def test_block_of_inception_mobilenet_v1_nasnet_convnext_xception_names(name, expected):
    assert blocks.block_of(name) == expected


def test_layer_rule_pairs_batch_norms_with_their_convolution_by_keras_number():
    names = ["conv2d/kernel:0", "conv2d_1/kernel:0", "conv2d_2/kernel:0",
             "batch_normalization/gamma:0", "batch_normalization_2/beta:0",
             "activation_9/x:0"]
    rule = blocks.layer_rule(names)
    assert [rule(name) for name in names] == [
        "conv2d", "conv2d_1", "conv2d_2", "conv2d", "conv2d_2", None]
    assert blocks.known_kernel_share(names) == 0.0
    assert blocks.known_kernel_share(["block_1_expand/kernel:0", "conv2d/kernel:0"]) == 0.5
    assert blocks.known_kernel_share(["bn/gamma:0"]) == 1.0


@pytest.mark.parametrize("name, expected", [
    # Keras 3 MobileNetV3 and Keras MobileNet (V1).
    ("conv/kernel:0", "stem"),
    ("conv_bn/gamma:0", "stem"),
    ("expanded_conv_depthwise/depthwise_kernel:0", "block_0"),
    ("expanded_conv_3_expand/kernel:0", "expanded_conv_3"),
    ("expanded_conv_3_squeeze_excite_conv_1/kernel:0", "expanded_conv_3"),
    ("conv_1/kernel:0", "top"),
    ("conv_1_bn/beta:0", "top"),
    ("conv1_bn/gamma:0", "stem"),
    ("conv_dw_3/depthwise_kernel:0", "block_3"),
    ("conv_pw_13_bn/moving_mean:0", "block_13"),
])
def test_block_of_keras_3_mobilenet_names(name, expected):
    assert blocks.block_of(name) == expected

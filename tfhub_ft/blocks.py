"""Grouping a backbone's variables into ordered blocks, bottom to top.

Pure functions of variable names and their traced order: they need no model,
so the rules are tested on name lists alone. `backbone.HubBackbone` supplies
the names in the order its module's call graph reads them.
"""

import dataclasses
import re
from typing import Callable, List, Optional, Sequence, Tuple, Union

from tfhub_ft.checks import check_integer

STEM = "stem"
TOP = "top"  # the last layers before pooling (Keras EfficientNet: top_conv)

# Each rule maps a variable name to a block name, or does not match. They
# cover the naming of the hub modules people fine-tune: Keras applications
# (MobileNet, EfficientNet, ResNet, DenseNet, ConvNeXt, Xception, VGG),
# TF-Slim MobileNets, Inceptions, NASNets and ResNets, BiT ResNets, the TF
# Hub EfficientNets and ViTs. The first rule that matches wins.
BLOCK_RULES: Tuple[Tuple[str, str], ...] = (
    # Keras MobileNetV2/V3: block_3_expand/..., block_3_depthwise_BN/...
    (r"(?:^|/)block_(\d+)_", r"block_\1"),
    # Keras MobileNetV2 names its first block without a number.
    (r"(?:^|/)expanded_conv_(?:depthwise|project|expand)", "block_0"),
    # Keras ResNet: conv3_block2_1_conv/...
    (r"(?:^|/)(conv\d+_block\d+)_", r"\1"),
    # Keras EfficientNet: block2a_expand_conv/...
    (r"(?:^|/)(block\d+[a-z])_", r"\1"),
    # TF-Slim MobileNet: MobilenetV2/expanded_conv_3/expand/weights
    (r"(?:^|/)(expanded_conv(?:_\d+)?)/", r"\1"),
    # Keras 3 MobileNetV3: expanded_conv_3_expand/kernel, ..._squeeze_excite_conv
    (r"(?:^|/)(expanded_conv_\d+)_(?:expand|depthwise|project|squeeze_excite)", r"\1"),
    # Keras MobileNet (V1): conv_dw_3/depthwise_kernel, conv_pw_3_bn/gamma
    (r"(?:^|/)conv_(?:dw|pw)_(\d+)(?:_bn)?/", r"block_\1"),
    # Slim ResNet: resnet_v2_50/block2/unit_3/bottleneck_v2/conv1/weights;
    # BiT: resnet/block2/unit03/a/standardized_conv2d/kernel
    (r"(?:^|/)(block\d+/unit_?\d+)/", r"\1"),
    # ViT: Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel
    (r"(?:^|/)(encoderblock_\d+)/", r"\1"),
    # TF Hub EfficientNet: efficientnet-b0/blocks_7/conv2d/kernel
    (r"(?:^|/)(blocks_\d+)/", r"\1"),
    # TF-Slim Inception V1-V4 and Inception-ResNet-V2:
    # InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights,
    # InceptionResnetV2/Repeat_1/block17_20/Conv2d_1x1/weights, .../Block8/...
    (r"(?:^|/)(Mixed_\d+[a-z]|block(?:35|17|8)_\d+|Block8)/", r"\1"),
    # TF-Slim MobileNetV1: MobilenetV1/Conv2d_3_depthwise/depthwise_weights
    (r"(?:^|/)(Conv2d_\d+)_(?:depthwise|pointwise)/", r"\1"),
    # TF-Slim NASNet / PNASNet: cell_stem_0/..., cell_11/..., reduction_cell_1/...
    (r"(?:^|/)(cell_stem_\d+|(?:reduction_)?cell_\d+)/", r"\1"),
    # Keras ConvNeXt: convnext_tiny_stage_2_block_4_depthwise_conv/kernel,
    # convnext_tiny_downsampling_block_1/...
    (r"(?:^|_)(stage_\d+_block_\d+|downsampling_block_\d+)(?:[/_]|$)", r"\1"),
    # Keras Xception and VGG: block4_sepconv1/..., block5_conv3/...
    (r"(?:^|/)(block\d+)_(?:sep)?conv\d", r"\1"),
    # Stems (ViT: patch embedding, class token, position embedding).
    (r"(?:^|/)(?:Conv1|bn_Conv1|stem\w*|conv1|Conv2d_0|conv_stem|conv1_\w+|"
     r"Conv|Conv/BatchNorm|root_block|embedding|cls|posembed_input|conv0|"
     r"Conv2d_[1-4][a-c]_\dx\d|convnext\w*_stem|conv|conv_bn)(?:/|$)", STEM),
    # The top: the last convolution before pooling, or the final norm.
    (r"(?:^|/)(?:Conv_1|Conv_1_bn|head\w*|top_conv|top_bn|top_activation|"
     r"conv_head|Conv2d_1c_1x1|Conv2d_7b_1x1|conv_1|conv_1_bn|postnorm|encoder_norm|"
     r"final_norm|pre_logits)"
     r"(?:/|$)", TOP),
    # BiT's final norm, right under the network's scope.
    (r"^resnet\w*/group_norm/", TOP),
)

# A layer with a kernel: the fallback's blocks (`layer_rule`).
LAYER_RULE = r"^(.+)/(?:kernel|depthwise_kernel|weights|depthwise_weights)$"


# Block names that mark the top of a network when blocks are ordered by
# name (see `name_order_key`).
_TOP_NAME = re.compile(
    r"(?:^|[/_])(?:head|top|post\w*|pre_logits|final\w*|encoder_norm)(?:$|[/_])"
    r"|(?:^|/)conv_1$", re.IGNORECASE)

BlockRule = Union[str, "re.Pattern", Callable[[str], Optional[str]], None]


@dataclasses.dataclass(frozen=True)
class Block:
    """One group of backbone variables that is frozen or trained together.

    Attributes:
        name: The block's name, e.g. "block_16", "stem", "top".
        variable_indices: Indices into the backbone's variable list.
        parameter_count: Number of weights in the block (its floating-point
            variables, moving statistics included; integer state such as a
            Keras 3 random seed is not a weight).
        order_source: "trace" where the block's place comes from where the
            module's call graph first reads its variables; "names" where
            none of them could be traced and the place comes from
            `name_order_key`.
    """

    name: str
    variable_indices: Tuple[int, ...]
    parameter_count: int = 0
    order_source: str = "trace"


def block_of(variable_name: str, rule: BlockRule = None) -> Optional[str]:
    """Returns the block a variable belongs to, or None if no rule matches.

    Args:
        variable_name: e.g. "block_3_expand/kernel:0".
        rule: None for the built-in `BLOCK_RULES`; a regular expression
            (string or compiled) whose first group, or whole match, names the
            block; or a function from variable name to block name or None.
    """
    name = variable_name.split(":")[0]
    if callable(rule) and not isinstance(rule, re.Pattern):
        return rule(name)
    if rule is not None:
        match = re.search(rule, name)
        if not match:
            return None
        return match.group(1) if match.re.groups else match.group(0)
    for pattern, replacement in BLOCK_RULES:
        match = re.search(pattern, name)
        if match:
            return match.expand(replacement)
    return None


def known_kernel_share(variable_names: Sequence[str]) -> float:
    """The share of the kernels (`LAYER_RULE`) the built-in rules name, in
    [0, 1]; 1.0 when there is no kernel."""
    kernels = [name for name in variable_names if block_of(name, LAYER_RULE)]
    if not kernels:
        return 1.0
    return sum(1 for name in kernels if block_of(name)) / len(kernels)


def layer_rule(variable_names: Sequence[str]) -> Callable[[str], Optional[str]]:
    """The fallback for names no rule knows (Keras InceptionV3's
    conv2d_12/kernel, batch_normalization_12/gamma): one block per layer
    with a kernel.

    A variable of a layer without one (a batch norm) goes to the kernel
    layer with the same Keras number suffix (`_12`) when exactly one has it:
    Keras numbers each layer type on its own, so a network that builds a
    convolution and its batch norm together keeps the two in step, in
    parallel branches too, where the order of first use does not pair them.
    Otherwise it is left unnamed and joins the block used just before it.
    """
    layers = {block_of(name, LAYER_RULE) for name in variable_names} - {None}
    by_suffix = {}
    for layer in layers:
        by_suffix.setdefault(_number_suffix(layer), []).append(layer)

    def rule(name):
        layer = block_of(name, LAYER_RULE)
        if layer:
            return layer
        partners = by_suffix.get(_number_suffix(name.split(":")[0].rsplit("/", 1)[0]), [])
        return partners[0] if len(partners) == 1 else None
    return rule


def _number_suffix(scope):
    return re.search(r"(?:_\d+)?$", scope).group(0)


def group_into_blocks(
    variable_names: Sequence[str],
    trace_positions: Sequence[float],
    parameter_counts: Optional[Sequence[int]] = None,
    rule: BlockRule = None,
) -> List[Block]:
    """Groups variables into blocks ordered as the module uses them.

    A variable no rule names joins the block of the variable used just before
    it (or the first block, if it comes first), so an odd name never breaks
    the grouping. A block's place is where the module first reads any of its
    variables.

    Args:
        variable_names: The module's variable names.
        trace_positions: For each variable, where the call graph first uses it
            (smaller is nearer the input); unused variables may be `inf`.
        parameter_counts: Weights in each variable; zeros if omitted.
        rule: See `block_of`.

    Returns:
        The blocks, bottom (input side) to top.

    Raises:
        ValueError: if the lengths differ, `rule` is a pattern that does not
            compile, or no variable matches `rule`.
    """
    if isinstance(rule, str):
        try:
            re.compile(rule)
        except re.error as error:
            raise ValueError(
                f"Invalid value for `block_pattern`. Expected a regular expression "
                f"whose first group names a variable's block; this one does not "
                f"compile ({error}). Received: block_pattern={rule!r}") from None
    if len(variable_names) != len(trace_positions):
        raise ValueError(
            "Invalid value for `trace_positions`. Expected one position per "
            f"variable ({len(variable_names)}). Received: "
            f"{len(trace_positions)} positions"
        )
    counts = list(parameter_counts or [0] * len(variable_names))
    order = sorted(range(len(variable_names)),
                   key=lambda i: (trace_positions[i], i))
    named = {i: block_of(variable_names[i], rule) for i in order}
    if variable_names and not any(named.values()):
        what = "the built-in block rules" if rule is None else f"block_pattern={rule!r}"
        raise ValueError(
            f"No variable of the backbone matches {what}; for example "
            f"{variable_names[0]!r} does not. Pass "
            "`block_pattern`, a regular expression whose first group names "
            "the block, or a function from variable name to block name."
        )
    first_named = next((named[i] for i in order if named[i]), None)
    members = {}
    current = first_named
    for i in order:
        current = named[i] or current
        members.setdefault(current, []).append(i)
    # Insertion order is the order of first use: traced blocks are in place.
    traced = [name for name, indices in members.items()
              if min(trace_positions[i] for i in indices) != float("inf")]
    # Blocks the trace did not reach go where their names put them: right
    # after the traced block that precedes them in name order.
    ordered = list(traced)
    anchor = None
    for name in sorted(members, key=name_order_key):
        if name in traced:
            anchor = name
            continue
        at = ordered.index(anchor) + 1 if anchor is not None else 0
        while at < len(ordered) and ordered[at] not in traced:
            at += 1
        ordered.insert(at, name)
    return [
        Block(name, tuple(sorted(members[name])), sum(counts[i] for i in members[name]),
              "trace" if name in traced else "names")
        for name in ordered
    ]


def name_order_key(block_name: str):
    """Sort key that orders block names as networks are built.

    The stem first, names with a known top word as a component (`head`,
    `top`, `post...`, `pre_logits`, `final...`, `encoder_norm`, or a
    last component `Conv_1`) last, the rest in natural order, so that
    `expanded_conv_2` < `expanded_conv_10`.
    """
    parts = tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                  for part in re.split(r"(\d+)", block_name) if part)
    if block_name == STEM:
        return (0, parts)
    if _TOP_NAME.search(block_name):
        return (2, parts)
    return (1, parts)


def top_blocks(blocks: Sequence[Block], count: int) -> List[Block]:
    """Returns the top `count` blocks (nearest the output).

    Raises:
        ValueError: if `count` is not an integer in [0, len(blocks)].
    """
    count = check_integer("unfreeze_blocks", count, 0, len(blocks),
                          context=f" (the backbone has {len(blocks)} blocks)")
    return list(blocks[len(blocks) - count:])

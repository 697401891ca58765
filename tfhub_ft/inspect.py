"""See a hub module's blocks before training: `python -m tfhub_ft.inspect HANDLE`.

Prints the feature size, the input size, the blocks bottom to top with their
parameter counts, where the block order came from (the module's call graph,
or variable names), and for each `unfreeze_blocks` whether phase 2 can train
from cached activations (the split backbone) or must run the whole module.
"""

import argparse
import logging
import sys
from typing import List

logger = logging.getLogger(__name__)

# The backbone module (and TensorFlow) is imported where it is used:
# `python -m tfhub_ft.inspect` runs this file before the command can turn
# TensorFlow's start-up lines down (`cli.import_tensorflow_quietly`).

_ORDER_SOURCES = {
    "trace": "the module's call graph (the order it runs them in)",
    "names": "variable names (the call graph could not be traced)",
    "trace and names": "the call graph; blocks marked * by name (not found in it)",
}


# Splits checked at most, from the top: unfreezing more blocks than this is
# rare, and a module of single-layer blocks (InceptionV3's 94) or many small
# ones (DenseNet121's 59: 6 minutes) would keep `inspect` busy for minutes.
MAX_SPLIT_CHECKS = 30


def describe_backbone(backbone, check_splits=True) -> List[str]:
    """Lines describing a `HubBackbone`'s blocks, for people to read.

    Args:
        backbone: A `HubBackbone`.
        check_splits: Build and check the split at every `unfreeze_blocks`
            up to `MAX_SPLIT_CHECKS` (one small forward and backward pass
            each: about a second per block for a MobileNet at 224 px on a
            CPU).

    Returns:
        A list of lines without newlines.
    """
    from tfhub_ft.backbone import DEFAULT_IMAGE_SIZE
    size = backbone.image_size
    lines = [
        f"Module: {backbone.hub_handle}",
        f"Feature vector: {backbone.feature_dim} floats per image",
        "Input: float32 RGB in [0, 1], " + (
            f"{size}x{size} (fixed by the module)" if size
            else f"any size (default {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE})"),
        f"Block order from: {_ORDER_SOURCES[backbone.block_order_source]}",
        "",
    ]
    width = max(len(block.name) for block in backbone.blocks) + 1
    header = f"{'unfreeze_blocks':>15}  {'block':<{width}} {'parameters':>11}"
    lines.append(header + ("  phase 2" if check_splits else ""))
    count = len(backbone.blocks)
    checked = min(count, MAX_SPLIT_CHECKS) if check_splits else 0
    if checked:
        # The table comes at the end; say what the wait is for.
        logger.info("Checking the split below each of the %s blocks (a small forward and "
                    "backward pass each; --no_split_check skips them)",
                    count if checked == count else f"top {checked} of the {count}")
    for index, block in enumerate(backbone.blocks):
        unfreeze = count - index
        name = block.name + ("*" if block.order_source == "names"
                             and backbone.block_order_source == "trace and names" else "")
        line = f"{unfreeze:>15}  {name:<{width}} {block.parameter_count:>11,}"
        if check_splits and unfreeze > checked:
            line += "  not checked"
        elif check_splits:
            split = backbone.split_top_blocks(unfreeze)
            line += ("  split: trains from cached activations" if split is not None
                     else "  whole module each step")
        lines.append(line)
    total = sum(block.parameter_count for block in backbone.blocks)
    lines.append(f"{'':>15}  {'total':<{width}} {total:>11,}")
    return lines


def main(argv=None):
    """Command-line entry point; returns the exit status (2 for bad input)."""
    parser = argparse.ArgumentParser(
        prog="tfhub_ft inspect",
        description="List a hub image feature vector's blocks, bottom to top.")
    parser.add_argument("handle", nargs="?", help="tfhub.dev or Kaggle Models URL, Kaggle "
                        "handle, or local SavedModel folder")
    # train's name for it, so that a train command's flag works here too.
    parser.add_argument("--hub_url", metavar="HANDLE", help="the same as HANDLE")
    parser.add_argument("--no_split_check", action="store_true",
                        help="skip building the split at every unfreeze_blocks")
    from tfhub_ft import cli
    cli.add_block_pattern_flag(parser)
    cli.add_verbosity_flag(parser)
    args = parser.parse_args(argv)
    if args.handle is None and args.hub_url is None:
        parser.error("no module given: pass its handle, as HANDLE or as --hub_url=HANDLE")
    if args.handle is not None and args.hub_url is not None:
        parser.error("the module is given twice: pass HANDLE or --hub_url=HANDLE, not both")
    handle = args.handle or args.hub_url
    from tfhub_ft import backbone as backbone_lib
    # The fallbacks' warnings are part of what this command shows.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # One split graph per block, each traced once, trips TensorFlow's
    # frequent-retracing warning (it counts traces per source line, not per
    # function); nothing retraces here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        backbone = backbone_lib.HubBackbone(handle, block_pattern=args.block_pattern)
    except (ValueError, TypeError) as error:  # HubModuleError is a ValueError.
        sys.stderr.write(f"{parser.prog}: error: {error}\n")
        return 2
    sys.stdout.write("\n".join(describe_backbone(
        backbone, check_splits=not args.no_split_check)) + "\n")
    return 0


if __name__ == "__main__":
    # Through the command, as `tfhub_ft inspect`: its quiet TensorFlow
    # import, logging and exit.
    from tfhub_ft import cli
    cli.run(["inspect", *sys.argv[1:]])

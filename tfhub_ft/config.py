"""Configuration of a fine-tuning run: every default is written here once.

`examples/flowers.py` reads its flag defaults from `FineTuneConfig`, and
`FineTuner` reads its keyword defaults from it, so a default changes in one
place. The values were chosen by measurement on the shared MobileNetV2 0.35
backbone, clothing photos and CIFAR-10 images, whole commands against TF
Hub's make_image_classifier recipe (benchmarks/frontier.py, BUILD_NOTES.md):
the default is the fast point of that frontier, `PRESETS["thorough"]` the
slower, more accurate one.
"""

import dataclasses
import os
from typing import Optional, Tuple

from tfhub_ft.checks import check_integer, check_positive_number

# `image_size=None` on a module that declares no size: SMALL_IMAGE_SIZE when
# the training images are small (median shorter side under SMALL_IMAGE_SIDE
# pixels, as CIFAR's 32), else DEFAULT_IMAGE_SIZE, the size ImageNet
# backbones are trained at. Upscaling small images further adds pixels, not
# detail: on cifar10-small 160 px scored 0.756 against 0.734 at 224, in
# 33 s against 42 s for the whole command (BUILD_NOTES.md).
DEFAULT_IMAGE_SIZE = 224
SMALL_IMAGE_SIZE = 160
SMALL_IMAGE_SIDE = 112

AUGMENTATIONS = ("flip",)
ON_BAD_IMAGE = ("skip", "error")
CLASS_WEIGHTS = ("none", "balanced")

# Where tfhub_ft keeps what it can reuse between runs (which module splits
# passed their check, `backbone.HubBackbone.plan_split`).
CACHE_DIR_ENV = "TFHUB_FT_CACHE_DIR"


def cache_dir() -> Optional[str]:
    """$TFHUB_FT_CACHE_DIR, else $XDG_CACHE_HOME/tfhub_ft (~/.cache/tfhub_ft);
    None when TFHUB_FT_CACHE_DIR is set to "" or there is no home folder
    (nothing is cached)."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    if chosen is not None:
        return os.path.expanduser(chosen) or None
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # The XDG spec: a relative path is ignored.
        home = os.path.expanduser("~")
        if home == "~":  # No home folder (a container user without one): no cache.
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "tfhub_ft")


# A real ImageNet MobileNetV2 feature vector on TF Hub (served from Kaggle
# Models since 2024), the default of the example scripts.
DEFAULT_HUB_URL = (
    "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")

# What a time budget (`FineTuneConfig.time_budget_s`) reserves before it can
# measure it (tfhub_ft/time_budget.py; measurements in BUILD_NOTES.md).
# The export of the classifier was measured at 1.3 s for the shared
# MobileNetV2 0.35, which took 2.1-2.4 s to load (`FineTuner` created), and
# at 0.25-0.3 s for the tests' tiny backbone (0.1 s to load): about 0.2 s +
# 0.46x the loading. Reserved: BASE + PER_LOAD x the loading, 0.35-0.5 s
# above both.
TIME_BUDGET_EXPORT_BASE_S = 0.6
TIME_BUDGET_EXPORT_PER_LOAD = 0.5
# The final validation scoring through the whole model: the frozen pass's
# seconds per image times the validation images, plus this for tracing the
# whole model (measured: 1.3 s for 341 images, 1.7 s for 500, where the
# per-image share is 0.7 and 1.2 s).
TIME_BUDGET_TRACE_S = 1.0
# The same from the cached boundary tensors of a split backbone (the top
# only, already traced by phase 2): this share of the frozen pass's seconds
# per image, plus a fixed part (measured: 0.25-0.3 s for 341 images at
# 1.6 ms, 0.2-0.3 s for 500 at 1.1 ms).
TIME_BUDGET_CACHED_SCORING_SHARE = 0.25
TIME_BUDGET_CACHED_SCORING_S = 0.2
# Phase 1 may use at most this share of the time left when phase 2 follows.
TIME_BUDGET_HEAD_SHARE = 0.5
# Phase 2 starts only if its first epoch, guessed as this factor times the
# frozen pass's seconds per image times the training images, fits (its epochs
# are then planned from its measured steps, the first cut to the steps that
# fit). Measured with 8 blocks unfrozen, from phase 2's start to its first
# epoch's end: 1.0x on the clothing photos on a CPU with AVX-512 (1.4x, and
# 1.6x on CIFAR-10, before the optimizer was built ahead of the first
# step), 0.6x on clothing and 0.85x on CIFAR-10 on an AMD EPYC without it:
# the ratio is the CPU's, not the recipe's. The lowest is used:
# a guess too low costs a first epoch cut short (early stopping keeps phase
# 1's weights if it made them worse), one too high skips phase 2 (5 points
# on clothing at --time_budget=100 on the EPYC: 0.8358 with 1.2, 0.8886
# with 0.6).
TIME_BUDGET_FIRST_EPOCH_FACTOR = 0.6
# In phase 2, time left after the whole epochs that fit goes to a last
# epoch cut short (its steps, then its validation) when at least this share
# of an epoch's steps fits: less would buy a validation for little
# training. Whole epochs only left up to one epoch of a budget unused
# (clothing-small, --time_budget=30: 26.4 s, phase 2 1 of 3 epochs with
# 3.2 s left).
TIME_BUDGET_PARTIAL_EPOCH_SHARE = 0.25
# The `tfhub_ft` command's exit after its last line. TensorFlow's teardown
# took 1.0 s after importing TensorFlow alone and 1.8 s after a run; the
# command now skips it (`cli.run`: exit handlers, then `os._exit`), which
# saved 1.2-2.5 s per command (BUILD_NOTES.md). What is left: the handlers.
TIME_BUDGET_EXIT_S = 0.5


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Hyper-parameters of the two-phase recipe.

    Attributes:
        image_size: Side in pixels of the square images fed to the backbone.
            `None` reads it from the module where it declares one; else 224,
            or 160 when the training images are small (a folder's median
            shorter side, or a tf.data / TFDS source's fixed size, under
            112 px; see `choose_image_size`).
        batch_size: Images per training step, global: under a
            `tf.distribute` strategy with R replicas each replica takes
            batch_size / R of every batch. The learning rates below are for
            this global batch, so adding replicas at a fixed batch_size
            needs no learning-rate change (the run computes the same
            gradient steps). If you raise batch_size with the replicas
            (k times the batch), scale both learning rates by k (the linear
            scaling rule), and check the result: above a few hundred images
            per batch a warm-up is usually needed as well.
        head_epochs: Epochs of phase 1 (head only, backbone frozen).
        head_learning_rate: Adam learning rate of phase 1.
        fine_tune_epochs: Most epochs of phase 2 (early stopping may end it
            sooner). 0 skips phase 2.
        fine_tune_learning_rate: Peak learning rate of phase 2; it decays
            along a cosine to 0 over the phase.
        unfreeze_blocks: Number of top backbone blocks trained in phase 2.
        layer_decay: Layer-wise learning-rate decay of phase 2, in (0, 1]:
            the head and the top unfrozen block train at
            `fine_tune_learning_rate`, each block below at `layer_decay`
            times the rate of the block above (discriminative fine-tuning:
            Howard & Ruder 2018, ULMFiT; Bao et al. 2022, BEiT). 1.0: one
            rate for all.
        label_smoothing: Label smoothing of the cross-entropy, in [0, 1).
        dropout_rate: Dropout before the Dense head, in [0, 1).
        weight_decay: Decoupled weight decay (AdamW) in phase 2.
        augmentation: Names of the training-only augmentations, from
            `AUGMENTATIONS`: "flip" (a mirrored copy of every image, cached
            beside it). Empty by default; `thorough` flips.
        batch_norm_trainable: If True, batch norm in unfrozen blocks runs in
            training mode in phase 2 and updates its moving statistics. The
            default keeps them in inference mode, which small datasets need.
        early_stopping_patience: Phase-2 epochs without a lower validation
            loss before stopping (the best weights are restored).
        validation_split: Fraction of the training images held out for
            validation when no validation data is given.
        seed: Seed of the validation split, shuffling and head initialiser.
            The same seed repeats a run on the same machine, up to
            floating-point summation order; see `deterministic`.
        deterministic: If True, `fit` turns on TensorFlow's op determinism
            (`tf.config.experimental.enable_op_determinism`, for the whole
            process and irreversibly), so that the same seed gives
            bit-identical weights on the same machine and software. It can
            slow training on GPU, and ops without a deterministic GPU kernel
            then raise an error instead of running.
        cache_memory_mb: Megabytes of decoded images and cached activations
            kept in memory; beyond it they spill to files (0: all on disk).
        on_bad_image: What a file that cannot be used does: "skip" (logged
            with its reason, listed in `FineTuner.skipped_files` and
            `FineTuner.skip_reasons`) or "error"
            (a ValueError listing every bad file, before training).
        max_image_pixels: Largest image accepted, height * width read from
            the file's header, in training and in the exported model.
        exif_orientation: Turn JPEGs, PNGs (eXIf chunk) and WebPs (EXIF
            chunk) upright by their EXIF orientation tag, in training and in
            the exported model.
        class_weight: "none", or "balanced": the loss of each image is
            weighted by N / (C * count of its class), in both phases.
        input_range: (low, high) pixel range the hub module expects, such
            as (0, 1) (the TF Hub convention), (0, 255) or (-1, 1); baked
            into the export, whose inputs stay as documented.
        near_duplicate_threshold: Cosine similarity of frozen features
            above which a validation image counts as a near-duplicate of a
            training image, in (0, 1]. 0.95 was measured on the shared
            clothing photos (BUILD_NOTES.md): no distinct pair reaches it,
            re-encoded copies do.
        drop_near_duplicates: Drop the near-duplicate validation images from
            validation (they are always reported).
        time_budget_s: Seconds the whole run may take, or None (no budget).
            Counted from the `FineTuner`'s creation (or the `start_time` it
            is given; the command's start), through loading, the frozen
            pass, both phases, the final validation scoring and one export
            (estimated and reserved): phase 1 takes at most half of what is
            left (all when phase 2 would not fit), phase 2 plans its epochs
            (and its cosine) from its measured step time and stops before an
            epoch that would not fit; phase 2, when the budget cannot reach
            it, is skipped with a warning, and phase 1's first epoch always
            ends, even past the budget (with a warning). Not with a
            `work_dir` (a resumed run could not repeat the timing).
    """

    image_size: Optional[int] = None
    batch_size: int = 32
    head_epochs: int = 10
    head_learning_rate: float = 1e-3
    fine_tune_epochs: int = 2
    fine_tune_learning_rate: float = 3e-4
    unfreeze_blocks: int = 8
    layer_decay: float = 1.0
    label_smoothing: float = 0.1
    dropout_rate: float = 0.2
    weight_decay: float = 1e-4
    augmentation: Tuple[str, ...] = ()
    batch_norm_trainable: bool = False
    early_stopping_patience: int = 2
    validation_split: float = 0.2
    seed: int = 0
    deterministic: bool = False
    cache_memory_mb: int = 4096
    on_bad_image: str = "skip"
    max_image_pixels: int = 200_000_000
    exif_orientation: bool = True
    class_weight: str = "none"
    input_range: Tuple[float, float] = (0.0, 1.0)
    near_duplicate_threshold: float = 0.95
    drop_near_duplicates: bool = False
    time_budget_s: Optional[float] = None

    def __post_init__(self):
        _check_int(self, "image_size", minimum=8, optional=True)
        _check_int(self, "batch_size", minimum=1)
        _check_int(self, "head_epochs", minimum=0)
        _check_int(self, "fine_tune_epochs", minimum=0)
        _check_int(self, "unfreeze_blocks", minimum=0)
        _check_int(self, "early_stopping_patience", minimum=0)
        _check_int(self, "seed", minimum=0)
        if not isinstance(self.deterministic, bool):
            raise ValueError(
                "Invalid value for `deterministic`. Expected True or False. "
                f"Received: deterministic={self.deterministic!r}"
            )
        _check_int(self, "cache_memory_mb", minimum=0)
        for name in ("head_learning_rate", "fine_tune_learning_rate"):
            check_positive_number(name, getattr(self, name))
        for name in ("label_smoothing", "dropout_rate", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(
                    f"Invalid value for `{name}`. Expected a number in "
                    f"[0, 1). Received: {name}={value!r}"
                )
        decay = self.layer_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(
                "Invalid value for `layer_decay`. Expected a factor in (0, 1] (1.0 "
                f"turns it off; 0.7-0.9 is usual). Received: layer_decay={decay!r}")
        if not 0 < self.validation_split < 1:
            raise ValueError(
                "Invalid value for `validation_split`. Expected a fraction "
                "in (0, 1). Received: "
                f"validation_split={self.validation_split!r}"
            )
        _check_choice(self, "on_bad_image", ON_BAD_IMAGE)
        _check_int(self, "max_image_pixels", minimum=1)
        _check_choice(self, "class_weight", CLASS_WEIGHTS)
        for name in ("exif_orientation", "drop_near_duplicates"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"Invalid value for `{name}`. Expected True or False. "
                    f"Received: {name}={getattr(self, name)!r}")
        object.__setattr__(self, "input_range", check_input_range(self.input_range))
        threshold = self.near_duplicate_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0 < threshold <= 1:
            raise ValueError(
                "Invalid value for `near_duplicate_threshold`. Expected a cosine "
                f"similarity in (0, 1]. Received: near_duplicate_threshold={threshold!r}")
        budget = self.time_budget_s
        if budget is not None and (
                isinstance(budget, bool) or not isinstance(budget, (int, float))
                or not 0 < budget < float("inf")):
            raise ValueError(
                "Invalid value for `time_budget_s`. Expected a number of seconds > 0, "
                f"or None for no budget. Received: time_budget_s={budget!r}")
        augmentation = self.augmentation
        if isinstance(augmentation, str):
            augmentation = tuple(a for a in augmentation.split(",") if a)
        elif isinstance(augmentation, (list, tuple)):
            # A list would make the frozen config unhashable and unequal to
            # the same config with a tuple.
            augmentation = tuple(augmentation)
        else:
            raise ValueError(
                "Invalid value for `augmentation`. Expected names from "
                f"{AUGMENTATIONS}: a tuple, a list or a comma-separated string. Received: "
                f"augmentation={augmentation!r}. Pass e.g. augmentation=('flip',), or () "
                "for none.")
        object.__setattr__(self, "augmentation", augmentation)
        unknown = [a for a in augmentation if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(
                "Invalid value for `augmentation`. Expected names from "
                f"{AUGMENTATIONS}. Received: augmentation={self.augmentation!r}"
            )

    @classmethod
    def from_preset(cls, name, **changes) -> "FineTuneConfig":
        """The config of `PRESETS[name]`, with `changes` applied on top.

        Raises:
            ValueError: If `name` is not in `PRESETS`.
            TypeError: If a change names no field.
        """
        return apply_preset(cls, PRESETS, name, changes)

    @classmethod
    def thorough(cls, **changes) -> "FineTuneConfig":
        """`from_preset("thorough", **changes)`: slower, more accurate."""
        return cls.from_preset("thorough", **changes)

    def replace(self, **changes) -> "FineTuneConfig":
        """Returns a copy with `changes` applied; unknown names are an error."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"Unknown fine-tuning option(s) {unknown}. Known options: "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)


# Named recipes, as changes to the defaults (presets as data). The default
# is the fast point of the accuracy-time frontier; "thorough" trades time
# for accuracy (benchmarks/frontier.py, BUILD_NOTES.md).
PRESETS = {
    "default": {},
    "thorough": {
        "augmentation": ("flip",),
        "fine_tune_epochs": 6,
    },
}


def apply_preset(config_class, presets, name, changes):
    """`config_class()` with `presets[name]` and then `changes` applied (the
    `from_preset` of `FineTuneConfig` and of the demo's `QuickstartConfig`).

    Raises:
        ValueError: If `name` is not in `presets`.
        TypeError: If a change names no field (from `replace`).
    """
    if name not in presets:
        raise ValueError(
            f"Invalid value for `preset`. Expected one of {sorted(presets)}. "
            f"Received: preset={name!r}")
    return config_class().replace(**{**presets[name], **changes})


def choose_image_size(shorter_sides) -> int:
    """The image size for `image_size=None` on a module that declares none.

    Args:
        shorter_sides: The shorter side in pixels of (a sample of) the
            training images, as read from their headers; empty when
            unknown.

    Returns:
        `SMALL_IMAGE_SIZE` when the median is under `SMALL_IMAGE_SIDE`,
        else `DEFAULT_IMAGE_SIZE`.
    """
    sides = sorted(int(side) for side in shorter_sides if side > 0)
    if sides and sides[len(sides) // 2] < SMALL_IMAGE_SIDE:
        return SMALL_IMAGE_SIZE
    return DEFAULT_IMAGE_SIZE


def check_input_range(value):
    """Returns `value` as a (low, high) tuple of floats, low < high.

    Accepts a pair of numbers or a string "low,high" (as a command flag).

    Raises:
        ValueError: otherwise, naming the common ranges.
    """
    pair = value
    if isinstance(pair, str):
        pair = [p for p in pair.replace("(", "").replace(")", "").split(",") if p.strip()]
    try:
        low, high = (float(v) for v in pair)
        valid = low < high
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            "Invalid value for `input_range`. Expected (low, high) with low < "
            "high: (0, 1) for TF Hub modules, (0, 255) or (-1, 1) for modules "
            f"that scale inside. Received: input_range={value!r}")
    return (low, high)


def _check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"Invalid value for `{name}`. Expected one of {choices}. "
            f"Received: {name}={value!r}")


def _check_int(config, name, minimum, optional=False):
    check_integer(name, getattr(config, name), minimum, optional=optional)

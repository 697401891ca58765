"""What the frozen part of the network computes, computed once.

In phase 1 the whole backbone is frozen; in phase 2, everything below the
unfrozen blocks. With batch norm in inference mode their outputs are fixed,
so each image goes through them once (once per augmentation variant), and
training reads the cached arrays instead of running the frozen layers again
every epoch. The arrays stay in memory up to the budget and spill to files
beyond it (`arrays.ArrayBudget`).
"""

import dataclasses
import logging
from typing import Optional

import tensorflow as tf

from tfhub_ft import arrays, distribution
from tfhub_ft import augmentation as augmentation_lib

logger = logging.getLogger(__name__)


def run_frozen(function, inputs, batch_size, budget, name, traces=None):
    """Runs a frozen function over arrays in batches, storing its outputs.

    Args:
        function: maps a batch (tensor or tuple) to a tensor or tuple.
        inputs: array or tuple of arrays [N, ...] (numpy or `FileArray`).
        budget: `arrays.ArrayBudget` the outputs are allocated from.
        name: Names the outputs in logs and spill files.
        traces: As `distribution.map_batches`.

    Returns:
        Array(s) [N, ...], as `function` returns (numpy or `FileArray`).
    """
    source = arrays.BatchSource(inputs, batch_size=batch_size)
    outputs, returns_tuple, start = None, False, 0
    for output in distribution.map_batches(function, source.dataset(), traces):
        returns_tuple = isinstance(output, tuple)
        parts = output if returns_tuple else (output,)
        if outputs is None:
            outputs = tuple(budget.allocate((len(source),) + part.shape[1:], part.dtype, name)
                            for part in parts)
        for store, part in zip(outputs, parts):
            arrays.write(store, start, part)
        start += len(parts[0])
    if outputs is None:
        raise ValueError(f"No images to run the frozen layers on ({name}).")
    return outputs if returns_tuple else outputs[0]


@dataclasses.dataclass
class FrozenActivations:
    """Cached outputs of the frozen layers for the training and validation sets.

    Attributes:
        train_features: One float32 [N, D] array per augmentation variant:
            backbone features of every training image in that variant.
        validation_features: float32 [M, D].
        train_boundary: With a split backbone, one tuple per variant of the
            float32 tensors [N, ...] entering the top blocks; else None.
        validation_boundary: Tuple of float32 [M, ...], or None.
        split: The `BackboneSplit` the boundary tensors belong to, or None.
    """

    train_features: list
    validation_features: object
    train_boundary: Optional[list] = None
    validation_boundary: Optional[tuple] = None
    split: object = None


def compute_frozen_activations(model, train, validation, config, budget,
                               split=None) -> FrozenActivations:
    """Runs the frozen layers once over both image sets.

    With a `split` (phase 2 trains from cached activations: see
    `recipe.plan_fine_tune`) one pass per image runs the bottom, keeps its
    output (the boundary tensors) and runs the still-frozen top on it for
    phase 1's features; else the whole backbone runs once.

    Args:
        model: `ImageClassifier` with its backbone frozen.
        train, validation: `data.ImageSet`s.
        config: `FineTuneConfig`.
        budget: `arrays.ArrayBudget` for the cached arrays.
        split: The plan's `BackboneSplit`, or None.
    """
    variants = augmentation_lib.cached_variants(model.augmentation)

    def frozen(mirrored):
        def run(images):
            images = augmentation_lib.apply_variant(model.preprocess(images), mirrored)
            if split is None:
                return model.backbone(images, training=False)
            # The phase-1 features in the same pass as the boundary: a second
            # pass over the cached boundary cost its own trace and pipeline
            # (about 1.5 s of the frozen pass on 3,409 photos).
            boundary = tuple(split.bottom(images))
            return boundary + (split.top(boundary),)
        return run

    part = "features" if split is None else "boundary-and-features"
    copies = " (and each mirrored: flip)" if len(variants) > 1 else ""
    logger.info("Running the frozen backbone over %d training images%s and %d validation "
                "images, once%s", len(train), copies, len(validation),
                "" if split is None else ", keeping its bottom's output for phase 2")
    frozen_functions = [frozen(mirrored) for mirrored in variants]
    traces = {}
    train_outputs = [run_frozen(function, train.images, config.batch_size, budget,
                                f"train-{part}-{augmentation_lib.variant_name(mirrored)}",
                                traces)
                     for function, mirrored in zip(frozen_functions, variants)]
    # The plain variant's function (the first) again, so its trace is reused.
    validation_outputs = run_frozen(frozen_functions[0], validation.images, config.batch_size,
                                    budget, f"validation-{part}", traces)
    if split is None:
        return FrozenActivations(train_outputs, validation_outputs)
    return FrozenActivations(
        [outputs[-1] for outputs in train_outputs], validation_outputs[-1],
        [outputs[:-1] for outputs in train_outputs], validation_outputs[:-1], split)


def training_batches(variants, labels, num_classes, config):
    """Shuffled training batches, each example in one random variant per epoch."""
    return arrays.BatchSource(list(variants), labels, config.batch_size, num_classes,
                              shuffle=True, seed=config.seed)


def evaluation_batches(inputs, labels, num_classes, config):
    """Validation batches in order."""
    return arrays.BatchSource(inputs, labels, config.batch_size, num_classes)

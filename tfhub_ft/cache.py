"""What the frozen part of the network computes, computed once.

In phase 1 the whole backbone is frozen; in phase 2, everything below the
unfrozen blocks. With batch norm in inference mode their outputs are fixed,
so each image goes through them once (once per augmentation variant), and
training reads the cached arrays instead of running the frozen layers again
every epoch.
"""

import dataclasses
import logging
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfhub_ft import distribution

logger = logging.getLogger(__name__)


def augmentation_variants(augmentation) -> List[bool]:
    """The deterministic pixel variants to cache: [plain] or [plain, mirrored]."""
    return [False, True] if "flip" in augmentation else [False]


def run_frozen(function, arrays, batch_size):
    """Runs a frozen function over arrays in batches.

    Args:
        function: maps a batch (tensor or tuple) to a tensor or tuple.
        arrays: numpy array or tuple of arrays, [N, ...] each.

    Returns:
        numpy array(s) [N, ...], as `function` returns.
    """
    dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
    return distribution.map_batches(function, dataset.prefetch(tf.data.AUTOTUNE))


@dataclasses.dataclass
class FrozenActivations:
    """Cached outputs of the frozen layers for the training and validation sets.

    Attributes:
        train_features: float32 [N, V, D], backbone features of each training
            image in each of its V augmentation variants.
        validation_features: float32 [M, D].
        train_boundary: With a split backbone, the tensors entering the top
            blocks: a tuple of float32 [N, V, ...]; else None.
        validation_boundary: Tuple of float32 [M, ...], or None.
        split: The `BackboneSplit` the boundary tensors belong to, or None.
    """

    train_features: np.ndarray
    validation_features: np.ndarray
    train_boundary: Optional[Tuple[np.ndarray, ...]] = None
    validation_boundary: Optional[Tuple[np.ndarray, ...]] = None
    split: object = None


def compute_frozen_activations(model, train, validation, config) -> FrozenActivations:
    """Runs the frozen layers once over both image sets.

    Where phase 2 will fine-tune and the backbone can be split below the
    unfrozen blocks, the bottom runs once and the features come from the top
    applied to its (cached) output; else the whole backbone runs once.

    Args:
        model: `ImageClassifier` with its backbone frozen.
        train, validation: `data.ImageSet`s.
        config: `FineTuneConfig`.
    """
    variants = augmentation_variants(model.augmentation)
    split = None
    if config.fine_tune_epochs > 0:
        split = model.backbone.split_top_blocks(config.unfreeze_blocks)

    def pixels(flip):
        def prepare(images):
            images = model.preprocess(images)
            return tf.reverse(images, axis=[2]) if flip else images
        return prepare

    if split is None:
        def features(flip):
            return lambda images: model.backbone(pixels(flip)(images), training=False)
        train_features = np.stack(
            [run_frozen(features(flip), train.images, config.batch_size) for flip in variants],
            axis=1)
        validation_features = run_frozen(features(False), validation.images, config.batch_size)
        return FrozenActivations(train_features, validation_features)

    def bottom(flip):
        return lambda images: split.bottom(pixels(flip)(images))

    def top(boundary):
        return split.top(boundary)

    per_variant = [run_frozen(bottom(flip), train.images, config.batch_size) for flip in variants]
    validation_boundary = run_frozen(bottom(False), validation.images, config.batch_size)
    train_features = np.stack(
        [run_frozen(top, boundary, config.batch_size) for boundary in per_variant], axis=1)
    train_boundary = tuple(np.stack(parts, axis=1) for parts in zip(*per_variant))
    return FrozenActivations(
        train_features, run_frozen(top, validation_boundary, config.batch_size),
        train_boundary, validation_boundary, split)


def variant_dataset(inputs, labels, num_classes, batch_size, seed):
    """Training batches that show each example in one random variant per epoch.

    Args:
        inputs: array or tuple of arrays [N, V, ...] (V variants each).
        labels: int [N].
        num_classes: depth of the one-hot labels.

    Returns:
        A shuffled, batched tf.data.Dataset of (inputs [B, ...], one-hot
        labels float32 [B, C]); a new shuffle and choice each epoch.
    """
    count = len(labels)
    choices = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    examples = tf.data.Dataset.from_tensor_slices((inputs, labels))
    examples = examples.shuffle(count, seed=seed, reshuffle_each_iteration=True)

    def choose(choice, example):
        x, y = example
        variants = tf.shape(tf.nest.flatten(x)[0])[0]
        index = tf.cast(choice % tf.cast(variants, tf.int64), tf.int32)
        return (tf.nest.map_structure(lambda t: t[index], x),
                tf.one_hot(y, num_classes))

    return (tf.data.Dataset.zip((choices, examples))
            .map(choose, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def evaluation_dataset(inputs, labels, num_classes, batch_size):
    """Batches of (inputs, one-hot labels) in order."""
    return (tf.data.Dataset.from_tensor_slices((inputs, labels))
            .batch(batch_size)
            .map(lambda x, y: (x, tf.one_hot(y, num_classes)))
            .prefetch(tf.data.AUTOTUNE))

"""Training-only augmentation, in the two forms that must agree.

Online, `online_layer` is the Keras layer `ImageClassifier` applies to each
training batch when the whole model runs. Cached, the frozen pass computes
each image once per deterministic variant (`cached_variants`,
`apply_variant`) and each epoch draws one variant per image, which is what
the online layer does with probability 1/2 each.
"""

from typing import List

import keras
import tensorflow as tf

from tfhub_ft.config import AUGMENTATIONS

__all__ = ["AUGMENTATIONS", "online_layer", "cached_variants", "apply_variant",
           "variant_name"]


def online_layer(augmentation, seed):
    """The Keras layer applying `augmentation` to training batches, or None.

    Args:
        augmentation: Names from `AUGMENTATIONS`.
        seed: int, seeds the layer's random draws.
    """
    if "flip" in augmentation:
        return keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32")
    return None


def cached_variants(augmentation) -> List[bool]:
    """The variants the frozen pass caches: [plain] or [plain, mirrored]."""
    return [False, True] if "flip" in augmentation else [False]


def apply_variant(images, mirrored):
    """images [N, H, W, 3] -> the variant: mirrored left-right, or as they are."""
    return tf.reverse(images, axis=[2]) if mirrored else images


def variant_name(mirrored):
    """"mirrored" or "plain", for logs and spill-file names."""
    return "mirrored" if mirrored else "plain"

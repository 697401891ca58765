"""Near-duplicate images across training and validation, by frozen features.

A validation image that is nearly a training image (the same photo resized,
recompressed or slightly cropped, or a burst shot) scores as if it were
training data and flatters the validation accuracy. The frozen pass already
computes a feature vector per image; two images whose features have a cosine
similarity above a threshold are flagged.
"""

import dataclasses
from typing import List

import numpy as np

from tfhub_ft import arrays

_CHUNK = 1024


@dataclasses.dataclass
class NearDuplicate:
    """A validation image and its most similar training image.

    Attributes:
        validation_index: Row in the validation set.
        train_index: Row in the training set.
        similarity: Cosine similarity of their features, in [-1, 1].
    """

    validation_index: int
    train_index: int
    similarity: float


def _unit_rows(array, start, stop):
    rows = arrays.take(array, np.arange(start, stop)).astype(np.float32)
    rows = rows.reshape(len(rows), -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def find_near_duplicates(train_features, validation_features,
                         threshold) -> List[NearDuplicate]:
    """Validation images whose features nearly equal a training image's.

    Args:
        train_features: float [N, D] (numpy or `arrays.FileArray`).
        validation_features: float [M, D].
        threshold: Cosine similarity above which a pair counts, in (0, 1].

    Returns:
        One `NearDuplicate` per flagged validation image (its most similar
        training image), by validation index. Costs N * M * D
        multiply-adds, in chunks of 1024 x 1024 rows.
    """
    best = np.full(len(validation_features), -np.inf, np.float32)
    best_index = np.zeros(len(validation_features), np.int64)
    for v_start in range(0, len(validation_features), _CHUNK):
        v_stop = min(v_start + _CHUNK, len(validation_features))
        validation = _unit_rows(validation_features, v_start, v_stop)
        for t_start in range(0, len(train_features), _CHUNK):
            t_stop = min(t_start + _CHUNK, len(train_features))
            similarity = validation @ _unit_rows(train_features, t_start, t_stop).T
            column = similarity.argmax(axis=1)
            value = similarity[np.arange(len(column)), column]
            better = value > best[v_start:v_stop]
            best[v_start:v_stop][better] = value[better]
            best_index[v_start:v_stop][better] = column[better] + t_start
    flagged = np.flatnonzero(best >= threshold)
    return [NearDuplicate(int(i), int(best_index[i]), float(best[i])) for i in flagged]

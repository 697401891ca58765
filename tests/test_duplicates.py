import numpy as np
import pytest

from tfhub_ft import arrays, duplicates

TRAIN = np.float32([[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 4, 0], [0, 0, 0]])


def test_each_validation_image_gets_its_most_similar_training_image():
    validation = np.float32([[0, 2, 0], [4, 3, 0], [1, 1, 1], [0, 0, 0]])
    found = duplicates.find_near_duplicates(TRAIN, validation, threshold=0.9)
    # [4, 3, 0] is nearest [3, 4, 0] (cosine 24/25 = 0.96); [1, 1, 1] is at
    # most 7/(5*sqrt 3) = 0.808 from any row; a zero row is similar to none.
    assert [(d.validation_index, d.train_index) for d in found] == [(0, 1), (1, 3)]
    assert [d.similarity for d in found] == pytest.approx([1.0, 0.96])
    # The threshold is inclusive.
    at = duplicates.find_near_duplicates(TRAIN, validation, threshold=0.96)
    assert [d.validation_index for d in at] == [0, 1]


def test_chunks_and_spilled_features_give_the_same_answer(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(11, 8)).astype(np.float32)
    validation = np.concatenate([train[[7, 2, 9]] * 2.5, rng.normal(size=(4, 8))]).astype(
        np.float32)
    whole = duplicates.find_near_duplicates(train, validation, threshold=0.999)
    assert [(d.validation_index, d.train_index) for d in whole] == [(0, 7), (1, 2), (2, 9)]
    # Rows 7, 2 and 9 fall in different chunks of 3 rows, and the training
    # features come from a file as a spilled cache holds them.
    monkeypatch.setattr(duplicates, "_CHUNK", 3)
    spilled = arrays.FileArray(str(tmp_path / "train.bin"), train.shape, np.float32)
    arrays.write(spilled, 0, train)
    chunked = duplicates.find_near_duplicates(spilled, validation, threshold=0.999)
    assert chunked == whole

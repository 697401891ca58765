import math

import numpy as np
import pytest

from tfhub_ft import schedules


def test_cosine_decay_values():
    assert schedules.cosine_decay(0, 1.0, 10) == 1.0
    assert schedules.cosine_decay(5, 1.0, 10) == pytest.approx(0.5)
    assert schedules.cosine_decay(10, 1.0, 10) == pytest.approx(0.0)
    assert schedules.cosine_decay(99, 1.0, 10) == pytest.approx(0.0)


def test_cosine_decay_warmup():
    assert schedules.cosine_decay(0, 2.0, 10, warmup_steps=2) == 1.0
    assert schedules.cosine_decay(1, 2.0, 10, warmup_steps=2) == 2.0
    assert schedules.cosine_decay(6, 2.0, 10, warmup_steps=2) == pytest.approx(1.0)


def test_keras_schedule_matches_pure_function():
    schedule = schedules.CosineDecay(1e-3, 20, warmup_steps=3)
    for step in [0, 1, 2, 3, 7, 13, 20, 25]:
        assert float(schedule(step)) == pytest.approx(
            schedules.cosine_decay(step, 1e-3, 20, 3), rel=1e-5, abs=1e-9)
    restored = schedules.CosineDecay(**schedule.get_config())
    assert float(restored(7)) == pytest.approx(float(schedule(7)))

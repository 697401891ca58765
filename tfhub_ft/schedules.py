"""Learning-rate schedules, pure functions of the step."""

import math

import keras


def cosine_decay(step, peak_learning_rate, total_steps, warmup_steps=0):
    """Learning rate at `step`: linear warm-up, then cosine decay to 0.

    Args:
        step: int >= 0, the optimizer step.
        peak_learning_rate: float > 0, the rate at the end of warm-up.
        total_steps: int >= 1, steps of the whole schedule.
        warmup_steps: int >= 0, steps of the linear warm-up from 0.

    Returns:
        float in [0, peak_learning_rate].
    """
    if step < warmup_steps:
        return peak_learning_rate * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return peak_learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`cosine_decay` as a Keras schedule (the step is a tensor there)."""

    def __init__(self, peak_learning_rate, total_steps, warmup_steps=0):
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = self.peak_learning_rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
        warming = self.peak_learning_rate * (step + 1.0) / warmup
        return ops.where(step < self.warmup_steps, warming, decayed)

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate,
                "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}

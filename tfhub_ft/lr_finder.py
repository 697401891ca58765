"""The learning-rate range test (Smith 2017; fastai's `lr_find`).

Training runs for a short pass while the learning rate grows exponentially
from a tiny to a huge value, one step each; the loss against the rate shows
where training starts to make progress and where it diverges. A good rate
lies on the descending part of the curve, below the minimum. On cached
activations (`cache.py`) the test costs seconds. The trainee's weights are
restored afterwards, so the test leaves no trace on the model.

Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural
Networks", WACV 2017, section 3.3 ("LR range test").
"""

import dataclasses
import logging
import math
import os
from typing import Optional

import numpy as np

from tfhub_ft.checks import check_integer

logger = logging.getLogger(__name__)

SUGGESTION_RULE = (
    "a decade below where the smoothed loss starts to climb: the first rate "
    "past the loss's minimum at which it exceeds that minimum by 10% of the "
    "drop from the starting loss (at least 5% of the minimum), divided by 10; "
    "the first 10% of the steps (the moving average's warm-up) left out. "
    "Unlike the rate at the minimum (fastai's `lr_min`), it does not land in "
    "the noise of a flat curve, as fine-tuning's often is")


@dataclasses.dataclass
class LearningRateFinding:
    """The outcome of a range test.

    Attributes:
        learning_rates: float64 [T], the rate of each step, increasing.
        losses: float64 [T], each step's training loss (before its update).
        smoothed_losses: float64 [T], exponential moving average of
            `losses` with bias correction (what the suggestion reads).
        suggestion: The suggested learning rate (> 0).
        rule: How `suggestion` was chosen, in words.
        diverged: Whether the test stopped early because the smoothed loss
            exceeded `divergence_factor` times its minimum.
        plot_path: Path of the written plot, or None.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestion: float
    rule: str = SUGGESTION_RULE
    diverged: bool = False
    plot_path: Optional[str] = None


def exponential_rates(min_learning_rate, max_learning_rate, steps):
    """float64 [steps]: rates from min to max, a constant factor apart."""
    if not 0 < min_learning_rate < max_learning_rate:
        raise ValueError(
            "Invalid value for `min_learning_rate`, `max_learning_rate`. Expected "
            "0 < min_learning_rate < max_learning_rate. Received: "
            f"min_learning_rate={min_learning_rate!r}, max_learning_rate={max_learning_rate!r}")
    check_integer("steps", steps, 2)
    return np.geomspace(min_learning_rate, max_learning_rate, steps)


def smooth(losses, beta=0.9):
    """Bias-corrected exponential moving average of the losses.

    fastai smooths with beta = 0.98, a memory of ~50 steps: over a 100-step
    test the rate grows ~9000-fold in 50 steps, so the curve lagged the
    losses by that much (on the shared clothing data its minimum sat where
    the raw loss had already turned up). 0.9 remembers ~10 steps and still
    divides the per-batch noise by about 4.
    """
    average, out = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** step))
    return np.asarray(out, np.float64)


def suggest(learning_rates, smoothed_losses):
    """The rate a decade below where the loss starts to climb (`SUGGESTION_RULE`)."""
    smoothed_losses = np.asarray(smoothed_losses, np.float64)
    # The first averages rest on one or two batches: noise, not the curve.
    start = len(smoothed_losses) // 10 if len(smoothed_losses) >= 10 else 0
    curve = smoothed_losses[start:]
    lowest = int(np.argmin(curve))
    minimum = curve[lowest]
    tolerance = max(0.1 * (curve[0] - minimum), 0.05 * abs(minimum))
    climbing = np.flatnonzero(curve[lowest:] > minimum + tolerance)
    climb = lowest + (int(climbing[0]) if climbing.size else len(curve) - 1 - lowest)
    return float(learning_rates[start + climb] / 10.0)


def range_test(trainee, batches, make_optimizer, loss, min_learning_rate=1e-7,
               max_learning_rate=10.0, steps=100, beta=0.9, divergence_factor=4.0):
    """Runs the range test on a Keras model and restores its weights.

    Args:
        trainee: A `keras.Model` (built) whose trainable weights are trained.
            It is compiled here with a new optimizer, so the caller's
            optimizer state is untouched; its weights come back afterwards.
        batches: An iterable of (inputs, targets) numpy batches, drawn again
            from the start when exhausted (an `arrays.BatchSource`'s
            `batches(epoch)` per epoch works: pass a callable epoch ->
            iterable).
        make_optimizer: Function learning_rate -> Keras optimizer whose
            `learning_rate` is a plain float (no schedule).
        loss: The Keras loss the phase trains with.
        min_learning_rate, max_learning_rate: The rate range (> 0).
        steps: Training steps, one per rate, >= 2.
        beta: Smoothing of the loss curve, in [0, 1).
        divergence_factor: Stop once the smoothed loss exceeds this many
            times its minimum so far (or is not finite).

    Returns:
        A `LearningRateFinding` (without a plot).

    Raises:
        ValueError: for an empty rate range, fewer than 2 steps, or no
            batches.
    """
    rates = exponential_rates(min_learning_rate, max_learning_rate, steps)
    optimizer = make_optimizer(float(rates[0]))
    trainee.compile(optimizer=optimizer, loss=loss)
    saved = [variable.numpy() for variable in trainee.weights]
    losses, smoothed, best, diverged = [], [], math.inf, False
    try:
        for rate, (inputs, targets) in zip(rates, _forever(batches)):
            optimizer.learning_rate = float(rate)
            value = float(np.asarray(trainee.train_on_batch(inputs, targets)).reshape(-1)[0])
            losses.append(value)
            smoothed = smooth(losses, beta)
            current = smoothed[-1]
            best = min(best, current)
            if not math.isfinite(current) or (len(losses) > 1 and current > divergence_factor * best):
                diverged = True
                break
    finally:
        for variable, value in zip(trainee.weights, saved):
            variable.assign(value)
    if not losses:
        raise ValueError("The range test got no training batch. Give it training data.")
    rates = rates[:len(losses)]
    smoothed = np.asarray(smoothed, np.float64)
    finite = np.where(np.isfinite(smoothed), smoothed, np.inf)
    # The diverging tail (past the stop) carries no information about good rates.
    suggestion = suggest(rates, finite)
    logger.info("Range test: %d steps from %.1e to %.1e%s; suggested learning rate %.2e",
                len(losses), rates[0], rates[-1], ", stopped at divergence" if diverged else "",
                suggestion)
    return LearningRateFinding(rates, np.asarray(losses, np.float64), smoothed,
                               suggestion, diverged=diverged)


def _forever(batches):
    epoch = 0
    while True:
        produced = False
        for batch in (batches(epoch) if callable(batches) else batches):
            produced = True
            yield batch
        if not produced:
            return
        epoch += 1


def plot(finding, path, title="Learning-rate range test", current=None):
    """Writes loss against learning rate (log axis) with the suggestion marked.

    Args:
        finding: The range test's result.
        path: The PNG to write.
        title: The plot's title.
        current: None, or (name, rate): the rate the config would train
            with, marked beside the suggestion ("head_learning_rate", 1e-3).

    Returns:
        `path`.
    """
    from tfhub_ft import report

    plt = report.pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    axis.plot(finding.learning_rates, finding.losses, color="0.75", linewidth=1,
              label="loss per step")
    axis.plot(finding.learning_rates, finding.smoothed_losses, color="tab:blue",
              linewidth=2, label="smoothed loss")
    axis.axvline(finding.suggestion, color="tab:red", linestyle="--",
                 label=f"suggestion {finding.suggestion:.1e}")
    if current is not None:
        name, rate = current
        axis.axvline(rate, color="0.3", linestyle=":", linewidth=1.5,
                     label=f"{name} now {rate:.1e}")
    axis.set_xscale("log")
    losses = np.concatenate([finding.losses, finding.smoothed_losses])
    losses = losses[np.isfinite(losses)]
    if losses.size:
        # From the lowest loss to a little above where the test started:
        # the diverging tail runs off the top instead of flattening the rest.
        start = finding.losses[:max(1, len(finding.losses) // 10)]
        low = float(losses.min())
        high = max(float(np.nanmax(np.where(np.isfinite(start), start, np.nan))), low + 1e-6)
        margin = (high - low) * 0.1
        axis.set_ylim(low - margin, high + 3 * margin)
    axis.set_xlabel("learning rate (log scale)")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.legend(loc="upper left")
    axis.grid(True, which="major", alpha=0.3)
    figure.text(0.01, 0.01, "suggestion: the rate where the smoothed loss starts to climb "
                "past its minimum, / 10",
                fontsize=8, color="0.4")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path

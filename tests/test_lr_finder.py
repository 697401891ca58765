import os

import keras
import numpy as np
import pytest

from tfhub_ft import FineTuner, lr_finder


def _quadratic_problem(seed=0):
    """y = 3 x with x in [9, 11]: the MSE's curvature is 2 E[x^2] ~ 200.

    Plain SGD on it converges for rates below 2 / 200 = 0.01 and diverges
    above: the good rates are known.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(9, 11, (512, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False,
                                                                    kernel_initializer="zeros")])

    def batches(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for start in range(0, len(x), 32):
            rows = order[start:start + 32]
            yield x[rows], 3 * x[rows]
    return model, batches


def test_range_test_finds_a_rate_that_trains_and_stops_at_divergence():
    model, batches = _quadratic_problem()
    finding = lr_finder.range_test(model, batches, lambda rate: keras.optimizers.SGD(rate),
                                   "mse", min_learning_rate=1e-6, max_learning_rate=1.0,
                                   steps=100)
    assert finding.diverged
    assert finding.learning_rates[-1] < 0.1  # stopped soon after 0.01, not at 1.0
    assert 1e-4 <= finding.suggestion < 0.01, finding.suggestion
    assert "divided by 10" in finding.rule
    # The weights come back.
    np.testing.assert_array_equal(model.get_weights()[0], [[0.0]])
    # The suggestion does train: 50 SGD steps at it lower the loss a hundredfold.
    model.compile(optimizer=keras.optimizers.SGD(finding.suggestion), loss="mse")
    x, y = next(iter(batches(0)))
    before = model.evaluate(x, y, verbose=0)
    for epoch in range(4):
        for inputs, targets in batches(epoch):
            model.train_on_batch(inputs, targets)
    assert model.evaluate(x, y, verbose=0) < before / 100


def test_rates_are_exponential_and_checked():
    rates = lr_finder.exponential_rates(1e-4, 1.0, 5)
    np.testing.assert_allclose(rates, [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ValueError, match="min_learning_rate < max_learning_rate"):
        lr_finder.exponential_rates(1.0, 1e-3, 10)
    with pytest.raises(ValueError, match="Invalid value for `steps`"):
        lr_finder.exponential_rates(1e-5, 1.0, 1)


def test_smoothing_is_bias_corrected():
    np.testing.assert_allclose(lr_finder.smooth([2.0, 2.0, 2.0]), [2.0, 2.0, 2.0])


def test_the_plot_marks_the_suggestion_and_the_configured_rate(tmp_path, monkeypatch):
    from tfhub_ft import report
    plt = report.pyplot()
    labels = []
    # The legend's entries, read before the figure is closed.
    monkeypatch.setattr(plt, "close", lambda figure: labels.extend(
        text.get_text() for text in figure.axes[0].get_legend().get_texts()))
    rates = lr_finder.exponential_rates(1e-6, 1.0, 20)
    losses = np.linspace(2.0, 1.0, 20)
    finding = lr_finder.LearningRateFinding(rates, losses, losses, suggestion=3e-3)
    path = lr_finder.plot(finding, str(tmp_path / "lr.png"),
                          current=("head_learning_rate", 1e-3))
    assert os.path.getsize(path) > 0
    assert labels == ["loss per step", "smoothed loss", "suggestion 3.0e-03",
                      "head_learning_rate now 1.0e-03"]


@pytest.mark.slow
def test_find_learning_rate_on_cached_activations(tiny_backbone_path, image_folders,
                                                  small_config, tmp_path):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    before = [variable.numpy().copy() for variable in tuner.backbone.weights]
    for phase in ("head", "fine_tune"):
        # A folder that does not exist yet is made.
        path = str(tmp_path / "plots" / f"lr_find_{phase}.png")
        finding = tuner.find_learning_rate(train, phase=phase, validation=validation,
                                           steps=30, plot_path=path)
        assert len(finding.losses) == len(finding.learning_rates) <= 30
        assert finding.suggestion > 0 and finding.plot_path == path
        assert os.path.getsize(path) > 0
    # The backbone's own variables are where they started; fit is unaffected.
    for variable, value in zip(tuner.backbone.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert tuner.model is None
    with pytest.raises(ValueError, match="Invalid value for `phase`"):
        tuner.find_learning_rate(train, phase="tail")

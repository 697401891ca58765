"""Tiny offline fixtures: a saved hub backbone and generated image folders."""

import os

import pytest

from tests import fixtures
from tfhub_ft.demo import shapes, tiny_backbone

# No split checks remembered between tests (or from the user's cache): the
# tests of a failing check need it to run. test_backbone turns it on.
os.environ["TFHUB_FT_CACHE_DIR"] = ""

SHARED = os.environ.get(
    "TFHUB_FT_SHARED",
    os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: trains a model end to end or runs a subprocess (a second "
        "or more each); `pytest -m 'not slow'` is the quick loop, under a minute")


@pytest.fixture(scope="session")
def tiny_backbone_path(tmp_path_factory):
    """A constant-initialised TinyBackbone saved in the hub format."""
    return tiny_backbone.build_tiny_backbone(
        str(tmp_path_factory.mktemp("hub") / "tiny"), constant_init=True)


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory):
    """(train dir, validation dir, corrupt paths, class names), 3 classes."""
    root = tmp_path_factory.mktemp("images")
    images, labels, names = shapes.make_shape_images(3, 16, 32, seed=1, task="target")
    train = str(root / "train")
    corrupt = fixtures.write_image_folder(train, images, labels, names,
                                         image_format="mixed", corrupt_files=3)
    images, labels, _ = shapes.make_shape_images(3, 4, 32, seed=2, task="target")
    validation = str(root / "validation")
    fixtures.write_image_folder(validation, images, labels, names, image_format="png")
    return train, validation, corrupt, names


@pytest.fixture
def small_config():
    """A fast recipe for the tiny backbone (seconds per fit)."""
    from tfhub_ft import FineTuneConfig
    return FineTuneConfig(image_size=32, batch_size=8, head_epochs=2,
                          fine_tune_epochs=2, unfreeze_blocks=2,
                          head_learning_rate=1e-2, fine_tune_learning_rate=1e-2)


@pytest.fixture(scope="session")
def export_dir(tiny_backbone_path, image_folders, tmp_path_factory):
    """An export (SavedModel, labels.txt, float32 model.tflite) of a tiny
    classifier trained head-only on `image_folders`."""
    from tfhub_ft import FineTuneConfig, FineTuner
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=FineTuneConfig(
        image_size=32, batch_size=8, head_epochs=2, fine_tune_epochs=0,
        head_learning_rate=1e-2))
    tuner.fit(train, validation, verbose=0)
    return tuner.export(str(tmp_path_factory.mktemp("export") / "model"), tflite="float32")

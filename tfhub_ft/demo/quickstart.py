"""The offline quickstart: pretrain, save as a hub module, fine-tune, compare, serve.

Everything runs on generated images (`tfhub_ft.demo.shapes`) with no network
and no data on disk, in a minute or two on a laptop CPU:

1. `pretrain_backbone` trains a small convolutional `TinyBackbone` on the
   48-class *source* task (coloured, textured discs, squares, triangles and
   rings) and saves it in the TF Hub image feature-vector format.
2. `run_quickstart` fine-tunes that module with `FineTuner` on the *target*
   task (new shapes, new textures, random colours; no class in common with
   the source) from a few images per class, trains the same network from
   random weights on the same images and budget for comparison, exports the
   fine-tuned classifier, reloads it with plain `tf.saved_model.load` and
   classifies PNG bytes with it.

The run is described by one frozen `QuickstartConfig`; `PRESETS` holds the
named variants. `examples/quickstart.py` is the command-line front end. The
defaults were chosen by measurement on 2 shared CPU cores (see
`run_quickstart`).
"""

import dataclasses
import logging
import math
import os
import time
from typing import List, NamedTuple, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import backbone as backbone_lib
from tfhub_ft import config as config_lib
from tfhub_ft import data as data_lib
from tfhub_ft import model as model_lib
from tfhub_ft.checks import check_integer, check_positive_number
from tfhub_ft.config import FineTuneConfig
from tfhub_ft.demo import shapes
from tfhub_ft.demo import tiny_backbone
from tfhub_ft.tuner import FineTuner

logger = logging.getLogger(__name__)

PRETRAINED_DIR = "pretrained_backbone"
SCRATCH_DIR = "scratch_backbone"
EXPORT_DIR = "export"


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """Everything that decides a quickstart run; checked when it is built.

    Attributes:
        source_classes: Source classes for pretraining, an integer in
            [2, 48]; the default uses every source concept.
        source_images_per_class: Pretraining images per class, >= 1.
        source_test_images_per_class: Held-out source images per class
            (drawn with seed `seed + 1`) for `source_accuracy`, >= 1.
        pretrain_epochs: Pretraining epochs, >= 1.
        pretrain_batch_size: Images per pretraining step, >= 1.
        pretrain_learning_rate: Peak Adam learning rate of pretraining
            (cosine-decayed to 0), a number > 0.
        widths: Output channels of the `TinyBackbone`'s stem, then of each
            block (both arms); the features have `widths[-1]` dimensions. In
            our trials (24, 48, 96, 96) reached ~0.55 target accuracy instead
            of ~0.59 with ~25% less pretraining time, and 48-pixel images were
            slower and no better.
        image_size: Side in pixels of the square images of every stage, an
            integer >= 8.
        target_classes: Target classes, an integer in [2, 15].
        train_images_per_class: Target training images per class, >= 2.
        validation_images_per_class: Target validation images per class, >= 1.
        test_images_per_class: Target test images per class, >= 1.
        batch_size: Images per fine-tuning step (both arms), >= 1.
        head_epochs, head_learning_rate, fine_tune_epochs,
        fine_tune_learning_rate: The fine-tuned arm's `FineTuneConfig`
            (epochs >= 0, at least one in all; rates > 0).
        scratch_learning_rate: Peak learning rate of the from-scratch arm,
            > 0: the best of 3e-3, 1e-2 and 3e-2 for it in our trials (random
            weights need a larger rate than pretrained ones), so the baseline
            is not handicapped by a fine-tuning rate.
        num_predictions: Test images to report predictions for, in
            [0, target_classes * test_images_per_class].
        seed: Non-negative integer; the run is a function of the config (up
            to the nondeterminism of multi-threaded CPU kernels).

    Raises:
        ValueError: From the constructor and `replace`, naming the first
            field out of range.
    """

    # Pretraining on the source task.
    source_classes: int = shapes.MAX_SOURCE_CLASSES
    source_images_per_class: int = 100
    source_test_images_per_class: int = 10
    pretrain_epochs: int = 15
    pretrain_batch_size: int = 64
    pretrain_learning_rate: float = 3e-3
    widths: Tuple[int, ...] = (32, 64, 128, 128)
    image_size: int = 32
    # The target task: few training images per class.
    target_classes: int = 6
    train_images_per_class: int = 15
    validation_images_per_class: int = 30
    test_images_per_class: int = 30
    # Fine-tuning (both arms use batch_size and the same epoch budget).
    batch_size: int = 16
    head_epochs: int = 10
    head_learning_rate: float = 1e-2
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-3
    scratch_learning_rate: float = 1e-2
    num_predictions: int = 5
    seed: int = 0

    def __post_init__(self):
        # Every field is checked before the minute of pretraining starts.
        check_integer("source_classes", self.source_classes, 2,
                      shapes.MAX_SOURCE_CLASSES)
        check_integer("source_images_per_class", self.source_images_per_class, 1)
        check_integer("source_test_images_per_class",
                      self.source_test_images_per_class, 1)
        check_integer("pretrain_epochs", self.pretrain_epochs, 1)
        check_integer("pretrain_batch_size", self.pretrain_batch_size, 1)
        object.__setattr__(self, "widths", tiny_backbone.check_widths(self.widths))
        check_integer("image_size", self.image_size, 8)
        check_integer("target_classes", self.target_classes, 2,
                      shapes.MAX_TARGET_CLASSES)
        check_integer("train_images_per_class", self.train_images_per_class, 2)
        check_integer("validation_images_per_class",
                      self.validation_images_per_class, 1)
        check_integer("test_images_per_class", self.test_images_per_class, 1)
        check_integer("batch_size", self.batch_size, 1)
        check_integer("head_epochs", self.head_epochs, 0)
        check_integer("fine_tune_epochs", self.fine_tune_epochs, 0)
        if self.head_epochs + self.fine_tune_epochs == 0:
            raise ValueError(
                "Invalid values for `head_epochs` and `fine_tune_epochs`. "
                "Expected at least one epoch in all. Received: head_epochs=0, "
                "fine_tune_epochs=0")
        for name in ("pretrain_learning_rate", "head_learning_rate",
                     "fine_tune_learning_rate", "scratch_learning_rate"):
            check_positive_number(name, getattr(self, name))
        check_integer("num_predictions", self.num_predictions, 0,
                      self.target_classes * self.test_images_per_class)
        check_integer("seed", self.seed, 0)

    def replace(self, **changes) -> "QuickstartConfig":
        """Returns a checked copy with `changes` applied; unknown names are a TypeError."""
        known = sorted(f.name for f in dataclasses.fields(self))
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise TypeError(
                f"Unknown quickstart option(s) {unknown}. Known options: {known}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name, **changes) -> "QuickstartConfig":
        """Returns the config of `PRESETS[name]` with `changes` applied.

        Raises:
            ValueError: If `name` is not in `PRESETS`.
            TypeError: If a change names no field.
        """
        return config_lib.apply_preset(cls, PRESETS, name, changes)


# Named runs, as changes to the defaults. "fast" (`examples/quickstart.py
# --fast`) takes about half the time; the pretrained backbone is weaker
# (~0.65 held-out source accuracy) and the transfer gain smaller (~15
# points) but still clear.
PRESETS = {
    "default": {},
    "fast": {
        "source_images_per_class": 60,
        "pretrain_epochs": 12,
        "widths": (24, 48, 96, 96),
    },
}


class Prediction(NamedTuple):
    """One prediction of the reloaded SavedModel.

    Attributes:
        true_label: The class the image was drawn from.
        predicted_label: The SavedModel's top-1 class ("classes" output).
        probability: Its probability, float in [0, 1].
    """

    true_label: str
    predicted_label: str
    probability: float


@dataclasses.dataclass
class QuickstartResult:
    """What `run_quickstart` measured.

    Attributes:
        source_accuracy: Pretrained backbone + head accuracy on held-out
            source images, in [0, 1].
        pretrain_seconds: Wall seconds of pretraining (data included).
        fine_tuned_accuracy: Target validation accuracy of the classifier
            fine-tuned from the pretrained backbone (`FineTuner.
            validation_metrics`). The validation images also pick the
            restored epoch (lowest validation loss), in both arms.
        scratch_accuracy: The same for the network trained from scratch, on
            the same validation images.
        fine_tuned_test_accuracy: Target test accuracy of the fine-tuned
            classifier, on images used neither for training nor for picking
            the epoch.
        scratch_test_accuracy: The same for the from-scratch network.
        exported_test_accuracy: Test accuracy of the exported SavedModel,
            reloaded with `tf.saved_model.load` and fed PNG bytes; equal to
            `fine_tuned_test_accuracy` up to float rounding.
        fine_tune_seconds: Wall seconds of `FineTuner.fit` from the
            pretrained backbone.
        scratch_seconds: Wall seconds of `FineTuner.fit` from scratch.
        export_dir: Folder of the exported SavedModel.
        class_names: The target classes, in label order.
        predictions: The first few test images as classified by the
            reloaded SavedModel.
        total_seconds: Wall seconds of the whole run.
    """

    source_accuracy: float
    pretrain_seconds: float
    fine_tuned_accuracy: float
    scratch_accuracy: float
    fine_tuned_test_accuracy: float
    scratch_test_accuracy: float
    exported_test_accuracy: float
    fine_tune_seconds: float
    scratch_seconds: float
    export_dir: str
    class_names: List[str]
    predictions: List[Prediction]
    total_seconds: float

    @property
    def transfer_gain(self) -> float:
        """Test accuracy points (in [-1, 1]) that pretraining bought."""
        return self.fine_tuned_test_accuracy - self.scratch_test_accuracy


def pretrain_backbone(path, config=QuickstartConfig(), verbose=0):
    """Trains a `TinyBackbone` on the generated source task and saves it.

    The backbone (`TinyBackbone(config.widths)`, He-normal initialised with
    `config.seed`) is wrapped in a `HubBackbone` with batch norm in training
    mode, every block unfrozen, under a Dense head (`build_classifier`,
    horizontal-flip augmentation); the whole network trains for
    `config.pretrain_epochs` with Adam and a cosine-decayed learning rate
    (peak `config.pretrain_learning_rate`, batches of
    `config.pretrain_batch_size`) on `config.source_classes *
    config.source_images_per_class` images drawn with `config.seed`. The
    backbone alone is then saved as a TF2 SavedModel in the TF Hub image
    feature-vector convention (`tiny_backbone.save_feature_vector_module`):
    float32 images [N, H, W, 3] in [0, 1] -> float32 features
    [N, widths[-1]].

    Args:
        path: Folder to write the SavedModel to.
        config: A `QuickstartConfig`; its `source_*`, `pretrain_*`,
            `widths`, `image_size` and `seed` fields are used.
        verbose: Keras `fit` verbosity.

    Returns:
        A dict: "path" (str, the SavedModel folder), "source_accuracy" (float
        in [0, 1], on the held-out source images), "train_accuracy" (float,
        last epoch's running training accuracy), "class_names" (list of
        str), "seconds" (float, wall time including image generation).

    Raises:
        ValueError: If `path` is not a folder path.
        TypeError: If `config` is not a `QuickstartConfig`.
    """
    _check_config(config)
    path = _check_path("path", path)
    seed = config.seed
    start = time.perf_counter()
    images, labels, class_names = shapes.make_shape_images(
        config.source_classes, config.source_images_per_class,
        config.image_size, seed=seed, task="source")
    test_images, test_labels, _ = shapes.make_shape_images(
        config.source_classes, config.source_test_images_per_class,
        config.image_size, seed=seed + 1, task="source")
    logger.info("Pretraining a TinyBackbone%s on %d source images of %d "
                "classes for %d epochs", config.widths, len(labels),
                config.source_classes, config.pretrain_epochs)

    keras.utils.set_random_seed(seed)
    tiny = tiny_backbone.TinyBackbone(widths=config.widths, seed=seed)
    backbone = backbone_lib.HubBackbone(
        "quickstart_pretraining", module=tiny, batch_norm_trainable=True)
    model = model_lib.build_classifier(backbone, config.source_classes,
                                       config.image_size, dropout_rate=0.0,
                                       augmentation=("flip",), seed=seed)
    backbone.unfreeze_top_blocks(len(backbone.blocks))
    batch_size = config.pretrain_batch_size
    train = data_lib.ImageSet(images, labels, class_names).to_dataset(
        batch_size, shuffle=True, seed=seed, one_hot=False)
    steps = config.pretrain_epochs * math.ceil(len(labels) / batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            config.pretrain_learning_rate, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    history = model.fit(train, epochs=config.pretrain_epochs, verbose=verbose,
                        shuffle=False)
    test = data_lib.ImageSet(test_images, test_labels, class_names).to_dataset(
        batch_size * 4, one_hot=False)
    _, source_accuracy = model.evaluate(test, verbose=0)

    tiny_backbone.save_feature_vector_module(tiny, path)
    seconds = time.perf_counter() - start
    logger.info("Pretrained in %.1f s: held-out source accuracy %.3f (chance "
                "%.3f); saved to %s", seconds, source_accuracy,
                1.0 / config.source_classes, path)
    return {
        "path": path,
        "source_accuracy": float(source_accuracy),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "class_names": list(class_names),
        "seconds": seconds,
    }


def run_quickstart(work_dir, config=QuickstartConfig(), verbose=0):
    """Pretrains, fine-tunes, compares with training from scratch, exports.

    Steps, all offline (the numbers are `config`'s fields):

    1. `pretrain_backbone` on the source task, saved to
       `work_dir/pretrained_backbone`.
    2. The target task: `target_classes` classes of `task="target"` images,
       which share no class with the source task (new shapes and textures,
       random colours). Three disjoint sets are drawn with seeds `seed`,
       `seed + 1` and `seed + 2`: training (`train_images_per_class` per
       class), validation and test.
    3. Fine-tuned arm: `FineTuner` on the pretrained module with its
       two-phase recipe: `head_epochs` epochs of the head alone at
       `head_learning_rate`, then `fine_tune_epochs` epochs of every block
       (batch norm kept in inference mode, the recipe's default for small
       data) at `fine_tune_learning_rate`.
    4. From-scratch arm: a `TinyBackbone` of the same `widths` with fresh
       random weights (the very weights pretraining started from), saved the
       same way to `work_dir/scratch_backbone`, through `FineTuner` with
       every block unfrozen and `batch_norm_trainable=True` (random batch
       norm statistics must be learned).

       **The budget**: both arms make `head_epochs + fine_tune_epochs`
       passes over the same training images, with the same batch size,
       augmentation, label smoothing and validation images. The scratch arm
       spends all of them training the whole network (`head_epochs=0`,
       `fine_tune_epochs=head_epochs + fine_tune_epochs`, a head alone on
       random features being wasted), at `scratch_learning_rate`, so each
       of its epochs costs at least as much compute as the fine-tuned arm's.
       Early stopping is off in both (patience = the epochs), and both
       restore their epoch of lowest validation loss, as `FineTuner` does.
       Pretraining is not part of the budget: it is paid once and reused.
    5. The fine-tuned classifier is exported to `work_dir/export`, reloaded
       with plain `tf.saved_model.load`, and its "serving_default" signature
       classifies the PNG-encoded test images.

    With the default config (about 1 minute on 2 CPU cores), pretraining
    reaches ~0.9 held-out source accuracy (chance 0.02), and the fine-tuned
    model beats the one trained from scratch by about 25-30 points on the
    target test images (~0.55-0.6 against ~0.3, chance 0.17).

    Args:
        work_dir: Folder for the backbones and the export; created if
            missing.
        config: A `QuickstartConfig` (checked when it was built).
        verbose: Keras `fit` verbosity of every training.

    Returns:
        A `QuickstartResult`.

    Raises:
        ValueError: If `work_dir` is not a folder path.
        TypeError: If `config` is not a `QuickstartConfig`.
    """
    start = time.perf_counter()
    _check_config(config)
    work_dir = _check_path("work_dir", work_dir)
    seed = config.seed
    total_epochs = config.head_epochs + config.fine_tune_epochs
    common = FineTuneConfig(
        image_size=config.image_size, batch_size=config.batch_size,
        unfreeze_blocks=len(config.widths) + 1,  # stem, a block per widths[1:], top
        early_stopping_patience=total_epochs, seed=seed)
    fine_tune_config = common.replace(
        head_epochs=config.head_epochs,
        head_learning_rate=config.head_learning_rate,
        fine_tune_epochs=config.fine_tune_epochs,
        fine_tune_learning_rate=config.fine_tune_learning_rate)
    # Random weights have no features to find near-duplicates with: their
    # cosine similarities are all high (98 of 180 images flagged), so the
    # check is in effect off for that arm.
    scratch_config = common.replace(
        head_epochs=0, fine_tune_epochs=total_epochs,
        fine_tune_learning_rate=config.scratch_learning_rate,
        batch_norm_trainable=True, near_duplicate_threshold=1.0)
    os.makedirs(work_dir, exist_ok=True)

    pretrained = pretrain_backbone(
        os.path.join(work_dir, PRETRAINED_DIR), config, verbose=verbose)

    train, validation, test = (
        data_lib.ImageSet(*shapes.make_shape_images(
            config.target_classes, count, config.image_size,
            seed=seed + offset, task="target"))
        for offset, count in enumerate((config.train_images_per_class,
                                        config.validation_images_per_class,
                                        config.test_images_per_class)))
    class_names = list(train.class_names)
    logger.info("Target task: %d classes %s, %d training images per class",
                config.target_classes, class_names,
                config.train_images_per_class)

    fine_tuned, fine_tune_seconds = _fit(
        pretrained["path"], fine_tune_config, train, validation, "fine-tuned",
        verbose)

    scratch_path = tiny_backbone.save_feature_vector_module(
        tiny_backbone.TinyBackbone(widths=config.widths, seed=seed),
        os.path.join(work_dir, SCRATCH_DIR))
    scratch, scratch_seconds = _fit(
        scratch_path, scratch_config, train, validation, "from scratch",
        verbose)

    fine_tuned_test = fine_tuned.evaluate(test)["accuracy"]
    scratch_test = scratch.evaluate(test)["accuracy"]
    logger.info("Target test accuracy: fine-tuned %.3f, from scratch %.3f",
                fine_tuned_test, scratch_test)

    export_dir = fine_tuned.export(os.path.join(work_dir, EXPORT_DIR))
    exported_accuracy, predictions = _serve(export_dir, test,
                                            config.num_predictions)
    total_seconds = time.perf_counter() - start
    logger.info("Quickstart done in %.1f s", total_seconds)
    return QuickstartResult(
        source_accuracy=pretrained["source_accuracy"],
        pretrain_seconds=pretrained["seconds"],
        fine_tuned_accuracy=fine_tuned.validation_metrics["accuracy"],
        scratch_accuracy=scratch.validation_metrics["accuracy"],
        fine_tuned_test_accuracy=fine_tuned_test,
        scratch_test_accuracy=scratch_test,
        exported_test_accuracy=exported_accuracy,
        fine_tune_seconds=fine_tune_seconds,
        scratch_seconds=scratch_seconds,
        export_dir=export_dir,
        class_names=class_names,
        predictions=predictions,
        total_seconds=total_seconds,
    )


def _check_config(config):
    if not isinstance(config, QuickstartConfig):
        raise TypeError(
            "Invalid type for `config`. Expected a `QuickstartConfig`, e.g. "
            "QuickstartConfig(seed=1) or QuickstartConfig.from_preset('fast'). "
            f"Received: config of type {type(config).__name__}")


def _fit(hub_path, config, train, validation, name, verbose):
    """Runs `FineTuner.fit`; returns (the tuner, wall seconds)."""
    start = time.perf_counter()
    tuner = FineTuner(hub_path, config=config)
    tuner.fit(train, validation=validation, verbose=verbose)
    seconds = time.perf_counter() - start
    logger.info("Trained %s in %.1f s: validation accuracy %.3f", name,
                seconds, tuner.validation_metrics["accuracy"])
    return tuner, seconds


def _serve(export_dir, test, num_predictions):
    """Classifies the PNG-encoded test images with the reloaded export.

    Returns:
        (accuracy float in [0, 1], list of the first `num_predictions`
        `Prediction`s).
    """
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures["serving_default"]
    encoded = tf.constant([tf.io.encode_png(image).numpy() for image in test.images])
    outputs = serve(image_bytes=encoded)
    class_ids = outputs["class_ids"].numpy()
    probabilities = outputs["probabilities"].numpy()
    classes = [c.decode("utf-8") for c in outputs["classes"].numpy()]
    accuracy = float(np.mean(class_ids == test.labels))
    predictions = [
        Prediction(test.class_names[test.labels[i]], classes[i],
                   float(probabilities[i, class_ids[i]]))
        for i in range(num_predictions)
    ]
    logger.info("Reloaded %s: test accuracy %.3f from PNG bytes", export_dir,
                accuracy)
    return accuracy, predictions


def _check_path(name, value):
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"Invalid value for `{name}`. Expected a folder path. "
            f"Received: {name}={value!r}")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(
            f"Invalid value for `{name}`. Expected a folder path. Received: "
            f"{value!r}, which is a file.")
    return value

"""`FineTuner`: a hub backbone in, a served classifier out."""

import logging
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import arrays
from tfhub_ft import backbone as backbone_lib
from tfhub_ft import cache, checkpoints
from tfhub_ft import data as data_lib
from tfhub_ft import distribution, duplicates, image_files
from tfhub_ft import export as export_lib
from tfhub_ft import model as model_lib
from tfhub_ft import recipe
from tfhub_ft.config import FineTuneConfig

logger = logging.getLogger(__name__)


class FineTuner:
    """Fine-tunes a TF Hub image feature vector on your labelled images.

    Example:

    ```python
    tuner = FineTuner("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    tuner.fit("photos/train", validation="photos/validation")
    print(tuner.evaluate("photos/test"))
    tuner.export("export/photos")
    ```

    Args:
        hub_handle: tfhub.dev or Kaggle Models URL, Kaggle handle, or local
            SavedModel folder of an image feature vector.
        config: A `FineTuneConfig`; defaults to `FineTuneConfig()`.
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
            The backbone, model and optimizers are created in its scope.
        block_pattern: Overrides how variables are grouped into blocks (see
            `blocks.block_of`).
        **options: Fields of `FineTuneConfig` to change, e.g.
            `unfreeze_blocks=2`.

    Attributes:
        backbone: The `HubBackbone`, loaded at construction, so its blocks
            can be listed (`backbone.block_summary()`) before `fit`.
        model: The `ImageClassifier`, after `fit`.
        class_names: The classes, after `fit`.
        validation_metrics: `evaluate`'s dict on the validation data,
            after `fit`.
        cache_usage: {"memory_bytes", "spilled_bytes"} of the decoded
            images and cached activations of the last `fit`.
        skipped_files: [(path, reason)] of the files the last `load_data`
            (or `fit`) could not use, training and validation.
        near_duplicates: [(validation path, training path, cosine
            similarity)] of the validation images of the last `fit` whose
            frozen features nearly equal a training image's (see
            `near_duplicate_threshold`); indices stand in for paths when the
            data has none.
    """

    def __init__(self, hub_handle, config=None, strategy=None,
                 block_pattern=None, **options):
        config = config or FineTuneConfig()
        if not isinstance(config, FineTuneConfig):
            raise TypeError(
                "Invalid value for `config`. Expected a FineTuneConfig. "
                f"Received: config={config!r}")
        self.config = config.replace(**options) if options else config
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.backbone = backbone_lib.HubBackbone(
                hub_handle, batch_norm_trainable=self.config.batch_norm_trainable,
                block_pattern=block_pattern, input_range=self.config.input_range)
        self.image_size = (self.config.image_size or self.backbone.image_size
                           or backbone_lib.DEFAULT_IMAGE_SIZE)
        block_count = len(self.backbone.blocks)
        if self.config.unfreeze_blocks > block_count:
            # The default suits deep backbones; a shallow one is trained whole.
            logger.warning("unfreeze_blocks=%d but %s has %d blocks: fine-tuning all of them.",
                           self.config.unfreeze_blocks, self.backbone.hub_handle, block_count)
            self.config = self.config.replace(unfreeze_blocks=block_count)
        self.model = None
        self.class_names = None
        self.validation_metrics = None
        self.cache_usage = None
        self.skipped_files = []
        self.near_duplicates = []

    def load_data(self, train, validation=None, validation_split=None,
                  class_names=None, data_dir=None, budget=None):
        """Loads training and validation `ImageSet`s from any supported source.

        Args:
            train: Image folder, TFDS name, tf.data.Dataset or `ImageSet`.
            validation: The same kinds, or None to hold out
                `validation_split` of `train` (stratified, seeded). For a
                TFDS name, a split name such as "validation" also works.
            validation_split: Overrides the config's fraction.
            class_names: Class names of a tf.data.Dataset source.
            data_dir: TFDS data folder.
            budget: `arrays.ArrayBudget` for the decoded images; a new one
                of `config.cache_memory_mb` when None.

        Returns:
            (train `ImageSet`, validation `ImageSet`).

        Raises:
            ValueError: when a held-out split would be empty (every class
                has fewer than 2 images), or with `on_bad_image="error"`
                and a bad file. A class without validation images is a
                warning.
        """
        size = self.image_size
        budget = budget or self._new_budget()
        is_tfds = data_lib.is_tfds_name(train)
        train_set = data_lib.load_images(train, size, class_names, split="train",
                                         data_dir=data_dir, budget=budget, config=self.config)
        self.skipped_files = [(p, train_set.skip_reasons.get(p, "")) for p in train_set.skipped]
        if validation is None:
            fraction = validation_split or self.config.validation_split
            data_lib.check_validation_split(train_set.labels, train_set.class_names,
                                            fraction, self.config.seed)
            train_indices, validation_indices = data_lib.stratified_split(
                train_set.labels, fraction, self.config.seed)
            return train_set.subset(train_indices), train_set.subset(validation_indices)
        if is_tfds and data_lib.is_tfds_name(validation):
            validation_set = data_lib.load_tfds(train, validation, size, data_dir)
        else:
            validation_set = data_lib.load_images(
                validation, size, class_names or train_set.class_names, budget=budget,
                config=self.config)
        self.skipped_files += [(p, validation_set.skip_reasons.get(p, ""))
                               for p in validation_set.skipped]
        validation_set = data_lib.match_classes(
            validation_set, train_set.class_names, "validation")
        data_lib.warn_missing_validation_classes(validation_set.labels,
                                                 train_set.class_names)
        return train_set, validation_set

    def fit(self, train, validation=None, validation_split=None,
            class_names=None, data_dir=None, verbose="auto", work_dir=None):
        """Trains the head, then fine-tunes the top blocks.

        Args: see `load_data`; `verbose` is passed to Keras `fit`;
            `work_dir`: a folder where every epoch is checkpointed, so that
            calling `fit` again with the same arguments after an
            interruption resumes the run instead of starting over (see
            `checkpoints`); None trains without checkpoints.

        Returns:
            {"head": phase-1 history, "fine_tune": phase-2 history}, each a
            dict of per-epoch lists (loss, accuracy, val_loss, val_accuracy).
        """
        budget = self._new_budget()
        train_set, validation_set = self.load_data(
            train, validation, validation_split, class_names, data_dir, budget)
        logger.info("Training on %d images, validating on %d, %d classes",
                    len(train_set), len(validation_set), len(train_set.class_names))
        data_lib.check_class_balance(train_set.labels, train_set.class_names,
                                     class_weight=self.config.class_weight)
        if self.config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(self.config.seed)
        self.class_names = list(train_set.class_names)
        work = checkpoints.open_work_directory(
            work_dir, checkpoints.run_identity(self.config, self.backbone.hub_handle,
                                               self.class_names, len(train_set),
                                               len(validation_set)),
            is_chief=distribution.is_chief(self.strategy))
        with self.strategy.scope():
            self.model = model_lib.build_classifier(
                self.backbone, len(self.class_names), self.image_size,
                self.config.dropout_rate, self.config.augmentation,
                self.config.seed)
            self.backbone.freeze_all()
            frozen = cache.compute_frozen_activations(
                self.model, train_set, validation_set, self.config, budget)
            for problem in backbone_lib.feature_problems(
                    arrays.take(frozen.train_features[0],
                                np.arange(min(len(train_set), 64))),
                    self.config.input_range):
                logger.warning("Calibration of %s: %s", self.backbone.hub_handle, problem)
            validation_set, frozen = self._check_near_duplicates(
                train_set, validation_set, frozen)
            head_history = recipe.train_head(
                self.model, frozen, train_set, validation_set, self.config, verbose,
                checkpoint=work.phase("head"))
            unfrozen = self.backbone.unfreeze_top_blocks(self.config.unfreeze_blocks)
            fine_tune_history = recipe.fine_tune(
                self.model, frozen, train_set, validation_set, self.config, verbose,
                checkpoint=work.phase("fine_tune", [block.name for block in unfrozen]))
        work.finish()
        self.cache_usage = {"memory_bytes": budget.used_bytes,
                            "spilled_bytes": budget.spilled_bytes}
        self.validation_metrics = self._score(validation_set)
        logger.info("Validation accuracy %.4f on %d images",
                    self.validation_metrics["accuracy"], len(validation_set))
        return {"head": head_history, "fine_tune": fine_tune_history}

    def _check_near_duplicates(self, train_set, validation_set, frozen):
        """Reports (and with `drop_near_duplicates` drops) validation images
        whose frozen features nearly equal a training image's."""
        found = duplicates.find_near_duplicates(
            frozen.train_features[0], frozen.validation_features,
            self.config.near_duplicate_threshold)

        def name(image_set, index):
            return (image_files.display_path(image_set.paths[index])
                    if image_set.paths is not None else f"#{index}")

        self.near_duplicates = [
            (name(validation_set, d.validation_index), name(train_set, d.train_index),
             d.similarity) for d in found]
        if not found:
            return validation_set, frozen
        dropping = self.config.drop_near_duplicates
        logger.warning(
            "%d of %d validation image(s) are near-duplicates of training images "
            "(cosine similarity of frozen features >= %g)%s: %s", len(found),
            len(validation_set), self.config.near_duplicate_threshold,
            "; dropped from validation" if dropping else
            "; they flatter the validation score (drop_near_duplicates=True removes them)",
            "; ".join(f"{v} ~ {t} ({s:.3f})" for v, t, s in self.near_duplicates))
        if not dropping:
            return validation_set, frozen
        flagged = {d.validation_index for d in found}
        keep = np.asarray([i for i in range(len(validation_set)) if i not in flagged],
                          np.int64)
        if len(keep) == 0:
            raise ValueError(
                "Every validation image is a near-duplicate of a training image; "
                "nothing would be left to validate on. Pass other validation "
                "data, or drop_near_duplicates=False.")
        frozen.validation_features = arrays.subset(frozen.validation_features, keep)
        if frozen.validation_boundary is not None:
            frozen.validation_boundary = tuple(
                arrays.subset(part, keep) for part in frozen.validation_boundary)
        return validation_set.subset(keep), frozen

    def _new_budget(self):
        return arrays.ArrayBudget(self.config.cache_memory_mb * 2**20)

    def _decode_options(self):
        return {"max_pixels": self.config.max_image_pixels,
                "exif_orientation": self.config.exif_orientation}

    def _require_model(self):
        if self.model is None:
            raise ValueError("The classifier is not trained yet: call `fit` first.")

    def predict(self, images, batch_size=None):
        """Class probabilities for images.

        Args:
            images: uint8 [N, H, W, 3] in [0, 255] or float [N, H, W, 3] in
                [0, 1] (numpy or tensor), any H, W.

        Returns:
            float32 numpy [N, num_classes], rows summing to 1.
        """
        self._require_model()
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(
            batch_size or self.config.batch_size)
        return self._probabilities(dataset)

    def _probabilities(self, dataset):
        with self.strategy.scope():
            logits = np.concatenate(list(distribution.map_batches(
                lambda batch: self.model(batch, training=False), dataset)))
        return tf.nn.softmax(logits).numpy()

    def evaluate(self, data, class_names=None, data_dir=None, split="test"):
        """Loss and accuracy on held-out data (folder, TFDS name, dataset).

        Returns:
            {"loss": mean cross-entropy without label smoothing,
             "accuracy": top-1 accuracy in [0, 1], "count": images scored}.
        """
        self._require_model()
        image_set = data_lib.match_classes(
            data_lib.load_images(data, self.image_size,
                                 class_names or self.class_names, split, data_dir,
                                 config=self.config),
            self.class_names, "evaluation")
        return self._score(image_set)

    def _score(self, image_set):
        probabilities = self._probabilities(arrays.BatchSource(
            image_set.images, batch_size=self.config.batch_size).dataset())
        labels = image_set.labels
        chosen = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
        return {"loss": float(-np.mean(np.log(chosen))),
                "accuracy": float(np.mean(probabilities.argmax(-1) == labels)),
                "count": int(len(labels))}

    def export(self, export_dir):
        """Writes the SavedModel (and labels.txt) to `export_dir`, atomically.

        See `export.export_saved_model` for the signatures. In a
        multi-worker run every worker must call this (saving may need all of
        them), but only the chief writes `export_dir`; the others write to a
        temporary folder that is removed.

        Returns:
            The export folder path; None on a non-chief worker.
        """
        self._require_model()
        if distribution.is_chief(self.strategy):
            return export_lib.export_saved_model(self.model, self.class_names,
                                                 export_dir, self.image_size,
                                                 **self._decode_options())
        scratch = tempfile.mkdtemp(prefix="tfhub_ft_worker_export_")
        try:
            export_lib.export_saved_model(self.model, self.class_names,
                                          os.path.join(scratch, "export"), self.image_size,
                                          **self._decode_options())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

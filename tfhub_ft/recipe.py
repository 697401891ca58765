"""The two training phases: head on a frozen backbone, then the top blocks.

Each phase is a function of (model, data, config) that returns its Keras
history, so `FineTuner.fit` reads as the recipe itself.
"""

import logging
import math

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import distribution, schedules

logger = logging.getLogger(__name__)


def classification_loss(config):
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing)


def extract_features(model, image_set, batch_size, flip=False):
    """Runs the frozen backbone once over a set of images.

    Args:
        model: an `ImageClassifier`.
        image_set: `data.ImageSet` of uint8 [N, S, S, 3] images.
        flip: If True, the images are mirrored left-right first (the "flip"
            augmentation's second variant).

    Returns:
        float32 numpy [N, feature_dim].
    """
    def features(images):
        images = model.preprocess(images)
        if flip:
            images = tf.reverse(images, axis=[2])
        return model.backbone(images, training=False)

    dataset = tf.data.Dataset.from_tensor_slices(image_set.images).batch(
        batch_size).prefetch(tf.data.AUTOTUNE)
    return distribution.map_batches(features, dataset)


def train_head(model, train, validation, config, verbose="auto"):
    """Phase 1: trains the Dense head with the whole backbone frozen.

    The backbone's output does not change in this phase, so it is computed
    once per image (and once more mirrored, with the "flip" augmentation)
    and the head trains on those features.

    Args:
        model: an `ImageClassifier` whose backbone is frozen.
        train, validation: `data.ImageSet`s.
        config: `FineTuneConfig`.

    Returns:
        The Keras history dict (loss, accuracy, val_loss, val_accuracy).
    """
    if config.head_epochs == 0:
        return {}
    train_features = [extract_features(model, train, config.batch_size)]
    train_labels = [train.labels]
    if "flip" in model.augmentation:
        train_features.append(
            extract_features(model, train, config.batch_size, flip=True))
        train_labels.append(train.labels)
    validation_features = extract_features(model, validation, config.batch_size)

    depth = model.num_classes
    head = keras.Sequential(
        [keras.Input((model.backbone.feature_dim,)), model.dropout, model.head],
        name="head_on_features")
    head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate),
                 loss=classification_loss(config), metrics=["accuracy"])
    history = head.fit(
        np.concatenate(train_features),
        keras.ops.one_hot(np.concatenate(train_labels), depth),
        validation_data=(validation_features,
                         keras.ops.one_hot(validation.labels, depth)),
        batch_size=config.batch_size, epochs=config.head_epochs,
        shuffle=True, verbose=verbose)
    return history.history


def fine_tune(model, train, validation, config, verbose="auto"):
    """Phase 2: trains the unfrozen top blocks and the head at a low rate.

    AdamW with a cosine decay from `fine_tune_learning_rate` to 0 over the
    phase, and early stopping on validation loss that restores the best
    weights.

    Returns:
        The Keras history dict.
    """
    if config.fine_tune_epochs == 0:
        return {}
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer = keras.optimizers.AdamW(
        schedules.CosineDecay(config.fine_tune_learning_rate,
                              steps_per_epoch * config.fine_tune_epochs),
        weight_decay=config.weight_decay)
    # Decaying the batch-norm scales and biases only pulls the pretrained
    # normalisation away from what the following layers expect.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer=optimizer, loss=classification_loss(config),
                  metrics=["accuracy"])
    history = model.fit(
        train.to_dataset(config.batch_size, shuffle=True, seed=config.seed),
        validation_data=validation.to_dataset(config.batch_size),
        epochs=config.fine_tune_epochs, verbose=verbose, shuffle=False,
        callbacks=[keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience,
            restore_best_weights=True)])
    return history.history

"""Fine-tunes a TF Hub image feature vector on flowers or your own photos.

    python examples/flowers.py --hub_url=... [--image_dir=DIR | --tfds_name=tf_flowers] \
        --export_dir=/tmp/flowers_model [--work_dir=/tmp/flowers_run]

With --work_dir every epoch is checkpointed there, and running the same
command again after an interruption resumes the run where it stopped.
"""

import time

from absl import app, flags, logging

import tfhub_ft
from tfhub_ft import distribution

DEFAULTS = tfhub_ft.FineTuneConfig()
FLAGS = flags.FLAGS

flags.DEFINE_string("hub_url", tfhub_ft.DEFAULT_HUB_URL,
                    "TF Hub or Kaggle Models URL or handle, or a local SavedModel folder.")
flags.DEFINE_string("image_dir", None, "Folder with one subfolder of images per class.")
flags.DEFINE_string("validation_dir", None, "Validation image folder (default: a split of the training data).")
flags.DEFINE_string("tfds_name", "tf_flowers", "TFDS dataset, used when --image_dir is not given.")
flags.DEFINE_string("data_dir", None, "TFDS data folder.")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel.")
flags.DEFINE_string("work_dir", None,
                    "Checkpoint folder: rerunning the same command resumes an interrupted run.")
flags.DEFINE_enum("distribution_strategy", "default", distribution.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU name or address for --distribution_strategy=tpu.")
flags.DEFINE_integer("image_size", DEFAULTS.image_size, "Image side (default: the module's, else 224).")
flags.DEFINE_integer("batch_size", DEFAULTS.batch_size, "Global batch size.")
flags.DEFINE_integer("head_epochs", DEFAULTS.head_epochs, "Epochs training the head only.")
flags.DEFINE_float("head_learning_rate", DEFAULTS.head_learning_rate, "Learning rate of the head phase.")
flags.DEFINE_integer("fine_tune_epochs", DEFAULTS.fine_tune_epochs, "Most epochs of fine-tuning.")
flags.DEFINE_float("fine_tune_learning_rate", DEFAULTS.fine_tune_learning_rate, "Peak learning rate of fine-tuning.")
flags.DEFINE_integer("unfreeze_blocks", DEFAULTS.unfreeze_blocks, "Top backbone blocks to fine-tune.")
flags.DEFINE_float("label_smoothing", DEFAULTS.label_smoothing, "Label smoothing.")
flags.DEFINE_float("dropout_rate", DEFAULTS.dropout_rate, "Dropout before the head.")
flags.DEFINE_list("augmentation", list(DEFAULTS.augmentation), "Training augmentations.")
flags.DEFINE_bool("batch_norm_trainable", DEFAULTS.batch_norm_trainable, "Train batch norm statistics.")
flags.DEFINE_integer("early_stopping_patience", DEFAULTS.early_stopping_patience,
                     "Fine-tuning epochs without a better validation loss before stopping.")
flags.DEFINE_integer("seed", DEFAULTS.seed, "Random seed.")
flags.DEFINE_bool("deterministic", DEFAULTS.deterministic,
                  "TensorFlow op determinism: the same seed repeats a run bit for bit.")
flags.DEFINE_integer("cache_memory_mb", DEFAULTS.cache_memory_mb,
                     "Decoded images and cached activations kept in memory; the rest spill to files.")

flags.DEFINE_enum("on_bad_image", DEFAULTS.on_bad_image, ["skip", "error"],
                  "A file that cannot be used: skip it (logged with why) or stop with the list.")
flags.DEFINE_integer("max_image_pixels", DEFAULTS.max_image_pixels,
                     "Largest image (height x width, from its header), in training and serving.")
flags.DEFINE_bool("exif_orientation", DEFAULTS.exif_orientation,
                  "Turn JPEGs upright by their EXIF orientation, in training and serving.")
flags.DEFINE_enum("class_weight", DEFAULTS.class_weight, ["none", "balanced"],
                  "balanced: weight the loss inversely to class frequency.")
flags.DEFINE_list("input_range", [f"{v:g}" for v in DEFAULTS.input_range],
                  "Pixel range the hub module expects: 0,1 (TF Hub), 0,255 or -1,1.")
flags.DEFINE_float("near_duplicate_threshold", DEFAULTS.near_duplicate_threshold,
                   "Cosine similarity flagging validation images that nearly equal training images.")
flags.DEFINE_bool("drop_near_duplicates", DEFAULTS.drop_near_duplicates,
                  "Drop the flagged near-duplicates from validation.")

CONFIG_FLAGS = ("image_size", "batch_size", "head_epochs", "head_learning_rate",
                "fine_tune_epochs", "fine_tune_learning_rate", "unfreeze_blocks",
                "label_smoothing", "dropout_rate", "augmentation",
                "batch_norm_trainable", "early_stopping_patience", "seed",
                "deterministic", "cache_memory_mb", "on_bad_image", "max_image_pixels",
                "exif_orientation", "class_weight", "input_range",
                "near_duplicate_threshold", "drop_near_duplicates")


def main(argv):
    del argv
    start = time.time()
    config = DEFAULTS.replace(**{name: FLAGS[name].value for name in CONFIG_FLAGS})
    strategy = distribution.get_strategy(FLAGS.distribution_strategy, FLAGS.tpu)
    tuner = tfhub_ft.FineTuner(FLAGS.hub_url, config=config, strategy=strategy)
    if FLAGS.image_dir:
        tuner.fit(FLAGS.image_dir, validation=FLAGS.validation_dir, work_dir=FLAGS.work_dir)
    else:
        tuner.fit(FLAGS.tfds_name, data_dir=FLAGS.data_dir, work_dir=FLAGS.work_dir)
    metrics = tuner.validation_metrics
    logging.info("Validation accuracy %.4f on %d images, %.0f s in all",
                 metrics["accuracy"], metrics["count"], time.time() - start)
    print(f"validation_accuracy={metrics['accuracy']:.4f} images={metrics['count']} "
          f"wall_seconds={time.time() - start:.1f}")
    if FLAGS.export_dir:
        # Every worker of a multi-worker run exports; only the chief writes.
        exported = tuner.export(FLAGS.export_dir)
        if exported:
            print("exported", exported)


if __name__ == "__main__":
    app.run(main)

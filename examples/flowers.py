"""Fine-tunes a TF Hub image feature vector on flowers or your own photos.

    python examples/flowers.py --hub_url=... [--image_dir=DIR | --tfds_name=tf_flowers] \
        --export_dir=/tmp/flowers_model [--work_dir=/tmp/flowers_run]

With --work_dir every epoch is checkpointed there, and running the same
command again after an interruption resumes the run where it stopped.
"""

import time

from absl import app, flags, logging

import tfhub_ft
from tfhub_ft import distribution, tflite

DEFAULTS = tfhub_ft.FineTuneConfig()
FLAGS = flags.FLAGS

flags.DEFINE_string("hub_url", tfhub_ft.DEFAULT_HUB_URL,
                    "TF Hub or Kaggle Models URL or handle, or a local SavedModel folder.")
flags.DEFINE_string("image_dir", None, "Folder with one subfolder of images per class.")
flags.DEFINE_string("validation_dir", None, "Validation image folder (default: a split of the training data).")
flags.DEFINE_string("tfds_name", "tf_flowers", "TFDS dataset, used when --image_dir is not given.")
flags.DEFINE_string("data_dir", None, "TFDS data folder.")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel.")
flags.DEFINE_enum("tflite", "none", ("none",) + tflite.TFLITE_MODES,
                  "Also write model.tflite (and its parity report) in --export_dir: "
                  "float32, float16, dynamic (int8 weights) or int8 (full integer).")
flags.DEFINE_string("export_backbone_dir", None,
                    "Where to write the fine-tuned backbone as a TF Hub module.")
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

CONFIG_FLAGS = ("image_size", "batch_size", "head_epochs", "head_learning_rate",
                "fine_tune_epochs", "fine_tune_learning_rate", "unfreeze_blocks",
                "label_smoothing", "dropout_rate", "augmentation",
                "batch_norm_trainable", "early_stopping_patience", "seed",
                "deterministic", "cache_memory_mb")


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
        exported = tuner.export(FLAGS.export_dir,
                                tflite=None if FLAGS.tflite == "none" else FLAGS.tflite)
        if exported:
            print("exported", exported)
    if FLAGS.export_backbone_dir:
        exported = tuner.export_backbone(FLAGS.export_backbone_dir)
        if exported:
            print("exported backbone", exported)


if __name__ == "__main__":
    app.run(main)

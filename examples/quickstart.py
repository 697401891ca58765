"""The offline quickstart: transfer learning end to end in a minute or two.

    python examples/quickstart.py [--work_dir=DIR] [--seed=0] [--fast]

Pretrains a small CNN on generated source images (48 classes of coloured,
textured shapes), saves it as a TF Hub image feature vector, fine-tunes it
with `tfhub_ft.FineTuner` on a different generated target task from a few
images per class, compares with the same network trained from scratch on
the same budget, then exports, reloads and predicts. No network, no data on
disk. See `tfhub_ft.demo.quickstart.run_quickstart` for the details.
"""

import logging
import os
import sys
import tempfile

from absl import app, flags

try:
    from tfhub_ft import cli
except ImportError:  # Run from a checkout without `pip install -e .`.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tfhub_ft import cli

# Before anything imports TensorFlow: its start-up lines, as the command hides them.
cli.import_tensorflow_quietly(verbosity=0)

from tfhub_ft.demo import quickstart  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("work_dir", None, "Folder for the backbones and the export "
                    "(default: a new temporary folder).")
flags.DEFINE_integer("seed", 0, "Seed of the images, weights and shuffling.")
flags.DEFINE_bool("fast", False, "A smaller pretraining run: "
                  f"{quickstart.PRESETS['fast']}.")


def _progress_only(record):
    return record.levelno >= logging.WARNING or record.name.startswith("tfhub_ft")


class _PlainFormatter(logging.Formatter):
    """The message alone; warnings and errors with their level in front."""

    def format(self, record):
        message = super().format(record)
        return f"{record.levelname}: {message}" if record.levelno >= logging.WARNING else message


def main(argv):
    del argv
    # Keep tfhub_ft's progress lines as plain lines, hide TensorFlow's INFO
    # chatter: one filtered handler in place of absl's (whose lines carry a
    # date, thread id and source line), and the level of TensorFlow's own
    # logger (it has a handler).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("%(message)s"))
    handler.addFilter(_progress_only)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="tfhub_ft_quickstart_")
    config = quickstart.QuickstartConfig.from_preset(
        "fast" if FLAGS.fast else "default", seed=FLAGS.seed)
    result = quickstart.run_quickstart(work_dir, config)

    chance = 1.0 / len(result.class_names)
    print(f"\nPretrained backbone: {result.source_accuracy:.1%} held-out accuracy "
          f"on the source task ({result.pretrain_seconds:.0f} s)")
    print(f"Target task, {len(result.class_names)} new classes, "
          f"{config.train_images_per_class} training images each (chance {chance:.1%}):")
    print(f"  fine-tuned from the pretrained module: {result.fine_tuned_test_accuracy:.1%} "
          f"test, {result.fine_tuned_accuracy:.1%} validation ({result.fine_tune_seconds:.0f} s)")
    print(f"  same network from scratch:             {result.scratch_test_accuracy:.1%} "
          f"test, {result.scratch_accuracy:.1%} validation ({result.scratch_seconds:.0f} s)")
    print(f"  transfer gain: {result.transfer_gain * 100:+.1f} points of test accuracy")
    print(f"Exported to {result.export_dir}; reloaded with tf.saved_model.load: "
          f"{result.exported_test_accuracy:.1%} test accuracy from PNG bytes")
    for prediction in result.predictions:
        mark = "ok" if prediction.true_label == prediction.predicted_label else "--"
        print(f"  [{mark}] {prediction.true_label:<28} -> {prediction.predicted_label} "
              f"({prediction.probability:.0%})")
    print(f"Total {result.total_seconds:.0f} s")


if __name__ == "__main__":
    app.run(main)

"""Validation accuracy and wall time of recipe variants on the real data.

The images are decoded once and shared by every variant; each variant loads
a fresh backbone. Used to choose `FineTuneConfig`'s defaults (BUILD_NOTES.md).

    python benchmarks/recipe_sweep.py [--variants='unfreeze_blocks=2;head_epochs=5']
"""

from absl import app, flags, logging

import common
import tfhub_ft

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_string(
    "variants",
    "default;fine_tune_epochs=0;unfreeze_blocks=2;unfreeze_blocks=8;"
    "fine_tune_learning_rate=3e-4;augmentation=;label_smoothing=0",
    "Semicolon-separated variants, each comma-free `name=value` pairs joined by '&'.")


def parse(variant):
    changes = {}
    for pair in filter(None, variant.split("&")):
        if pair == "default":
            continue
        name, value = pair.split("=")
        default = getattr(tfhub_ft.FineTuneConfig(), name)
        changes[name] = value if isinstance(default, (str, tuple)) else type(default)(float(value))
    return changes


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    probe = tfhub_ft.FineTuner(FLAGS.hub_url)
    train, validation = probe.load_data(FLAGS.train_dir, FLAGS.validation_dir)
    rows = []
    for variant in FLAGS.variants.split(";"):
        tuner = tfhub_ft.FineTuner(FLAGS.hub_url, **parse(variant))
        with common.Timer() as timer:
            tuner.fit(train, validation, verbose=0)
        accuracy = tuner.validation_metrics["accuracy"]
        epochs = len(tuner.history["fine_tune"].get("loss", []))  # early stopping may cut
        rows.append((variant, accuracy, timer.seconds, epochs))
        print(f"{variant:40s} val_accuracy={accuracy:.4f} fit_seconds={timer.seconds:.1f} "
              f"fine_tune_epochs_run={epochs}", flush=True)
    print("\n| variant | validation accuracy | fit seconds | fine-tune epochs run |\n"
          "|---|---|---|---|")
    for variant, accuracy, seconds, epochs in rows:
        print(f"| {variant} | {accuracy:.4f} | {seconds:.0f} | {epochs} |")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)

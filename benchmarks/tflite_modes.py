"""Each TFLite mode against the SavedModel, on the shared clothing photos.

    python benchmarks/tflite_modes.py [--hub_url=DIR --train_dir=DIR --validation_dir=DIR]
        [--export_root=/tmp/tflite_modes] [--modes=float32,float16,dynamic,int8]

Trains the default recipe once (or, with --synthetic_width, only the head
of a random-weight MobileNetV2 of that width), exports the SavedModel with
each TFLite mode (`FineTuner.export(..., tflite=mode)`), and prints a
table from each export's tflite_parity.json: top-1 agreement with the
SavedModel on the validation folder, accuracy, file size and latency per
image (one image per call, this machine's CPU: indicative only on a shared
machine). `dynamic` and `int8` get a second row converted without bias
correction (`tflite.convert(..., correct_bias=False)`), what the export did
before it. Exits with the reason when the shared data is absent.
"""

import json
import os
import time

import numpy as np
from absl import app, flags, logging

import common
import tensorflow as tf
import tfhub_ft
from tfhub_ft import tflite

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_string("export_root", "/tmp/tflite_modes", "Where the exports go, one per mode.")
flags.DEFINE_list("modes", list(tflite.TFLITE_MODES), "TFLite modes to export.")
flags.DEFINE_float(
    "synthetic_width", None,
    "Instead of --hub_url, a Keras MobileNetV2 of this width (alpha) with random "
    "weights, saved as a hub module, and only its head trained (one epoch): for the "
    "file sizes of a wider backbone than ../shared holds. Agreement and accuracy "
    "mean nothing then.")


def saved_model_row(export_dir, images, labels):
    """Accuracy, size and batch-1 latency of the SavedModel itself."""
    serve = tf.saved_model.load(export_dir).signatures["serving_images"]
    floats = tf.constant(images, tf.float32) / 255.0
    serve(images=floats[:1])  # first call traces and warms up
    latencies, predictions = [], []
    for row in range(len(images)):
        start = time.perf_counter()
        predictions.append(serve(images=floats[row:row + 1])["class_ids"].numpy()[0])
        latencies.append(time.perf_counter() - start)
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(export_dir) for name in names
               if name not in (tflite.TFLITE_FILE, tflite.PARITY_FILE))
    return {"accuracy": float(np.mean(np.array(predictions) == labels)),
            "bytes": size, "latency_ms": float(np.median(latencies) * 1000)}


def synthetic_module(width, path):
    """A MobileNetV2 of `width` with random weights as a hub feature vector."""
    import keras
    from tfhub_ft.demo import tiny_backbone
    model = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), alpha=width, include_top=False, weights=None,
        pooling="avg")

    @tf.function
    def call(images, training=False):
        return model(images * 2.0 - 1.0, training=training)

    variables = [v.value for v in model.variables]
    trainable = [v.value for v in model.trainable_variables]
    return tiny_backbone.save_feature_vector_function(call, variables, trainable, path)


def main(argv):
    del argv
    common.require(FLAGS.train_dir, FLAGS.validation_dir)
    logging.info("Machine: %s", common.machine())
    if FLAGS.synthetic_width:
        hub_url = synthetic_module(FLAGS.synthetic_width,
                                   os.path.join(FLAGS.export_root, "synthetic_module"))
        tuner = tfhub_ft.FineTuner(hub_url, head_epochs=1, fine_tune_epochs=0)
    else:
        common.require(FLAGS.hub_url)
        tuner = tfhub_ft.FineTuner(FLAGS.hub_url)
    with common.Timer() as timer:
        tuner.fit(FLAGS.train_dir, FLAGS.validation_dir, verbose=0)
    logging.info("Trained in %.0f s, validation accuracy %.4f",
                 timer.seconds, tuner.validation_metrics["accuracy"])
    reports = {}
    for mode in FLAGS.modes:
        export_dir = os.path.join(FLAGS.export_root, mode)
        with common.Timer() as timer:
            tuner.export(export_dir, tflite=mode)
        with open(os.path.join(export_dir, tflite.PARITY_FILE)) as f:
            reports[mode] = json.load(f)
        logging.info("%s: exported and checked in %.0f s", mode, timer.seconds)
    images, labels = tuner._parity_data
    for mode in [m for m in FLAGS.modes if m in ("dynamic", "int8")]:
        contents = tflite.convert(tuner.model, tuner.image_size, mode,
                                  tuner._representative_images, correct_bias=False)
        reports[f"{mode}, no bias correction"] = tflite.parity_report(
            contents, os.path.join(FLAGS.export_root, mode), images, labels, mode)
    reference = saved_model_row(os.path.join(FLAGS.export_root, FLAGS.modes[0]), images, labels)
    float32_bytes = reports.get("float32", {}).get("tflite_bytes")
    print(f"Machine: {common.machine()}; {len(labels)} validation images")
    print("| model | top-1 agreement with SavedModel | changed (near ties) | accuracy | "
          "largest probability difference | size | vs float32 | latency per image |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| SavedModel | - | - | {reference['accuracy']:.4f} | - | "
          f"{reference['bytes'] / 2**20:.2f} MB | - | {reference['latency_ms']:.2f} ms |")
    for mode, report in reports.items():
        ratio = (f"{float32_bytes / report['tflite_bytes']:.2f}x smaller"
                 if float32_bytes else "-")
        print(f"| TFLite {mode} | {report['top1_agreement']:.4f} | "
              f"{report['changed_images']} ({report['changed_near_ties']}) | "
              f"{report['tflite_accuracy']:.4f} | {report['max_probability_difference']:.4f} | "
              f"{report['tflite_bytes'] / 2**20:.2f} MB | {ratio} | "
              f"{report['tflite_latency_ms']:.2f} ms |")


if __name__ == "__main__":
    app.run(main)

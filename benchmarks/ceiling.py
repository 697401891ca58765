"""How far the backbone goes on one dataset when time does not matter.

Issue 10 asks `--preset=thorough` for 10 points over the old tool's
accuracy. This measures whether any time buys them: the default fit, then
`--epochs` more epochs through the whole backbone (nothing cached) with
online augmentation the cached recipe cannot have (random resized crop,
area 0.5-1, aspect 3/4-4/3, and a random flip), the top `--blocks` blocks
trainable, Adam on a cosine from `--learning_rate`, label smoothing 0.1.
The old tool's recipe (benchmarks/old_tool.py) runs first, in the same
run, for the target. Prints the validation accuracy after every epoch.

    python benchmarks/ceiling.py [--blocks=19 --epochs=8 --learning_rate=3e-4]
"""

import subprocess
import tempfile

from absl import app, flags, logging

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_integer("blocks", 19, "Top blocks trained after the default fit (19: all of "
                     "the shared MobileNetV2's).")
flags.DEFINE_integer("epochs", 8, "Epochs after the default fit.")
flags.DEFINE_float("learning_rate", 3e-4, "Start of the cosine.")
flags.DEFINE_integer("image_size", None, "Training image size (None: the library's choice).")
flags.DEFINE_bool("old_tool", True, "Run the old tool's recipe first, for the target.")


def old_tool_accuracy():
    with tempfile.TemporaryDirectory() as export_dir:
        output = subprocess.run(
            common.old_tool_command(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir,
                                    export_dir),
            check=True, capture_output=True, text=True).stdout
    return float(common.ACCURACY.findall(output)[-1])


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    old = old_tool_accuracy() if FLAGS.old_tool else None
    if old is not None:
        print(f"old tool: {old:.4f}; +10 points: {old + 0.10:.4f}", flush=True)

    # Imported after the old tool has run: importing tfhub_ft sets
    # TF_CPU_ALLOCATOR_USE_BFC, which the old tool's process would inherit
    # (it runs with TensorFlow's own allocator, as its users ran it).
    import numpy as np
    import tensorflow as tf
    import keras
    import tfhub_ft

    tuner = tfhub_ft.FineTuner(FLAGS.hub_url, image_size=FLAGS.image_size)
    train, validation = tuner.load_data(FLAGS.train_dir, FLAGS.validation_dir)
    with common.Timer() as timer:
        tuner.fit(train, validation, verbose=0)
    rows = [("default fit", tuner.validation_metrics["accuracy"], timer.seconds)]
    print(f"{rows[0][0]}: {rows[0][1]:.4f} ({rows[0][2]:.0f} s)", flush=True)

    model = tuner.model
    model.backbone.unfreeze_top_blocks(FLAGS.blocks)
    size = model.image_size
    classes = len(train.class_names)

    def augment(image, label):
        image = tf.image.convert_image_dtype(image, tf.float32)
        begin, crop, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([0, 0, 4]), min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.5, 1.0),
            use_image_if_no_bounding_boxes=True, seed=0)
        image = tf.image.resize(tf.slice(image, begin, crop), (size, size), antialias=True)
        return tf.image.random_flip_left_right(image, seed=0), tf.one_hot(label, classes)

    images, labels = np.asarray(train.images), np.asarray(train.labels)
    batches = (tf.data.Dataset.from_tensor_slices((images, labels))
               .shuffle(len(labels), seed=0).map(augment, num_parallel_calls=2)
               .batch(tuner.config.batch_size).prefetch(2))
    steps = FLAGS.epochs * len(batches)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, steps)),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=tuner.config.label_smoothing))
    validation_images = np.asarray(validation.images)
    for epoch in range(1, FLAGS.epochs + 1):
        with common.Timer() as epoch_timer:
            model.fit(batches, epochs=1, shuffle=False, verbose=0)  # shuffled above
        predicted = model.predict(validation_images, batch_size=64, verbose=0).argmax(-1)
        accuracy = float(np.mean(predicted == np.asarray(validation.labels)))
        seconds = rows[-1][2] + epoch_timer.seconds
        rows.append((f"+ {epoch} epoch(s), {FLAGS.blocks} blocks, crop and flip",
                     accuracy, seconds))
        print(f"{rows[-1][0]}: {accuracy:.4f} ({seconds:.0f} s)", flush=True)

    print(f"\n{common.machine()}\n\n| stage | validation accuracy | points over the old tool "
          "| fit seconds |\n|---|---|---|---|")
    for name, accuracy, seconds in rows:
        over = f"{100 * (accuracy - old):+.1f}" if old is not None else "-"
        print(f"| {name} | {accuracy:.4f} | {over} | {seconds:.0f} |")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)

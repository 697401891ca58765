"""TF Hub's make_image_classifier recipe (removed in 2023), run as it ran.

The baseline of benchmarks/frontier.py: Keras 2 (`tf_keras`), a frozen
`hub.KerasLayer`, Dropout 0.2, a softmax Dense head with L2 1e-4, SGD 0.005
with momentum 0.9, label smoothing 0.1, batch 32, 5 epochs, 224 px, no
augmentation, 20% of the training folder held out by `ImageDataGenerator`
for its validation, the backbone run on every batch of every epoch; then the
SavedModel is written, as the tool did. Accuracy is measured afterwards on a
real validation folder (not the held-out 20%).

    python benchmarks/old_tool.py --image_dir=... --validation_dir=... --export_dir=/tmp/old
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tensorflow_hub's KerasLayer is Keras 2 only

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", None, "Backbone folder or handle.")
flags.DEFINE_string("image_dir", None, "Training image folder (one subfolder per class).")
flags.DEFINE_string("validation_dir", None, "Real validation folder, scored after training.")
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes.")
flags.DEFINE_integer("image_size", 224, "The tool's default.")
flags.DEFINE_integer("epochs", 5, "The tool's default.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer's INFO lines
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    size = (FLAGS.image_size, FLAGS.image_size)
    generator = tf_keras.preprocessing.image.ImageDataGenerator(
        rescale=1.0 / 255, validation_split=0.2)
    flow = dict(target_size=size, batch_size=32, interpolation="bilinear")
    held_out = generator.flow_from_directory(FLAGS.image_dir, subset="validation",
                                             shuffle=False, **flow)
    train = generator.flow_from_directory(FLAGS.image_dir, subset="training",
                                          shuffle=True, **flow)
    model = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=size + (3,)),
        hub.KerasLayer(FLAGS.hub_url, trainable=False),
        tf_keras.layers.Dropout(rate=0.2),
        tf_keras.layers.Dense(train.num_classes, activation="softmax",
                              kernel_regularizer=tf_keras.regularizers.l2(0.0001)),
    ])
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=0.005, momentum=0.9),
        loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"])
    model.fit(train, epochs=FLAGS.epochs, steps_per_epoch=train.samples // train.batch_size,
              validation_data=held_out,
              validation_steps=held_out.samples // held_out.batch_size, verbose=2)
    tf.saved_model.save(model, FLAGS.export_dir)
    real = tf_keras.preprocessing.image.ImageDataGenerator(rescale=1.0 / 255)
    validation = real.flow_from_directory(FLAGS.validation_dir, shuffle=False, **flow)
    if validation.class_indices != train.class_indices:
        sys.exit("The validation folder's classes differ from the training folder's.")
    _, accuracy = model.evaluate(validation, verbose=0)
    print(f"validation_accuracy={accuracy:.4f} images={validation.samples}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["hub_url", "image_dir", "validation_dir", "export_dir"])
    app.run(main)

"""Speed of tfhub_ft against the old recipe, side by side in one run.

    python benchmarks/speed.py [--hub_url=DIR --train_dir=DIR --validation_dir=DIR]
        [--sections=frozen,split,overhead,recipe,decode]

Prints, from one process on one machine (ratios, as these machines are
noisy):
  frozen    the frozen phase: backbone forward every epoch (the old
            make_image_classifier recipe) against cached features, same head,
            same epochs: seconds, ratio, validation accuracy of each;
  split     fine-tune epochs with and without the split backbone at
            unfreeze_blocks 1, 2, 4, 8: seconds per epoch and ratio;
  overhead  images/s of a tfhub_ft fine-tune step against a hand-written
            Keras 3 keras.applications.MobileNetV2(alpha=0.35) carrying the
            same weights;
  recipe    the whole default recipe on the folders: wall time, accuracy;
  decode    JPEG decoding at reduced scale (`decode_image`'s `ratio`) against
            full size, on validation photos enlarged to a phone camera's
            size (`--photo_side`): milliseconds per photo, and how far the
            224-px images and the backbone's features move (not in the
            default sections: the shared photos are too small for it).
Images are decoded once up front for every section but `recipe` (which
times the whole command's work, decoding included).
"""

import io
import time

import numpy as np
from absl import app, flags, logging

import common
import keras
import tensorflow as tf
import tfhub_ft
from tfhub_ft import arrays, cache, data, preprocessing, recipe
from tfhub_ft.model import build_classifier

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_list("sections", ["frozen", "split", "overhead", "recipe"], "What to measure.")
flags.DEFINE_integer("head_epochs", 10, "Epochs of the frozen-phase comparison.")
flags.DEFINE_integer("steps", 30, "Timed steps per configuration (split, overhead).")
flags.DEFINE_integer("photo_side", 3024, "Short side of the enlarged photos (decode); "
                     "3024 is a 12-megapixel phone photo's.")
flags.DEFINE_integer("photos", 60, "Validation photos enlarged (decode).")


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = getattr(self, "seconds", []) + [time.perf_counter() - self._start]


def files_dataset(directory, batch_size, shuffle):
    """Decodes the JPEGs every epoch, as make_image_classifier's reader did."""
    paths, labels, class_names = data.list_image_folder(directory)
    depth = len(class_names)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=0)
    return (dataset.map(lambda path, label: (
                preprocessing.decode_and_resize(tf.io.read_file(path), 224),
                tf.one_hot(label, depth)), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def frozen_phase(train, validation, decode_seconds):
    """The old recipe (forward every epoch) vs cached features, same head."""
    config = tfhub_ft.FineTuneConfig(head_epochs=FLAGS.head_epochs, fine_tune_epochs=0,
                                     augmentation=())
    classes = len(train.class_names)
    results = {}

    def old_recipe(train_data, validation_data):
        keras.utils.set_random_seed(0)
        model = build_classifier(tfhub_ft.HubBackbone(FLAGS.hub_url), classes, 224,
                                 config.dropout_rate, (), 0)
        model.backbone.freeze_all()
        model.compile(keras.optimizers.Adam(config.head_learning_rate),
                      recipe.classification_loss(config), metrics=["accuracy"])
        with common.Timer() as timer:
            history = model.fit(train_data, validation_data=validation_data,
                                epochs=config.head_epochs, verbose=0)
        return timer.seconds, history.history["val_accuracy"][-1]

    results["old recipe: decode + forward every epoch (files)"] = old_recipe(
        files_dataset(FLAGS.train_dir, config.batch_size, True),
        files_dataset(FLAGS.validation_dir, config.batch_size, False))
    results["old recipe: forward every epoch (decoded images)"] = old_recipe(
        train.to_dataset(config.batch_size, shuffle=True), validation.to_dataset(config.batch_size))

    keras.utils.set_random_seed(0)
    model = build_classifier(tfhub_ft.HubBackbone(FLAGS.hub_url), classes, 224,
                             config.dropout_rate, (), 0)
    model.backbone.freeze_all()
    with common.Timer() as timer:
        frozen = cache.compute_frozen_activations(model, train, validation, config,
                                                  arrays.ArrayBudget())
        history = recipe.train_head(model, frozen, train, validation, config, verbose=0)
    results["tfhub_ft: features cached once (decoded images)"] = (
        timer.seconds, history["val_accuracy"][-1])
    results["tfhub_ft: decode once + features cached once (files)"] = (
        timer.seconds + decode_seconds, history["val_accuracy"][-1])

    (from_files, _), (decoded, _), (ours, _), (ours_from_files, _) = results.values()
    print(f"\n## Frozen phase, {config.head_epochs} head epochs, {len(train)} images\n")
    print("| recipe | seconds | validation accuracy |\n|---|---|---|")
    for name, (seconds, accuracy) in results.items():
        print(f"| {name} | {seconds:.1f} | {accuracy:.4f} |")
    print(f"\nfrozen phase speed-up, same decoded images: {decoded / ours:.1f}x")
    print(f"frozen phase speed-up, from the files: {from_files / ours_from_files:.1f}x",
          flush=True)


def split_epochs(train, validation):
    """Seconds per fine-tune epoch, with and without the split backbone."""
    print("\n## Fine-tune epoch, whole forward pass vs split backbone\n")
    print("| unfreeze_blocks | whole (s/epoch) | split (s/epoch) | speed-up |\n|---|---|---|---|")
    classes = len(train.class_names)
    for count in (1, 2, 4, 8):
        config = tfhub_ft.FineTuneConfig(unfreeze_blocks=count, fine_tune_epochs=3,
                                         head_epochs=0, augmentation=())
        seconds = {}
        for split in (False, True):
            keras.utils.set_random_seed(0)
            model = build_classifier(tfhub_ft.HubBackbone(FLAGS.hub_url), classes, 224,
                                     config.dropout_rate, (), 0)
            model.backbone.freeze_all()
            frozen = cache.compute_frozen_activations(
                model, train, validation, config, arrays.ArrayBudget(),
                recipe.plan_fine_tune(model.backbone, config).split if split else None)
            model.backbone.unfreeze_top_blocks(count)
            timer = EpochTimer()
            recipe.fine_tune(model, frozen, train, validation,
                             config.replace(early_stopping_patience=10), verbose=0,
                             callbacks=[timer])
            # The first epoch also traces the step functions.
            seconds[split] = float(np.median(timer.seconds[1:]))
        print(f"| {count} | {seconds[False]:.2f} | {seconds[True]:.2f} | "
              f"{seconds[False] / seconds[True]:.1f}x |", flush=True)


def overhead(train):
    """Fine-tune step images/s: HubBackbone vs keras.applications MobileNetV2."""
    count, batch = 4, 32
    images = arrays.take(train.images, np.arange(batch))
    labels = keras.ops.one_hot(train.labels[:batch], len(train.class_names))
    config = tfhub_ft.FineTuneConfig()

    keras.utils.set_random_seed(0)
    ours = build_classifier(tfhub_ft.HubBackbone(FLAGS.hub_url), len(train.class_names), 224)
    ours.backbone.freeze_all()
    ours.backbone.unfreeze_top_blocks(count)
    trainable_names = {w.name for w in ours.backbone.trainable_weights}

    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, pooling="avg",
                                          weights=None, input_shape=(224, 224, 3))
    for target, source in zip(base.weights, ours.backbone.module.variables):
        if tuple(target.shape) != tuple(source.shape):
            raise SystemExit(f"Weight mismatch: {target.path} vs {source.name}")
        target.assign(source)
        target.trainable = source.name.split(":")[0].replace("/", "_") in trainable_names
    inputs = keras.Input((224, 224, 3), dtype="uint8")
    x = keras.layers.Rescaling(2 / 255.0, offset=-1)(inputs)
    x = base(x, training=False)
    x = keras.layers.Dropout(config.dropout_rate)(x)
    hand = keras.Model(inputs, keras.layers.Dense(len(train.class_names))(x))
    results = {}
    for name, model in (("tfhub_ft HubBackbone", ours), ("keras.applications MobileNetV2", hand)):
        model.compile(keras.optimizers.AdamW(1e-4), recipe.classification_loss(config))
        model.train_on_batch(images, labels)
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(FLAGS.steps // 3):
                model.train_on_batch(images, labels)
            rates.append(batch * (FLAGS.steps // 3) / (time.perf_counter() - start))
        results[name] = max(rates)
    ours_rate, hand_rate = results.values()
    print(f"\n## Wrapper overhead, fine-tune step, unfreeze_blocks={count}, batch {batch}\n")
    print("| model | images/s |\n|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.0f} |")
    print(f"\ntfhub_ft / hand-written: {ours_rate / hand_rate:.3f}", flush=True)


def reduced_scale_decoding():
    """Decode time and fidelity of JPEGs decoded at reduced scale."""
    from PIL import Image
    paths = data.list_image_folder(FLAGS.validation_dir)[0]
    paths = paths[::max(1, len(paths) // FLAGS.photos)][:FLAGS.photos]  # every class
    encoded = []
    for path in paths:
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
            scale = FLAGS.photo_side / min(photo.size)
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                                 Image.BICUBIC)
            buffer = io.BytesIO()
            photo.save(buffer, "JPEG", quality=90)
            encoded.append(tf.constant(buffer.getvalue()))
    size = 224
    # image_size=None in `decode_image` turns the reduced scale off.
    decoders = {
        "full size": tf.function(lambda e: preprocessing.resize_images(
            preprocessing.decode_image(e, None), size)),
        "reduced scale (the library's)": tf.function(
            lambda e: preprocessing.decode_and_resize(e, size)),
    }
    images, milliseconds = {}, {}
    for name, decode in decoders.items():
        decode(encoded[0])  # trace
        start = time.perf_counter()
        images[name] = np.stack([decode(e).numpy() for e in encoded])
        milliseconds[name] = 1000 * (time.perf_counter() - start) / len(encoded)
    full, reduced = images.values()
    backbone = tfhub_ft.HubBackbone(FLAGS.hub_url)
    features = [backbone(x.astype(np.float32) / 255).numpy() for x in (full, reduced)]
    cosine = np.sum(features[0] * features[1], -1) / (
        np.linalg.norm(features[0], axis=-1) * np.linalg.norm(features[1], axis=-1))
    print(f"\n## JPEG decoding at reduced scale, {len(encoded)} validation photos enlarged to "
          f"a {FLAGS.photo_side}-px short side (JPEG quality 90), resized to {size} px\n")
    print("| decode | ms per photo |\n|---|---|")
    for name, ms in milliseconds.items():
        print(f"| {name} | {ms:.1f} |")
    difference = np.abs(full.astype(np.int16) - reduced.astype(np.int16))
    print(f"\nfull / reduced: {milliseconds['full size'] / milliseconds[list(decoders)[1]]:.1f}x; "
          f"224-px images differ by {difference.mean():.2f} on average (0-255; largest "
          f"{difference.max()}); backbone features' cosine similarity: mean "
          f"{cosine.mean():.5f}, lowest {cosine.min():.5f}", flush=True)


def whole_recipe():
    with common.Timer() as timer:
        tuner = tfhub_ft.FineTuner(FLAGS.hub_url)
        tuner.fit(FLAGS.train_dir, FLAGS.validation_dir, verbose=0)
    print("\n## Default recipe, folders to trained model (decoding included)\n")
    print(f"wall seconds: {timer.seconds:.1f}\nvalidation accuracy: "
          f"{tuner.validation_metrics['accuracy']:.4f} on {tuner.validation_metrics['count']} "
          "images", flush=True)


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    print(f"machine: {common.machine()}")
    if set(FLAGS.sections) - {"recipe", "decode"}:
        probe = tfhub_ft.FineTuner(FLAGS.hub_url)
        with common.Timer() as decode:
            train, validation = probe.load_data(FLAGS.train_dir, FLAGS.validation_dir)
    if "frozen" in FLAGS.sections:
        frozen_phase(train, validation, decode.seconds)
    if "split" in FLAGS.sections:
        split_epochs(train, validation)
    if "overhead" in FLAGS.sections:
        overhead(train)
    if "recipe" in FLAGS.sections:
        whole_recipe()
    if "decode" in FLAGS.sections:
        reduced_scale_decoding()


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    app.run(main)

"""Measurements behind issue 9's data checks, on the shared clothing photos.

    python benchmarks/data_checks.py [--sections=duplicates,class_weight]

duplicates    cosine similarity of frozen features (the default backbone
              pass): each validation image against its most similar training
              image, for the real validation folder and for a 20% split
              carved from the training folder, and for made near-duplicates
              (a validation image re-encoded at JPEG quality 60 after a 90%
              centre crop) against their originals; counts above thresholds.
class_weight  the default recipe with class_weight "none" and "balanced":
              validation accuracy and macro-averaged recall.
"""

import numpy as np
from absl import app, flags, logging

import common
import tensorflow as tf
import tfhub_ft
from tfhub_ft import data, duplicates, preprocessing
from tfhub_ft.backbone import HubBackbone

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_list("sections", ["duplicates", "class_weight"], "What to measure.")

THRESHOLDS = (0.9, 0.95, 0.97, 0.98, 0.99)


def features(backbone, images):
    out = []
    for start in range(0, len(images), 64):
        batch = preprocessing.to_unit_range(tf.constant(images[start:start + 64]))
        out.append(backbone(batch).numpy())
    return np.concatenate(out)


def best_similarity(train, validation):
    found = duplicates.find_near_duplicates(train, validation, -1.0)
    return np.array([d.similarity for d in found])


def report(name, similarity):
    counts = ", ".join(f">={t}: {int((similarity >= t).sum())}" for t in THRESHOLDS)
    print(f"{name}: n={len(similarity)} median {np.median(similarity):.3f} "
          f"p95 {np.percentile(similarity, 95):.3f} p99 {np.percentile(similarity, 99):.3f} "
          f"max {similarity.max():.3f} min {similarity.min():.3f}; {counts}")


def measure_duplicates():
    backbone = HubBackbone(FLAGS.hub_url)
    train = data.load_images(FLAGS.train_dir, 224)
    validation = data.load_images(FLAGS.validation_dir, 224)
    train_features = features(backbone, train.images)
    validation_features = features(backbone, validation.images)
    report("validation folder vs training folder",
           best_similarity(train_features, validation_features))
    fit_rows, held_rows = data.stratified_split(train.labels, 0.2, seed=0)
    report("20% split of the training folder vs the other 80%",
           best_similarity(train_features[fit_rows], train_features[held_rows]))
    for name, crop, scale, quality in [("80% size, JPEG q75", 1.0, 0.8, 75),
                                       ("90% crop, JPEG q60", 0.9, 1.0, 60)]:
        copies = []
        for path in validation.paths[:200]:
            image = preprocessing.decode_image(tf.io.read_file(path))
            image = tf.image.central_crop(image, crop)
            size = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
            image = tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8)
            image = tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality))
            copies.append(preprocessing.resize_images(image, 224).numpy())
        copy_features = features(backbone, np.stack(copies))
        originals = validation_features[:200]
        cosine = np.sum(originals * copy_features, 1) / (
            np.linalg.norm(originals, axis=1) * np.linalg.norm(copy_features, axis=1))
        report(f"made near-duplicates ({name}) vs their originals", cosine)


def macro_recall(tuner, folder):
    image_set = data.load_images(folder, tuner.image_size)
    predicted = tuner.predict(image_set.images).argmax(-1)
    recalls = [np.mean(predicted[image_set.labels == c] == c)
               for c in range(len(image_set.class_names))]
    return float(np.mean(predicted == image_set.labels)), float(np.mean(recalls)), recalls


def measure_class_weight():
    for class_weight in ("none", "balanced"):
        tuner = tfhub_ft.FineTuner(FLAGS.hub_url, class_weight=class_weight)
        tuner.fit(FLAGS.train_dir, FLAGS.validation_dir, verbose=0)
        accuracy, recall, recalls = macro_recall(tuner, FLAGS.validation_dir)
        print(f"class_weight={class_weight}: accuracy {accuracy:.4f}, macro recall "
              f"{recall:.4f}, per class {[round(float(r), 3) for r in recalls]}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    if "duplicates" in FLAGS.sections:
        measure_duplicates()
    if "class_weight" in FLAGS.sections:
        measure_class_weight()


if __name__ == "__main__":
    app.run(main)

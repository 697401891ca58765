"""Scoring an export on an image folder, from the SavedModel alone.

Only what a server has is used: `tf.saved_model.load`, the
`serving_default` signature (encoded image bytes in, probabilities out) and
labels.txt. No tfhub_ft model code runs, so the numbers are the served
model's.
"""

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)


def evaluate_export(export_dir, image_dir, batch_size=32):
    """Accuracy, loss and per-class metrics of an export on an image folder.

    Args:
        export_dir: Folder written by `export.export_saved_model`.
        image_dir: One subfolder per class; every subfolder name must be
            one of the export's labels (a subset is fine).
        batch_size: Files per call of the model (>= 1).

    Returns:
        A dict: "accuracy" in [0, 1], "loss" (mean cross-entropy), "count"
        (images scored), "per_class" (`report.per_class_metrics` rows),
        "confusion_matrix" int [C, C], "class_names" (the export's),
        "labels" int [N], "probabilities" float32 [N, C], "paths" [N],
        "skipped" (files that could not be decoded).

    Raises:
        ValueError: if the export has no labels.txt or serving signature,
            the folder has a class the export does not know, or no image
            could be decoded.
    """
    import tensorflow as tf

    from tfhub_ft import checks
    from tfhub_ft import data, export, image_files, predict, report

    batch_size = checks.check_integer("batch_size", batch_size, 1)
    try:
        class_names = export.read_labels(export_dir)
    except OSError as error:
        raise ValueError(
            f"Invalid value for `model`. Expected an export folder with {export.LABELS_FILE}. "
            f"Received: {export_dir!r} ({error.strerror}).") from error
    paths, folder_labels, folder_classes = data.list_image_folder(image_dir)
    unknown = sorted(set(folder_classes) - set(class_names))
    if unknown:
        raise ValueError(
            f"The image folder {image_dir!r} has class(es) {unknown} that the model does "
            f"not know ({class_names}). Use class folders named after its labels.")
    mapping = np.asarray([class_names.index(name) for name in folder_classes], np.int64)
    labels = mapping[folder_labels]
    try:
        serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    except (OSError, KeyError, tf.errors.OpError) as error:
        raise ValueError(
            f"Invalid value for `model`. Expected a SavedModel with a `serving_default` "
            f"signature. Received: {export_dir!r} ({error}).") from error
    probabilities, kept, skipped, reasons = [], [], [], []
    for start in range(0, len(paths), batch_size):
        chunk = list(range(start, min(start + batch_size, len(paths))))
        try:
            probabilities.append(_serve(serve, [paths[i] for i in chunk]))
            kept.extend(chunk)
        except tf.errors.InvalidArgumentError:
            # One broken file fails its batch: score the batch file by file.
            for index in chunk:
                try:
                    probabilities.append(_serve(serve, [paths[index]]))
                    kept.append(index)
                except tf.errors.InvalidArgumentError as error:
                    skipped.append(paths[index])
                    # As training's file check and predict say it.
                    reasons.append(image_files.EMPTY_FILE if os.path.getsize(paths[index]) == 0
                                   else predict.error_text(error))
    if skipped:
        logger.warning("Skipped %d file(s) that could not be decoded as images: %s",
                       len(skipped), image_files.listing(
                           (f"{image_files.display_path(path)} ({reason})"
                            for path, reason in zip(skipped, reasons)), "files skipped"))
    if not kept:
        raise ValueError(f"No image in {image_dir!r} could be decoded.")
    probabilities = np.concatenate(probabilities).astype(np.float32)
    labels = labels[kept]
    predictions = probabilities.argmax(-1)
    chosen = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": float(-np.mean(np.log(chosen))),
        "count": int(len(labels)),
        "per_class": report.per_class_metrics(labels, predictions, class_names),
        "confusion_matrix": report.confusion_matrix(labels, predictions, len(class_names)),
        "class_names": class_names,
        "labels": labels,
        "probabilities": probabilities,
        "paths": [paths[i] for i in kept],
        "skipped": skipped,
    }


def _serve(serve, paths):
    import tensorflow as tf

    contents = [tf.io.read_file(path) for path in paths]
    return serve(image_bytes=tf.stack(contents))["probabilities"].numpy()


def write_evaluation_report(result, report_dir, image_size=160):
    """Writes `evaluate_export`'s result as report files into `report_dir`.

    confusion_matrix.png/.csv, per_class.csv, mistakes.png (the images
    decoded again at `image_size`) and .csv, and summary.json.

    Returns:
        {file name: path}.
    """
    from tfhub_ft import data, report

    indices = report.most_confident_mistakes(result["labels"], result["probabilities"])
    if len(indices):
        images, _, _ = data.decode_files([result["paths"][i] for i in indices], image_size)
    else:
        images = np.zeros((0, image_size, image_size, 3), np.uint8)
    return report.write_report(
        report_dir, result["class_names"], result["labels"], result["probabilities"],
        mistake_images=images, mistake_indices=indices,
        summary={"skipped_files": result["skipped"],
                 "validation_metrics": {"loss": result["loss"]}},
        paths=result["paths"])

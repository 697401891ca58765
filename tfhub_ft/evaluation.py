"""Scoring an export on an image folder, from the export alone.

Only what a server or a phone has is used, through `predict`'s loaders:
the SavedModel's `serving_default` signature (encoded image bytes in,
probabilities out) or a .tflite file in `tf.lite.Interpreter` (images
resized as its callers resize them), and labels.txt. No tfhub_ft model code
runs, so the numbers are the shipped model's.
"""

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)


def evaluate_export(model, image_dir, batch_size=32):
    """Accuracy, loss and per-class metrics of an export on an image folder.

    Args:
        model: Export folder written by `FineTuner.export` (SavedModel and
            labels.txt), or a .tflite file beside its labels.txt.
        image_dir: One subfolder per class; every subfolder name must be
            one of the export's labels (a subset is fine, one class too).
        batch_size: Files per call of the model (>= 1; a .tflite model
            still runs one image at a time).

    Returns:
        A dict: "accuracy" in [0, 1], "loss" (mean cross-entropy, nats),
        "count" (images scored), "per_class" (`report.per_class_metrics`
        rows), "confusion_matrix" int [C, C], "class_names" (the export's),
        "labels" int [N], "probabilities" float32 [N, C], "paths" [N],
        "skipped" (files that could not be read or decoded; each is logged
        with its reason), "model" and "image_dir" (absolute paths),
        "image_size" (the side the model takes, in pixels; None for an
        export without decoding.json).

    Raises:
        ValueError: if `model` is not an export (`predict.load_classifier`),
            the folder has a class the export does not know, or no image
            could be decoded.
    """
    from tfhub_ft import checks
    from tfhub_ft import data, image_files, predict, report

    batch_size = checks.check_integer("batch_size", batch_size, 1)
    # The folder first: listing it takes milliseconds, loading the model seconds.
    paths, folder_labels, folder_classes = data.list_image_folder(image_dir, min_classes=1)
    classifier, class_names = predict.load_classifier(model)
    unknown = sorted(set(folder_classes) - set(class_names))
    if unknown:
        raise ValueError(
            f"The image folder {image_dir!r} has class(es) {unknown} that the model does "
            f"not know ({class_names}). Use class folders named after its labels.")
    mapping = np.asarray([class_names.index(name) for name in folder_classes], np.int64)
    labels = mapping[folder_labels]
    scored = predict.score_files(classifier, paths, batch_size)
    kept = [index for index, (probabilities, _) in enumerate(scored)
            if probabilities is not None]
    skipped = [(paths[index], error) for index, (probabilities, error) in enumerate(scored)
               if probabilities is None]
    if skipped:
        logger.warning("Skipped %d file(s) that could not be read or decoded as images: %s",
                       len(skipped), image_files.listing(
                           (f"{image_files.display_path(path)} ({reason})"
                            for path, reason in skipped), "files skipped"))
    if not kept:
        raise ValueError(f"No image in {image_dir!r} could be decoded.")
    probabilities = np.stack([scored[index][0] for index in kept]).astype(np.float32)
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
        "skipped": [path for path, _ in skipped],
        "model": os.path.abspath(model),
        "image_dir": os.path.abspath(image_dir),
        "image_size": classifier.image_size,
    }


def write_evaluation_report(result, report_dir, image_size=None):
    """Writes `evaluate_export`'s result as report files into `report_dir`.

    confusion_matrix.png/.csv, per_class.csv, mistakes.png (the images
    decoded again at `image_size`) and .csv, and summary.json; the plots
    are titled with the image folder's name.

    Args:
        result: What `evaluate_export` returned.
        report_dir: Folder, created if needed.
        image_size: Side in pixels of the images in mistakes.png; None: the
            model's (`result["image_size"]`), else 224.

    Returns:
        {file name: path}.
    """
    from tfhub_ft import data, report

    image_size = image_size or result.get("image_size") or 224
    indices = report.most_confident_mistakes(result["labels"], result["probabilities"])
    if len(indices):
        images, _, _ = data.decode_files([result["paths"][i] for i in indices], image_size)
    else:
        images = np.zeros((0, image_size, image_size, 3), np.uint8)
    return report.write_report(
        report_dir, result["class_names"], result["labels"], result["probabilities"],
        mistake_images=images, mistake_indices=indices,
        summary={"model": result.get("model"), "image_dir": result.get("image_dir"),
                 "skipped_files": result["skipped"],
                 "validation_metrics": {"loss": result["loss"]}},
        paths=result["paths"], scored=_scored_images(result.get("image_dir")))


def _scored_images(image_dir):
    """How the plots' titles name the images `evaluate` scored: "images in
    'test'" (the folder's name, as the logs write names)."""
    from tfhub_ft import image_files
    name = image_dir and os.path.basename(os.path.normpath(image_dir))
    return f"images in '{image_files.display_path(name)}'" if name else "images scored"

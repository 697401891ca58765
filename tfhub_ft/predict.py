"""Batch prediction with an export: image files in, one CSV row per file out.

    python -m tfhub_ft.predict --model=EXPORT_DIR --images=FOLDER_OR_GLOB \
        --output=predictions.csv [--top_k=1] [--batch_size=32]

`--model` is an export folder (`FineTuner.export`: the SavedModel and
labels.txt) or a .tflite file with labels.txt beside it. Nothing from
training is needed. A folder is read recursively (files with the extensions
of `preprocessing.IMAGE_EXTENSIONS`, hidden ones skipped, links to files and
folders followed as in training's `image_files.scan_class_folder`); a glob takes every
file it matches (`**` included). The CSV has the columns `path`, `class_1`,
`probability_1`, ..., `class_k`, `probability_k`, `error`; a file that cannot
be read or decoded gets a row with its error and empty classes, and the run
goes on.
"""

import argparse
import csv
import glob
import io
import logging
import os
import re
import sys

import numpy as np

from tfhub_ft import checks, image_files

# TensorFlow and the modules that import it are imported where they are
# used: `python -m tfhub_ft.predict` runs this file before the command can
# turn TensorFlow's start-up lines down (`cli.import_tensorflow_quietly`).

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 1
DEFAULT_BATCH_SIZE = 32
# `--output` for standard output, as many commands spell it.
STDOUT = "-"


def list_image_files(images):
    """The image files a folder (recursively), a file or a glob names, sorted.

    Args:
        images: A folder, a file, or a glob pattern (`**` matches any
            depth).

    Returns:
        List of file paths.

    Raises:
        ValueError: if nothing matches.
    """
    from tfhub_ft import preprocessing
    images = os.fspath(images)
    if os.path.isdir(images):
        # As training lists a class folder: links to folders followed (once
        # each), hidden entries left out, and the log says what was.
        scan = image_files.scan_class_folder(images, preprocessing.IMAGE_EXTENSIONS)
        # A link to a missing image is a file the caller asked about: it
        # gets a row saying so (training warns of it).
        broken = [path for path, why in scan.left_out
                  if why == "broken link" and _is_broken_image_link(path)]
        paths = scan.files + broken
        left_out = [(path, why) for path, why in scan.left_out if path not in broken]
        if left_out:
            logger.info("Found %d image file%s in %s; left out %d: %s", len(paths),
                        "" if len(paths) == 1 else "s",
                        image_files.display_path(images), len(left_out),
                        image_files.listing_by_reason(left_out, "files left out"))
    elif os.path.isfile(images):
        # A file is taken as named, before any glob reading: 'x[1].jpg' is
        # that file, not the pattern matching 'x1.jpg'.
        paths = [images]
    else:
        paths, left_out = [], []
        for path in sorted(glob.glob(images, recursive=True)):
            if os.path.isfile(path) or _is_broken_image_link(path):
                paths.append(path)
            else:
                left_out.append((path, "a folder" if os.path.isdir(path) else "broken link"
                                 if os.path.islink(path) and not os.path.exists(path)
                                 else "not a regular file"))
        if left_out and paths:
            logger.info("Found %d file%s matching %s; left out %d: %s", len(paths),
                        "" if len(paths) == 1 else "s", images, len(left_out),
                        image_files.listing_by_reason(left_out, "matches left out"))
        if left_out and not paths:
            raise ValueError(
                f"Invalid value for `images`. Expected a folder with image files or a glob "
                f"matching files. Received: images={images!r}, which matches no file, only "
                f"{image_files.listing_by_reason(left_out, 'matches')}. Pass a folder to "
                f"read it recursively, or a glob of files such as 'photos/**/*.jpg'.")
    if not paths:
        raise ValueError(
            f"Invalid value for `images`. Expected a folder with image files "
            f"({', '.join(preprocessing.IMAGE_EXTENSIONS)}) or a glob matching "
            f"files. Received: images={images!r}, which names no file.")
    return sorted(paths)


def _is_broken_image_link(path):
    from tfhub_ft import preprocessing
    return (os.path.islink(path) and not os.path.exists(path)
            and path.lower().endswith(preprocessing.IMAGE_EXTENSIONS))


def read_error(path, error):
    """Why the image file at `path` could not be read (an OSError), as
    training's file check says it: "cannot be read (Permission denied)";
    for a link to a missing file, "broken link (to TARGET, which does not
    exist)"."""
    if _is_broken_image_link(path):
        return f"broken link (to {os.readlink(path)}, which does not exist)"
    return f"cannot be read ({error.strerror or error})"


class _SavedModelClassifier:
    """An export folder's `serving_default`: encoded images in, probabilities out.

    Attributes:
        image_size: The side the export resizes images to (decoding.json);
            None for an export written before tfhub_ft wrote that file.
    """

    def __init__(self, export_dir):
        import tensorflow as tf
        from tfhub_ft import export as export_lib
        self.image_size = (export_lib.read_decoding(export_dir) or {}).get("image_size")
        self._serve = tf.saved_model.load(export_dir).signatures.get("serving_default")
        if self._serve is None:
            raise ValueError(
                f"Invalid value for `model`. Expected a SavedModel with a `serving_default` "
                f"signature (encoded images in, probabilities out), as `FineTuner.export` "
                f"writes. Received: model={export_dir!r}, which has none.")

    def predict_batch(self, encoded):
        """Encoded images -> float32 [N, C]; raises on any undecodable one."""
        import tensorflow as tf
        outputs = self._serve(image_bytes=tf.constant(encoded, tf.string))
        return outputs["probabilities"].numpy()


class _TFLiteFileClassifier:
    """A .tflite file from `tflite.export_tflite`, decoding and resizing as
    training did (the export's decoding.json; without it, the defaults)."""

    def __init__(self, path):
        from tfhub_ft import export as export_lib
        from tfhub_ft import preprocessing, tflite
        self._classifier = tflite.TFLiteClassifier(path)
        folder = os.path.dirname(os.path.abspath(path))
        decoding = export_lib.read_decoding(folder)
        size = self._classifier.image_size
        if decoding is not None and decoding.get("image_size") != size:
            raise ValueError(
                f"{export_lib.DECODING_FILE} in {folder!r} is for "
                f"{decoding.get('image_size')}-px images but the model takes {size}-px "
                "ones: they are not from the same export. Keep the files the export wrote "
                "together.")
        options = {} if decoding is None else {
            "max_pixels": decoding.get("max_image_pixels"),
            "exif_orientation_enabled": bool(decoding.get("exif_orientation", True))}
        self._decode = preprocessing.traced_decoder(size, **options)

    @property
    def num_classes(self):
        return self._classifier.num_classes

    @property
    def image_size(self):
        return self._classifier.image_size

    def predict_batch(self, encoded):
        import tensorflow as tf
        images = np.stack([self._decode(tf.constant(data), tf.constant("image")).numpy()
                           for data in encoded])
        return self._classifier.predict(images)


def load_classifier(model):
    """Loads an export for `predict_files`.

    Args:
        model: An export folder (SavedModel + labels.txt) or a .tflite file
            with labels.txt in its folder.

    Returns:
        (classifier, class names): the classifier's `predict_batch` maps a
        list of encoded images (bytes) to float32 probabilities [N, C]; its
        `image_size` is the side in pixels it resizes images to (None for
        an export without decoding.json).

    Raises:
        ValueError: if `model` is neither, or labels.txt is missing or does
            not match the model's classes.
    """
    import tensorflow as tf
    from tfhub_ft import export as export_lib
    model = os.fspath(model)
    if os.path.isfile(model) and model.endswith(".tflite"):
        labels_dir, make = os.path.dirname(os.path.abspath(model)), _TFLiteFileClassifier
    elif os.path.isdir(model) and tf.saved_model.contains_saved_model(model):
        labels_dir, make = model, _SavedModelClassifier
    else:
        raise ValueError(
            "Invalid value for `model`. Expected an export folder written by "
            "`FineTuner.export` (saved_model.pb and labels.txt) or a .tflite "
            f"file beside its labels.txt. Received: model={model!r}")
    if not os.path.isfile(os.path.join(labels_dir, export_lib.LABELS_FILE)):
        backbone = (" A SavedModel without it is not a classifier: `export_backbone` "
                    "writes a feature extractor, which has no classes."
                    if make is _SavedModelClassifier else "")
        raise ValueError(
            f"No {export_lib.LABELS_FILE} in {labels_dir!r}: the class names "
            "are read from it. Keep the labels.txt written by the export "
            f"beside the model.{backbone}")
    classifier = make(model)
    class_names = export_lib.read_labels(labels_dir)
    count = getattr(classifier, "num_classes", len(class_names))
    if count != len(class_names):
        raise ValueError(
            f"{export_lib.LABELS_FILE} in {labels_dir!r} names {len(class_names)} "
            f"classes but the model outputs {count}: they are not from the same export.")
    return classifier, class_names


def error_text(error):
    """The reason a file was not classified, on one line.

    A decode check of the export fails as an assertion whose message is the
    reason ("... is a truncated JPEG file ..."), wrapped by TensorFlow:
    "Graph execution error: ... assertion failed: [part] [part]" from the
    SavedModel, "Expected ... to be true. Summarized data: b'part'\\nb'part'"
    from the eager decode before a .tflite model: the parts are kept. A
    decoder's own error ("Invalid PNG data, size 12432") is kept without
    TensorFlow's wrapping (in a graph it is the line before "[[{{node ...",
    eagerly it sits between "{{function_node ...}}" and "[Op:...]"), after
    "TensorFlow could not decode it: ", as training's skip reasons say it.
    Other errors of TensorFlow's keep their reason after their type, and
    any other error gives its type and first line.
    """
    import tensorflow as tf
    message = (getattr(error, "message", None) or str(error)).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not isinstance(error, tf.errors.OpError):
        return f"{type(error).__name__}: {lines[0] if lines else ''}"
    if "assertion failed: [" in message:
        line = message.split("assertion failed: ", 1)[1].splitlines()[0].strip()
        parts = (line[1:-1] if line.endswith("]") else line[1:]).split("] [")
    elif "Summarized data: " in message:
        parts = [part[2:-1] if part[:2] in ("b'", 'b"') else part
                 for part in message.split("Summarized data: ", 1)[1].splitlines()]
    else:
        found = [lines[i - 1] for i in range(1, len(lines)) if lines[i].startswith("[[{{")]
        reason = found[0] if found else (lines[0] if lines else "")
        reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", reason)
        reason = re.sub(r"\s*\[Op:[^\]]*\].*$", "", reason)
        if re.search(r"(\{\{node |\[Op:|__wrapped__)Decode", message):
            # As training words a file its decoder refused (data._decode_error).
            return f"TensorFlow could not decode it: {reason}"
        return f"{type(error).__name__}: {reason}"
    text = " ".join(part.strip() for part in parts if part.strip())
    return re.sub(r"^(image_bytes\[\d+\]|image) ", "the file ", text)


def predict_files(model, paths, top_k=DEFAULT_TOP_K, batch_size=DEFAULT_BATCH_SIZE,
                  verbose="auto"):
    """Classifies image files with an export, in batches.

    A batch that fails (a file that cannot be decoded) is run again one file
    at a time, so only the bad files get an error and the others their
    classes.

    Args:
        model: An export folder or a .tflite file (see `load_classifier`),
            or the (classifier, class names) pair it returns.
        paths: Image file paths.
        top_k: Classes per file, 1 <= top_k <= number of classes.
        batch_size: Files per model call (the .tflite model still runs one
            image at a time).
        verbose: "auto" shows a Keras progress bar where it redraws (a
            terminal, a notebook: `progress.bars_redraw`); True or False
            force it on or off.

    Returns:
        One dict per path, in order: {"path": str, "classes": [top_k class
        names, most probable first], "probabilities": [top_k floats in
        [0, 1]], "error": "" or the reason the file was not classified
        (then "classes" and "probabilities" are empty)}.

    Raises:
        ValueError: for an invalid `top_k` or `batch_size`, or a model that
            cannot be loaded.
    """
    from tfhub_ft.checks import check_integer
    classifier, class_names = (model if isinstance(model, tuple) else load_classifier(model))
    top_k = check_integer("top_k", top_k, 1, len(class_names))
    batch_size = check_integer("batch_size", batch_size, 1)
    import keras  # Only for its progress bar.

    from tfhub_ft.progress import bars_redraw
    if verbose == "auto":
        verbose = bars_redraw()
    progress = keras.utils.Progbar(len(paths), verbose=1 if verbose else 0, unit_name="image")
    rows = []
    for path, (probabilities, error) in zip(
            paths, score_files(classifier, paths, batch_size, progress=progress.add)):
        row = {"path": path, "classes": [], "probabilities": [], "error": error}
        if probabilities is not None:
            top = np.argsort(-probabilities, kind="stable")[:top_k]
            row["classes"] = [class_names[i] for i in top]
            row["probabilities"] = [float(probabilities[i]) for i in top]
        rows.append(row)
    failed = sum(1 for row in rows if row["error"])
    logger.info("Classified %d of %d files%s.", len(rows) - failed, len(rows),
                f"; {failed} could not be read or decoded" if failed else "")
    return rows


def score_files(classifier, paths, batch_size=DEFAULT_BATCH_SIZE, progress=None):
    """Probabilities for each image file, bad files isolated.

    Files are read and run `batch_size` at a time; a batch that fails (a
    file that cannot be decoded) is run again one file at a time, so only
    the bad files lose their scores. Shared by `predict_files` and
    `evaluation.evaluate_export`.

    Args:
        classifier: From `load_classifier`.
        paths: Image file paths.
        batch_size: Files per model call (>= 1).
        progress: Called with the number of files done after each batch,
            or None.

    Returns:
        One (probabilities, error) pair per path, in order: float32 [C]
        probabilities and "", or None and why the file was not scored
        (`read_error`, `image_files.EMPTY_FILE`, `error_text` of the
        decode error).
    """
    from tfhub_ft import preprocessing
    scored = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        results, encoded, positions = [None] * len(batch), [], []
        for position, path in enumerate(batch):
            try:
                data = image_files.read_bytes(path)
            except OSError as error:
                results[position] = (None, read_error(path, error))
                continue
            if not data:
                # As training's file check says it.
                results[position] = (None, image_files.EMPTY_FILE)
                continue
            encoded.append(data)
            positions.append(position)
        if encoded:
            caught = []
            with preprocessing.libjpeg_warnings_caught(caught):
                outcomes = _predict_or_isolate(classifier, encoded)
            for position, result in zip(positions, outcomes):
                results[position] = result
            if caught:
                # Only the classified ones: a batch rerun file by file
                # printed its warnings twice.
                classified = [i for i, (probabilities, _) in enumerate(outcomes)
                              if probabilities is not None]
                preprocessing.log_libjpeg_warnings(
                    [batch[positions[i]] for i in classified],
                    [encoded[i] for i in classified], caught, "classified")
        scored.extend(results)
        if progress is not None:
            progress(len(batch))
    return scored


def _predict_or_isolate(classifier, encoded):
    """(probabilities, "") per encoded image; (None, error text) for a bad one."""
    import tensorflow as tf
    try:
        return [(probabilities, "") for probabilities in classifier.predict_batch(encoded)]
    except tf.errors.OpError as error:
        if len(encoded) == 1:
            return [(None, error_text(error))]
    return [_predict_or_isolate(classifier, [data])[0] for data in encoded]


def check_output(output, model, paths):
    """Refuses a CSV path that would overwrite what the run reads.

    Called before predicting, so that a bad `--output` costs nothing.

    Args:
        output: The CSV file to write.
        model: The export folder or .tflite file (`load_classifier`).
        paths: The image files to classify.

    `STDOUT` ("-") is always accepted.

    Raises:
        ValueError: if `output` is a folder, not a regular file (a device,
            a pipe: the CSV would replace it), under a file, in a folder
            that cannot be written, one of the images or an image
            file, inside the model's export folder (a SavedModel's folder, or
            a .tflite file's when it holds the SavedModel too), or the
            .tflite file or the labels.txt beside it.
    """
    from tfhub_ft import export as export_lib
    from tfhub_ft import preprocessing
    output, model = os.fspath(output), os.fspath(model)
    if output == STDOUT:
        return
    real = os.path.realpath(output)
    model_dir = os.path.realpath(model if os.path.isdir(model) else os.path.dirname(
        os.path.abspath(model)))
    # A .tflite file alone in a folder of other things does not own it.
    owns_folder = os.path.isdir(model) or os.path.isfile(
        os.path.join(model_dir, export_lib.SAVED_MODEL_FILE))
    # A link is written through: the CSV goes beside its target.
    folder = os.path.dirname(real if os.path.islink(output) else os.path.abspath(output))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if os.path.isdir(output):
        problem = "which is a folder"
    elif os.path.exists(output) and not os.path.isfile(output):
        # Renaming the CSV onto it would replace the device or pipe itself.
        problem = (f"which is not a regular file (a device, pipe or socket). Pass "
                   f"{STDOUT!r} as the output to write the CSV to standard output")
    elif not os.path.isdir(existing):
        problem = f"whose folder cannot be made: {existing!r} is a file"
    elif real in {os.path.realpath(path) for path in paths}:
        problem = "which is one of the images to classify"
    elif output.lower().endswith(preprocessing.IMAGE_EXTENSIONS):
        problem = "which is named as an image file"
    elif owns_folder and checks.is_within(output, model_dir):
        problem = f"which is inside the model's folder {model_dir!r}"
    elif real in {os.path.realpath(model),
                  os.path.join(model_dir, export_lib.LABELS_FILE),
                  os.path.join(model_dir, export_lib.DECODING_FILE)}:
        problem = "which is the model or its labels (or decoding.json)"
    if problem:
        raise ValueError(
            f"Invalid value for `output`. Expected a new CSV file outside the model's "
            f"folder. Received: output={output!r}, {problem}.")
    checks.check_writable_folder("output", folder)


def write_csv(rows, output, top_k):
    """Writes `predict_files` rows as CSV: path, class_i, probability_i..., error.

    Probabilities are written with 6 decimals; an error row has empty class
    and probability cells. The file is written beside `output` under a
    temporary name and renamed into place, so an interrupted run leaves any
    earlier file whole; a link is written through (its target replaced,
    the link kept). `STDOUT` ("-") writes to standard output.
    """
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    header.append("error")

    def write(f):
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [image_files.display_path(row["path"])]
            for rank in range(top_k):
                if rank < len(row["classes"]):
                    cells += [row["classes"][rank], f"{row['probabilities'][rank]:.6f}"]
                else:
                    cells += ["", ""]
            cells.append(row["error"])
            writer.writerow(cells)

    output = os.fspath(output)
    if output == STDOUT:
        _write_to_stdout(write)
        return
    if os.path.islink(output):
        output = os.path.realpath(output)
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    partial = f"{output}.{os.getpid()}.partial"
    try:
        with open(partial, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(partial, output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write_to_stdout(write):
    """Calls `write(stream)` on standard output as UTF-8 CSV text (whatever
    the terminal's encoding); a reader that stops early (`| head`) ends
    the output quietly, as the Python documentation's SIGPIPE note
    recommends, not with a BrokenPipeError."""
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)
    stream = (io.TextIOWrapper(binary, encoding="utf-8", newline="") if binary is not None
              else sys.stdout)
    try:
        write(stream)
        stream.flush()
    except BrokenPipeError:
        # Later flushes (at exit) would raise again: stdout goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if stream is not sys.stdout:
            stream.detach()


def _parser():
    parser = argparse.ArgumentParser(
        prog="tfhub_ft predict",
        description="Classify image files with a tfhub_ft export; one CSV row per file.")
    parser.add_argument("--model", required=True,
                        help="Export folder (SavedModel + labels.txt) or a .tflite file "
                             "with labels.txt beside it.")
    parser.add_argument("--images", required=True,
                        help="Folder (read recursively) or glob of image files.")
    parser.add_argument("--output", required=True,
                        help=f"CSV file to write ({STDOUT}: standard output).")
    parser.add_argument("--top_k", type=int, default=DEFAULT_TOP_K,
                        help="Classes per file (default %(default)s).")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="Files per model call (default %(default)s).")
    from tfhub_ft import cli
    cli.add_verbosity_flag(parser)
    return parser


def main(argv=None):
    """Command-line entry point.

    Args:
        argv: The arguments without the program name (e.g.
            ["--model=export", "--images=photos", "--output=p.csv"]);
            sys.argv[1:] when None.

    Returns:
        0 when the CSV was written (files that failed are in it).

    Raises:
        ValueError: for a folder or glob naming no image file, an `--output`
            that `check_output` refuses, a model that cannot be loaded or an
            invalid `--top_k` (the command prints it
            on one line and exits with status 2). Flags argparse refuses
            exit with status 2 and the usage.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # A ValueError (bad folder, model or top_k) reaches the command, which
    # prints it as one line and exits with status 2.
    paths = list_image_files(args.images)
    model = load_classifier(args.model)
    check_output(args.output, args.model, paths)
    to_stdout = args.output == STDOUT
    # Keras's progress bar writes to stdout: not inside the CSV.
    rows = predict_files(model, paths, args.top_k, args.batch_size,
                         verbose=False if to_stdout else "auto")
    write_csv(rows, args.output, args.top_k)
    logger.info("Wrote %d row%s to %s", len(rows), "" if len(rows) == 1 else "s",
                "standard output" if to_stdout else args.output)
    return 0


if __name__ == "__main__":
    # Through the command, as `tfhub_ft predict`: its quiet TensorFlow
    # import, logging and exit.
    from tfhub_ft import cli
    cli.run(["predict", *sys.argv[1:]])

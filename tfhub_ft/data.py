"""Training data: image folders, TFDS datasets and tf.data datasets.

Every source becomes an `ImageSet`: images decoded and resized once to the
backbone's size and kept as uint8, so epochs never decode a JPEG again.
"""

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import logging
import os
import socket
import sys
import time
import unicodedata
import urllib.parse
import urllib.request
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfhub_ft import arrays, image_files, preprocessing
from tfhub_ft.config import (DEFAULT_IMAGE_SIZE, SMALL_IMAGE_SIDE, SMALL_IMAGE_SIZE,
                             FineTuneConfig, choose_image_size)

logger = logging.getLogger(__name__)


# Decoded images hashed by `ImageSet.fingerprint`.
FINGERPRINT_IMAGES = 64


@dataclasses.dataclass
class ImageSet:
    """Decoded images with integer labels.

    Attributes:
        images: uint8 [N, S, S, 3] in [0, 255], a numpy array or (past the
            memory budget) an `arrays.FileArray`.
        labels: int32 [N] in [0, len(class_names)).
        class_names: One name per class, in label order.
        skipped: Paths of files that could not be used.
        skip_reasons: {path: why} for every path in `skipped`.
        paths: The file of every image (folder sources), else None.
        decode_seconds: Wall seconds spent decoding the files (folder
            sources), a part of the time `load_images` took.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    skipped: List[str] = dataclasses.field(default_factory=list)
    skip_reasons: dict = dataclasses.field(default_factory=dict)
    paths: Optional[List[str]] = None
    decode_seconds: float = 0.0

    def __len__(self):
        return len(self.labels)

    def fingerprint(self) -> str:
        """A short hash of what the set holds, to tell one data set from another.

        Hashes the labels, each file's class folder, name and size (folder
        sources; the folder above may move), and `FINGERPRINT_IMAGES` decoded
        images spread over the set (any source). Reading them costs a few
        milliseconds; the files are stat-ed, not read again.

        Returns:
            16 hexadecimal characters.
        """
        digest = hashlib.sha256(np.asarray(self.labels, np.int64).tobytes())
        for path in self.paths or ():
            folder, name = os.path.split(os.fsencode(path))
            digest.update(b"%s/%s %d\0" % (os.path.basename(folder), name,
                                             os.stat(path).st_size))
        if len(self):
            rows = np.unique(np.linspace(0, len(self) - 1, min(FINGERPRINT_IMAGES, len(self)),
                                         dtype=np.int64))
            digest.update(np.ascontiguousarray(arrays.take(self.images, rows)).tobytes())
        return digest.hexdigest()[:16]

    def subset(self, indices) -> "ImageSet":
        paths = None if self.paths is None else [self.paths[i] for i in indices]
        return ImageSet(arrays.subset(self.images, indices), self.labels[indices],
                        self.class_names, paths=paths)

    def to_dataset(self, batch_size, shuffle=False, seed=0, one_hot=True):
        """A batched tf.data pipeline of (uint8 images, labels).

        Labels are one-hot float32 [B, C] when `one_hot` (label smoothing
        needs them), else int32 [B].
        """
        return arrays.BatchSource(
            self.images, self.labels, batch_size,
            len(self.class_names) if one_hot else None, shuffle=shuffle, seed=seed).dataset()


def _top_level(directory):
    """(class subfolder names, sorted; (path, why) of the other entries) of
    an image folder's top: hidden entries and files are not classes."""
    folders, others = [], []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith("."):
            others.append((path, "hidden"))
        elif os.path.isdir(path):
            folders.append(name)
        else:
            others.append((path, "a file outside the class folders"))
    return folders, others


def list_image_folder(directory, min_classes=2) -> Tuple[List[str], np.ndarray, List[str]]:
    """Lists an image folder with one subfolder per class.

    Each class folder is searched recursively: nested folders and links (to
    files or folders, with loop detection) are followed. Files whose
    extension is not in `preprocessing.IMAGE_EXTENSIONS` are left out, and
    so are hidden files and folders; every file or folder left out is
    logged with why, and so is the number of images per class.

    Args:
        directory: The folder.
        min_classes: Class folders it must hold: 2 to train a classifier,
            1 to score one (`evaluation.evaluate_export`).

    Returns:
        (paths, labels int32 [N], class names sorted alphabetically). A
        class name that is not valid UTF-8 is shown with escapes
        (`image_files.display_path`).

    Raises:
        ValueError: if the folder is missing, has fewer than `min_classes`
            class folders, a class folder holds no image, a class name holds a
            control character (a line break), or a file is in two classes
            through a link.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(
            "Invalid value for `image_dir`. Expected a folder with one "
            f"subfolder of images per class. Received: {directory!r}, which "
            "is not a folder."
        )
    folders, outside = _top_level(directory)
    class_names = [image_files.display_path(name) for name in folders]
    check_class_names(class_names, f"the class folders of {directory!r}")
    if len(class_names) < min_classes:
        raise ValueError(
            f"The image folder {directory!r} has {len(class_names)} class "
            f"subfolder(s) {class_names}; "
            f"{'a classifier needs at least two' if min_classes > 1 else 'one is needed'}. "
            "Put each class's images in a subfolder named after the class."
        )
    paths, labels, empty, left_out, counts, nested = [], [], [], [], [], 0
    owners = {}  # a file's real path -> (its path, its class) as first listed
    in_two_classes = []
    for label, folder in enumerate(folders):
        scan = image_files.scan_class_folder(os.path.join(directory, folder),
                                             preprocessing.IMAGE_EXTENSIONS)
        for path, real in zip(scan.files, scan.real_files):
            owner = owners.setdefault(real, (path, label))
            if owner[1] != label:
                in_two_classes.append(
                    f"{image_files.display_path(owner[0])} ({class_names[owner[1]]}) and "
                    f"{image_files.display_path(path)} ({class_names[label]}) are one file")
        if not scan.files:
            empty.append(class_names[label])
        paths.extend(scan.files)
        labels.extend([label] * len(scan.files))
        left_out.extend(scan.left_out)
        counts.append(f"{class_names[label]}: {len(scan.files)}")
        nested += scan.nested_folders
    if in_two_classes:
        raise ValueError(
            f"{len(in_two_classes)} file(s) in {directory!r} are in two classes, reached "
            f"through a link: {'; '.join(in_two_classes[:3])}"
            f"{'; ...' if len(in_two_classes) > 3 else ''}. A file belongs to one class: "
            "remove the link, or copy the files you mean to have in both.")
    left_out.extend(outside)
    if empty:
        raise ValueError(
            f"The class folder(s) {empty} in {directory!r} hold no image "
            f"({', '.join(preprocessing.IMAGE_EXTENSIONS)}). Add images or "
            "remove the folder."
        )
    # One line per folder: what was found and what was left out, with why;
    # what the user may not expect (a format TensorFlow cannot decode, a
    # broken link or a loop, an unreadable folder) is a warning of its own.
    alarming = [(p, why) for p, why in left_out if "cannot decode" in why
                or "link" in why or "cannot be read" in why]
    quiet = [item for item in left_out if item not in alarming]
    logger.info("Found %d image file%s in %s (%s)%s%s", len(paths),
                "" if len(paths) == 1 else "s", image_files.display_path(directory),
                ", ".join(counts),
                f", {nested} nested folder(s) searched" if nested else "",
                f"; left out {len(quiet)}: " + image_files.listing_by_reason(
                    quiet, "files left out") if quiet else "")
    if alarming:
        logger.warning("Left out %d file(s) or folder(s) in %s: %s", len(alarming),
                       image_files.display_path(directory), image_files.listing_by_reason(
                           alarming, "files or folders left out"))
    return paths, np.asarray(labels, np.int32), class_names


def decode_files(paths: Sequence[str], image_size: int, budget=None,
                 max_pixels=None, exif_orientation=True):
    """Decodes and resizes image files in parallel, skipping broken ones.

    Args:
        paths: File paths (str, as `os` returns them; sent to TensorFlow as
            bytes, so names that are not UTF-8 work).
        budget: `arrays.ArrayBudget` the images are stored in (memory, or
            files past the budget); all in memory when None.
        max_pixels, exif_orientation: As `preprocessing.decode_image`.

    Returns:
        (images uint8 [M, S, S, 3], indices int [M] of the decoded paths,
        {path: why} of the skipped paths). Order follows `paths`.
    """
    decode = preprocessing.traced_decoder(image_size, max_pixels, exif_orientation)

    def load(index, path, name):
        return decode(tf.io.read_file(path), name), index

    encoded_paths = [os.fsencode(p) for p in paths]
    names = [image_files.display_path(p) for p in paths]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths)), tf.constant(encoded_paths, tf.string, [len(paths)]),
         tf.constant(names, tf.string, [len(paths)])))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    # A corrupt file fails its own element only; its index is missing after.
    dataset = dataset.ignore_errors().batch(256).prefetch(2)
    budget = budget or arrays.ArrayBudget()
    images = budget.allocate((len(paths), image_size, image_size, 3), np.uint8, "images")
    kept, warnings = [], []
    for batch_images, batch_indices in _with_progress(dataset, len(paths), warnings):
        indices = batch_indices.numpy()
        arrays.write_rows(images, indices, batch_images.numpy())
        kept.append(indices)
    kept = np.concatenate(kept) if kept else np.zeros([0], np.int64)
    skipped = sorted(set(range(len(paths))) - set(kept.tolist()))
    kept = np.sort(kept)
    if warnings:
        decoded = [paths[i] for i in kept]
        preprocessing.log_libjpeg_warnings(
            decoded, [functools.partial(image_files.read_bytes, path) for path in decoded],
            warnings, "decoded")
    if len(kept) < len(paths):
        images = arrays.subset(images, kept)
    reasons = {paths[i]: _decode_error(encoded_paths[i], names[i], image_size, max_pixels,
                                       exif_orientation) for i in skipped}
    return images, kept, reasons


def _decode_error(path, name, image_size, max_pixels, exif_orientation):
    """Decodes one file again, eagerly, for the reason it failed."""
    try:
        preprocessing.decode_and_resize(tf.io.read_file(path), image_size, max_pixels,
                                        exif_orientation, name=name)
    except tf.errors.OpError as error:
        message = " ".join(error.message.split())
        return f"TensorFlow could not decode it: {message[:300]}"
    return "could not be decoded"


def _with_progress(dataset, total, libjpeg_warnings=None):
    """Yields the batches, logging progress about every 10% (DEBUG: the
    command shows one line per stage, `load_image_folder` logs it).

    With a list `libjpeg_warnings`, libjpeg's warnings printed while a
    batch is fetched are appended to it instead. They are caught per
    fetch, not around the loop: stderr is held in a file while caught, and
    the log lines between fetches go out when they are made."""
    done, step = 0, max(total // 10, 1)
    next_report = step

    def caught():
        return (contextlib.nullcontext() if libjpeg_warnings is None
                else preprocessing.libjpeg_warnings_caught(libjpeg_warnings))

    with caught():
        iterator = iter(dataset)
    while True:
        with caught():
            batch = next(iterator, None)
        if batch is None:
            return
        done += int(batch[1].shape[0])
        if done >= next_report and total >= 1000:
            logger.debug("Decoded %d/%d images", done, total)
            next_report += step
        yield batch


def load_image_folder(directory, image_size, budget=None, config=None,
                      min_classes=2) -> ImageSet:
    """Decodes an image folder into an `ImageSet`.

    `image_size` None chooses it from the files' header sizes
    (`config.choose_image_size`), logged with the reason.

    Every file is checked first (`image_files.check_image_files`, in
    parallel); a bad file is skipped and logged with its path and reason,
    or, with `config.on_bad_image == "error"`, the whole list is raised.

    Args:
        config: `FineTuneConfig` for `on_bad_image`, `max_image_pixels` and
            `exif_orientation`; the defaults when None.
        min_classes: Class folders it must hold (`list_image_folder`): 2
            to train, 1 to score.

    Raises:
        ValueError: with `on_bad_image="error"` and any bad file (all are
            listed); when no image, or no image of some class, can be used.
    """
    config = config or FineTuneConfig()
    paths, labels, class_names = list_image_folder(directory, min_classes)
    checks = image_files.check_image_files(paths, config.max_image_pixels)
    if image_size is None:
        sides = [min(c.height, c.width) for c in checks if c.height and c.width]
        image_size = choose_image_size(sides)
        if sides:
            median = sorted(sides)[len(sides) // 2]
            logger.info("Image size %d: the median training image's shorter side is %d px, %s",
                        image_size, median, _image_size_rule(median))
    reasons = {c.path: c.problem for c in checks if c.problem}
    notes = [c for c in checks if c.note]
    if notes:
        logger.info("%d file(s) with oddities, used anyway: %s", len(notes),
                    image_files.listing((f"{image_files.display_path(c.path)} ({c.note})"
                                         for c in notes), "files with oddities"))
    usable = [i for i, p in enumerate(paths) if p not in reasons]
    start = time.perf_counter()
    images, kept, decode_reasons = decode_files(
        [paths[i] for i in usable], image_size, budget, config.max_image_pixels,
        config.exif_orientation)
    decode_seconds = time.perf_counter() - start
    reasons.update(decode_reasons)
    logger.info("Decoded %d images in %.1f s%s", len(kept), decode_seconds,
                f" ({len(reasons)} of the {len(paths)} files skipped)" if reasons else "")
    kept = np.asarray(usable, np.int64)[kept]
    skipped = [p for p in paths if p in reasons]
    if skipped:
        entries = [f"{image_files.display_path(p)}: {reasons[p]}" for p in skipped]
        if config.on_bad_image == "error":
            # The error is the only record: every file, however many.
            raise ValueError(
                f"{len(skipped)} file(s) in {image_files.display_path(directory)!r} cannot "
                f"be used as images (on_bad_image='error'): {'; '.join(entries)}. Fix or "
                "remove them, or pass on_bad_image='skip' to train without them.")
        logger.warning("Skipped %d file(s) in %s that cannot be used as images: %s",
                       len(skipped), image_files.display_path(directory),
                       image_files.listing(entries, "files skipped"))
    if len(kept) == 0:
        raise ValueError(f"No image in {directory!r} could be decoded.")
    result = ImageSet(images, labels[kept], class_names, skipped,
                      {p: reasons[p] for p in skipped}, [paths[i] for i in kept],
                      decode_seconds)
    missing = sorted(set(range(len(class_names))) - set(result.labels.tolist()))
    if missing:
        raise ValueError(
            f"Every image of class(es) {[class_names[i] for i in missing]} in "
            f"{directory!r} failed to decode; each class needs at least one "
            "readable image.")
    return result


def stratified_split(labels, validation_fraction, seed=0):
    """Splits indices so each class keeps its share in both parts.

    Every class with two or more examples gets at least one validation and
    one training example.

    Args:
        labels: int [N] class labels.
        validation_fraction: float in (0, 1).
        seed: Seed of the shuffle within each class.

    Returns:
        (train indices, validation indices), each sorted int64.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = int(round(len(members) * validation_fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        validation.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(validation, np.int64))


def check_class_names(class_names, source):
    """Class names are lines of labels.txt and cells of the reports: a line
    break or another control character in one would split or shift them.

    Raises:
        ValueError: naming the class and `source` (its folder, or the
            `class_names` argument).
    """
    bad = [name for name in class_names
           if any(unicodedata.category(char) == "Cc" for char in str(name))]
    if bad:
        raise ValueError(
            f"Invalid class name(s) {bad} in {source}: a class name may not hold a line "
            "break, tab or other control character (labels.txt holds one name per "
            "line). Rename them.")


def check_training_classes(image_set):
    """Every class needs a training image: a class without one can never be
    learned, and its output unit only takes probability from the others.

    Raises:
        ValueError: naming the classes without images (for a tf.data or
            TFDS source: labels with a gap, or starting at 1).
    """
    counts = np.bincount(np.asarray(image_set.labels), minlength=len(image_set.class_names))
    empty = [image_set.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        present = np.flatnonzero(counts)
        raise ValueError(
            f"Class(es) {empty} have no training image ({len(image_set.class_names)} classes: "
            f"{list(image_set.class_names)}). The labels are class indices 0, 1, ...; these "
            f"run from {present.min()} to {present.max()} ({len(present)} distinct), so "
            f"{len(counts)} classes were made. Map the labels to 0 ... C-1 without gaps, or "
            "drop the classes from `class_names`.")


def check_validation_split(labels, class_names, validation_fraction, seed=0):
    """Checks, before anything is built, that a validation split means something.

    Raises:
        ValueError: when the split would hold no image at all (every class
            has fewer than 2 images).

    Logs a warning naming each class that gets no validation image (the
    validation accuracy then covers the other classes only).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names))
    _, validation = stratified_split(labels, validation_fraction, seed)
    if len(validation) == 0:
        raise ValueError(
            "Cannot hold out a validation split: need at least 2 images per "
            "class for a validation split, or pass validation data. Images "
            f"per class: {dict(zip(class_names, counts.tolist()))}.")
    warn_missing_validation_classes(labels[validation], class_names, counts)


def warn_missing_validation_classes(validation_labels, class_names, train_counts=None):
    """Warns about each class that has no validation image."""
    present = set(np.asarray(validation_labels).tolist())
    missing = [i for i in range(len(class_names)) if i not in present]
    if missing:
        named = ", ".join(
            f"{class_names[i]!r}" + (f" ({train_counts[i]} image(s))"
                                     if train_counts is not None else "")
            for i in missing)
        # `train_counts` comes with a held-out split, whose fix is more
        # training images; passed validation data needs images of its own.
        fix = ("Give each class at least 2 images (or pass validation data with every "
               "class)." if train_counts is not None else
               "Add validation images of those classes.")
        logger.warning(
            "No validation image for class(es) %s: the validation accuracy "
            "covers the other classes only. %s", named, fix)


def check_class_balance(labels, class_names, ratio=5.0, class_weight="none"):
    """Warns when the largest class has `ratio` times the images of the smallest.

    Returns:
        int numpy [C], the images per class.
    """
    counts = np.bincount(np.asarray(labels), minlength=len(class_names))
    largest, smallest = int(counts.argmax()), int(counts.argmin())
    if counts[smallest] > 0 and counts[largest] >= ratio * counts[smallest]:
        advice = ("the loss is weighted by class_weight='balanced'"
                  if class_weight == "balanced" else
                  "pass class_weight='balanced' to weight the loss inversely to "
                  "class frequency, or add images of the small classes")
        logger.warning(
            "Imbalanced classes: %r has %d training images, %.1fx the %d of %r; %s. "
            "Watch the per-class recall, not only the accuracy.",
            class_names[largest], counts[largest], counts[largest] / counts[smallest],
            counts[smallest], class_names[smallest], advice)
    return counts


# Module names whose pip package is named otherwise.
_PIP_NAMES = {"tensorflow_datasets": "tensorflow-datasets", "PIL": "Pillow"}


def _missing_module(error):
    """The ImportError in `error` or its causes, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ImportError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _unresolvable_download_host(builder):
    """The host of a TFDS builder's downloads when none of them resolves, or None.

    TFDS retries a failed download with backoff for about 3 minutes before
    it gives up; when no host name of the builder's URLs resolves, there is
    no network access, and that is known at once. Not judged (None): a
    download through a proxy (`urllib`'s proxy environment variables: the
    proxy resolves the host), a builder that lists no URLs (manual
    downloads), a data folder whose `downloads/` already holds files (TFDS
    may prepare from them offline), and a `download_and_prepare` that is
    not TFDS's own (`tfds.testing.mock_data` replaces it with one that
    downloads nothing).

    Args:
        builder: A `tfds.core.DatasetBuilder`.

    Returns:
        The first host name (str) of `builder.url_infos` when none of them
        `socket.getaddrinfo` resolves, else None.
    """
    prepare = getattr(type(builder), "download_and_prepare", None)
    if (not getattr(prepare, "__module__", "").startswith("tensorflow_datasets.core.")
            or any(urllib.request.getproxies().get(scheme)
                   for scheme in ("http", "https", "all"))):
        return None
    downloads = os.path.join(os.fspath(getattr(builder, "_data_dir_root", "") or ""),
                             "downloads")
    if os.path.isdir(downloads) and os.listdir(downloads):
        return None
    try:
        urls = list(builder.url_infos or ())
    except Exception:  # Builders without checksums: TFDS then finds out itself.
        return None
    hosts = [host for host in dict.fromkeys(urllib.parse.urlsplit(url).hostname
                                            for url in urls) if host]
    for host in hosts:
        try:
            socket.getaddrinfo(host, None)
            return None  # One resolves: the network is there.
        except socket.gaierror:
            continue
        except OSError:
            return None
    return hosts[0] if hosts else None


def _is_prepared_quietly(builder):
    """`builder.is_prepared()` without its WARNING when the answer is no
    ("Variant folder ... has no dataset_info.json", also for a folder that
    does not exist): `load_tfds` says what follows in words."""
    absl_logger = logging.getLogger("absl")

    def hide(record):
        return not str(record.msg).startswith("Variant folder ")

    absl_logger.addFilter(hide)
    try:
        return builder.is_prepared()
    finally:
        absl_logger.removeFilter(hide)


def _unknown_source_message(name, dataset_names):
    """What a string that is neither a folder nor a TFDS dataset gets told
    (TFDS's own error lists all of its 400-odd datasets)."""
    # A name can be registered twice (tfds.testing.mock_data adds its own).
    close = difflib.get_close_matches(name, list(dict.fromkeys(dataset_names)), n=3)
    guess = (f" Did you mean the TFDS dataset {' or '.join(map(repr, close))}?"
             if close else "")
    return (f"Invalid value for the data. Expected an existing folder or the name of a "
            f"TFDS dataset. Received: {name!r}, neither.{guess} Pass the path of a folder "
            "with one subfolder of images per class (relative paths start from "
            f"{os.getcwd()}), or a TFDS name such as 'tf_flowers' "
            "(`tfds.list_builders()` lists them).")


class _UnknownName(Exception):
    """A TFDS name TFDS does not know."""


class _Offline(Exception):
    """An unprepared TFDS dataset whose download host does not resolve."""


def load_tfds(name, split, image_size, data_dir=None, budget=None) -> ImageSet:
    """Loads a TFDS image classification dataset with its label names.

    The images stream into `budget`'s arrays (memory up to the budget,
    files past it), as `dataset_to_image_set` describes.

    Args:
        name: TFDS name, e.g. "tf_flowers".
        split: TFDS split, slices included ("train", "train[:80%]").
        image_size: Side of the square uint8 images to keep; None: chosen
            from the dataset's static image size (`dataset_to_image_set`).
        data_dir: TFDS data folder (TFDS's default when None).
        budget: `arrays.ArrayBudget`; everything in memory when None.

    Returns:
        `ImageSet`: uint8 [N, S, S, 3], int32 labels [N], the label names
        of the dataset's info ("0", "1", ... when it has none).

    Raises:
        ImportError: when a Python package TFDS needs is not installed (it
            is named, with the `pip install` command).
        ValueError: if the dataset cannot be loaded otherwise (offline:
            pass `data_dir` where it was prepared; an unprepared dataset
            whose download host does not resolve fails at once, not after
            TFDS's retries) or has no image/label features.
    """
    try:
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except ValueError as error:
            # An unknown name, or one TFDS cannot even parse as a name
            # ("my-photos", "photos.zip": "Parsing builder name string ...").
            if not (isinstance(error, tfds.core.registered.DatasetNotFoundError)
                    or "Parsing builder name" in str(error)):
                raise
            raise _UnknownName(_unknown_source_message(
                name, tfds.list_builders(with_community_datasets=False))) from None
        if not _is_prepared_quietly(builder):
            host = _unresolvable_download_host(builder)
            if host is not None:
                raise _Offline(f"it is not prepared in {builder.data_dir}, and the host "
                               f"it downloads from, {host}, does not resolve (no network "
                               "access)")
            # TFDS retries a download with backoff for about 3 minutes
            # before it fails: say so before the wait, not after it.
            logger.info("The TFDS dataset %r is not prepared in %s: downloading and "
                        "preparing it (if the download fails, TFDS retries it for about "
                        "3 minutes).", name, builder.data_dir)
        # TFDS prints its progress with print(): stdout is for results.
        with contextlib.redirect_stdout(sys.stderr):
            dataset, info = tfds.load(name, split=split, data_dir=data_dir,
                                      with_info=True, as_supervised=True)
    except _UnknownName as error:
        raise ValueError(str(error)) from None
    except Exception as error:
        missing = _missing_module(error)
        if missing is not None:
            # Not an offline problem: tensorflow-datasets imports packages
            # it does not declare (importlib_resources, to prepare a
            # download), so a fresh install fails here.
            module = (missing.name or "").split(".")[0]
            fix = (f"Install it: `pip install {_PIP_NAMES.get(module, module)}`." if module
                   else "Install the package it names with `pip install`.")
            raise ImportError(
                f"Could not load the TFDS dataset {name!r} (split {split!r}): a Python "
                f"module that loading TFDS datasets needs is not installed ({missing}). "
                f"{fix}") from error
        raise ValueError(
            f"Could not load the TFDS dataset {name!r} (split {split!r}): "
            f"{error}. Offline, prepare it on a machine with network access "
            "and pass its folder as `data_dir` (`--data_dir` in the command), or use "
            "an image folder (`--image_dir`)."
        ) from error
    label_feature = info.features[info.supervised_keys[1]]
    class_names = list(getattr(label_feature, "names", None) or
                       [str(i) for i in range(label_feature.num_classes)])
    return dataset_to_image_set(dataset, image_size, class_names, budget)


# Rows decoded and written at a time: large enough to keep the parallel
# resize busy, small enough (7 MB at 96 px, 38 MB at 224) next to a budget.
_STREAM_BATCH = 256
# How far outside [0, 1] a float image may stray (rounding) before it is
# taken for 0-255 or normalised values (`dataset_to_image_set`,
# `FineTuner.predict`).
UNIT_RANGE_TOLERANCE = 1e-3


def _dataset_length(dataset):
    """The element count of `dataset`, or None when tf.data cannot tell.

    Raises:
        ValueError: for an infinite dataset.
    """
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "Invalid value for `dataset`. Expected a finite tf.data.Dataset: every "
            "image is decoded and kept once, so the data must end. Received: a "
            "dataset of infinite length (a `.repeat()` without a count?). Pass a "
            "finite part, e.g. `dataset.take(n)`, or leave out the `.repeat()` "
            "(the epochs are fit's to repeat).")
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        return None
    return cardinality


def _image_size_rule(side):
    """How `config.choose_image_size` treats a shorter side of `side` px, in
    words for the log line that says which size was chosen."""
    return (f"{'under' if side < SMALL_IMAGE_SIDE else 'not under'} {SMALL_IMAGE_SIDE} px "
            f"({SMALL_IMAGE_SIZE} px below that, {DEFAULT_IMAGE_SIZE} from it; set "
            "`image_size` to choose)")


def _image_size_from_spec(image_spec):
    """`image_size=None` for a dataset: chosen from its images' static
    height and width [H, W, C] (the rule a folder's headers follow), logged."""
    height, width = image_spec.shape.as_list()[:2]
    if height and width:
        image_size = choose_image_size([min(height, width)])
        logger.info("Image size %d: the dataset's images are %d x %d px, shorter side %s",
                    image_size, width, height, _image_size_rule(min(height, width)))
        return image_size
    logger.info("Image size %d: the dataset's images have no fixed size (set `image_size` "
                "to choose)", DEFAULT_IMAGE_SIZE)
    return DEFAULT_IMAGE_SIZE


def dataset_to_image_set(dataset, image_size, class_names=None, budget=None) -> ImageSet:
    """Decodes a tf.data.Dataset of (image, label) into an `ImageSet`, streaming.

    Images may be uint8 in [0, 255] or float in [0, 1], of any size, one per
    element or batched (then unbatched here). They are resized and written
    256 at a time into an array of `budget`: memory up to the budget, a
    spill file past it, so a dataset larger than memory can be used. A
    dataset whose length tf.data knows gets its array once; one whose length
    is unknown (after `filter`, or `unbatch` with a ragged last batch, or
    `from_generator`) is staged in a file that grows and is read into memory
    at the end if it fits (`arrays.RowWriter` says why);
    `dataset.apply(tf.data.experimental.assert_cardinality(n))` avoids the
    file.

    Args:
        dataset: Elements (image, label), one image or a batch: images
            [H, W, C] or [B, H, W, C], C = 3 (RGB), 1 (gray), 2 or 4 (with
            alpha, composited over white as decoded files are); labels
            class indices [] or [B] (integers, or floats with whole
            values), also [1] / [B, 1] (Keras datasets' shape), or one-hot
            rows [C] / [B, C] (one 1, the rest 0).
        image_size: Side of the square uint8 images to keep; None chooses
            it as for a folder (`config.choose_image_size`) from the
            images' static size, `DEFAULT_IMAGE_SIZE` when they have none.
        class_names: One name per label; when None, "0" ... up to the
            largest label (one-hot: one per column).
        budget: `arrays.ArrayBudget`; everything in memory when None.

    Returns:
        `ImageSet`: uint8 [N, S, S, 3] (numpy, or `arrays.FileArray` past the
        budget), int32 labels [N], in the dataset's order.

    Raises:
        TypeError: if the elements are not (image, label) pairs, the images
            neither uint8 nor float, or the labels not numbers.
        ValueError: if the dataset is infinite or empty, a label is outside
            `class_names`, has a fractional part or is a row that is not
            one-hot, a float image has values outside [0, 1] (0-255
            floats, or images already normalised), or the images' or
            labels' shape is none of the above.
    """
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise TypeError(
            "Invalid value for `dataset`. Expected a tf.data.Dataset of "
            f"(image, label) pairs. Received elements of {spec}")
    _dataset_length(dataset)  # an infinite dataset fails before unbatching
    if spec[0].shape.rank == 4:
        dataset = dataset.unbatch()
    channels, label_columns = _check_element_spec(*dataset.element_spec, class_names)
    if image_size is None:
        image_size = _image_size_from_spec(dataset.element_spec[0])
    if class_names is not None:
        check_class_names(class_names, "`class_names`")
    length = _dataset_length(dataset)
    if length is None:
        logger.info(
            "The dataset's length is unknown to tf.data: its images are staged in a "
            "file that grows, then read into memory if they fit the budget. "
            "`dataset.apply(tf.data.experimental.assert_cardinality(n))` skips the file; "
            "if the dataset never ends, pass `dataset.take(n)`.")

    def prepare(image, label):
        # To uint8 first: float and uint8 sources then resize the same way
        # (area interpolation when shrinking, as decoded files). The float
        # range travels along, checked below: clipping a 0-255 float image
        # into [0, 1] leaves it nearly black and white, and training on
        # that reaches chance without an error.
        low = high = tf.constant(0.0)
        if image.dtype != tf.uint8:
            image = tf.cast(image, tf.float32)
            low, high = tf.reduce_min(image), tf.reduce_max(image)
            image = tf.cast(tf.clip_by_value(tf.round(image * 255.0), 0, 255), tf.uint8)
        if channels != 3:
            image = preprocessing.composite_over_background(image)
        # Whether the label says one class: a whole number, or a row of
        # one 1 and zeros (a soft or all-equal row would become its argmax,
        # a fraction its integer part, silently).
        if label_columns is not None and label_columns > 1:
            is_one = tf.equal(label, tf.ones_like(label))
            whole = tf.logical_and(
                tf.reduce_all(tf.logical_or(is_one, tf.equal(label, tf.zeros_like(label)))),
                tf.equal(tf.reduce_sum(tf.cast(is_one, tf.int32)), 1))
            label = tf.argmax(label)
        else:
            if label_columns is not None:
                label = label[0]
            whole = (tf.logical_and(tf.math.is_finite(label), tf.equal(label, tf.round(label)))
                     if label.dtype.is_floating else tf.constant(True))
        return (preprocessing.resize_images(image, image_size), tf.cast(label, tf.int32),
                low, high, whole)

    batches = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True).batch(_STREAM_BATCH).prefetch(1)
    budget = budget or arrays.ArrayBudget()
    writer = arrays.RowWriter(budget, (image_size, image_size, 3), np.uint8, "images",
                              rows=length)
    labels = []  # int32, 4 bytes an image: small next to the images
    start = time.perf_counter()
    for image_batch, label_batch, lows, highs, wholes in _with_progress(batches, length or 0):
        batch_labels = label_batch.numpy()
        _check_label_form(wholes.numpy(), label_columns, writer.count)
        _check_labels(batch_labels, class_names, writer.count)
        _check_unit_range(lows.numpy(), highs.numpy(), writer.count)
        writer.append(image_batch.numpy())
        labels.append(batch_labels)
    images = writer.finish()
    seconds = time.perf_counter() - start
    if not labels:
        raise ValueError("Invalid value for `dataset`. Expected images. Received: an "
                         "empty dataset.")
    labels = np.concatenate(labels)
    logger.info("Decoded %d images from the dataset in %.1f s (%s)", len(labels), seconds,
                "in memory" if isinstance(images, np.ndarray) else "past the memory "
                "budget, in a spill file")
    if class_names is None:
        count = (label_columns if label_columns is not None and label_columns > 1
                 else int(labels.max()) + 1)
        class_names = [str(i) for i in range(count)]
    # Plain str: numpy's np.str_ shows as np.str_('cat') in every message,
    # and bytes would be written "b'cat'" into labels.txt.
    return ImageSet(images, labels,
                    [name.decode() if isinstance(name, bytes) else str(name)
                     for name in class_names], decode_seconds=seconds)


def _check_element_spec(image_spec, label_spec, class_names):
    """Checks one element's specs before any image is read (see
    `dataset_to_image_set` for what is accepted).

    Returns:
        (channels: 1 to 4, or None when tf.data does not know it;
        label_columns: None for a class index, 1 for [1], C for one-hot).
    """
    if not (image_spec.dtype == tf.uint8 or image_spec.dtype.is_floating):
        raise TypeError(
            "Invalid value for `dataset`. Expected uint8 images in [0, 255] or float "
            f"images in [0, 1]. Received: images of dtype {image_spec.dtype.name}. Cast "
            "them, e.g. `dataset.map(lambda image, label: (tf.cast(image, tf.uint8), "
            "label))` for values 0-255.")
    # A channel count tf.data does not know (`tf.io.decode_image` without
    # `channels`) is read per image.
    if image_spec.shape.rank != 3 or image_spec.shape[-1] not in (1, 2, 3, 4, None):
        raise ValueError(
            "Invalid value for `dataset`. Expected images [H, W, C] or batches [B, H, W, C] "
            "with C = 3 (RGB), 1 (gray), 2 or 4 (with alpha). Received: images of shape "
            f"{image_spec.shape} (after unbatching). For gray images without a channel "
            "axis, map `image[..., None]`.")
    if not (label_spec.dtype.is_integer or label_spec.dtype.is_floating
            or label_spec.dtype.is_bool):
        raise TypeError(
            "Invalid value for `dataset`. Expected labels that are class indices 0, 1, ... "
            f"(or one-hot rows). Received: labels of dtype {label_spec.dtype.name}. Map "
            "names to indices, e.g. with `keras.layers.StringLookup(vocabulary=names, "
            "num_oov_indices=0)`, and pass the names as `class_names`; or use an image "
            "folder, whose subfolders name the classes.")
    if not (label_spec.shape.rank == 0
            or (label_spec.shape.rank == 1 and label_spec.shape[0] is not None)):
        raise ValueError(
            "Invalid value for `dataset`. Expected labels of shape [] (a class index; "
            "[B] batched), [1] or one-hot [C]. Received: labels of shape "
            f"{label_spec.shape} (after unbatching).")
    label_columns = label_spec.shape[0] if label_spec.shape.rank == 1 else None
    if (label_columns or 0) > 1 and class_names is not None and label_columns != len(class_names):
        raise ValueError(
            f"Invalid value for `class_names`. Expected one name per column of the one-hot "
            f"labels ({label_columns}). Received: {len(class_names)} names "
            f"{list(class_names)}.")
    return image_spec.shape[-1], label_columns


def _check_unit_range(lows, highs, offset):
    """Raises at the first float image with values outside [0, 1] (a little
    rounding allowed); `offset` is the index of the first one in the dataset."""
    tolerance = UNIT_RANGE_TOLERANCE
    bad = np.flatnonzero((lows < -tolerance) | (highs > 1 + tolerance))
    if not len(bad):
        return
    index = int(bad[0])
    hint = ("Divide 0-255 values by 255: `dataset.map(lambda image, label: (image / 255, "
            "label))`, or cast them to uint8." if highs[index] > 1 + tolerance and
            lows[index] >= -tolerance else
            "Pass the images before normalisation (the hub module normalises its input "
            "itself), as uint8 in [0, 255] or float in [0, 1].")
    raise ValueError(
        "Invalid value for `dataset`. Expected float images in [0, 1] (or uint8 in "
        f"[0, 255]). Received: element {offset + index} has values from {lows[index]:g} "
        f"to {highs[index]:g}. {hint}")


def _check_label_form(wholes, label_columns, offset):
    """Raises at the first label that is not one class: a fraction, or a
    row that is not one-hot; `offset` is the index of wholes[0]."""
    bad = np.flatnonzero(~wholes)
    if not len(bad):
        return
    element = offset + int(bad[0])
    if label_columns is not None and label_columns > 1:
        raise ValueError(
            f"Invalid value for `dataset`. Expected one-hot label rows (one 1, the rest "
            f"0). Received: element {element} has a row that is not one-hot (soft, several "
            "1s, or none). Pass class indices or one-hot rows; tfhub_ft smooths the labels "
            "itself (`label_smoothing`).")
    raise ValueError(
        "Invalid value for `dataset`. Expected labels that are class indices 0, 1, ... "
        f"Received: element {element} has a label with a fractional part, or NaN or "
        "infinite. Map the labels to whole class indices with `dataset.map`.")


def _check_labels(labels, class_names, offset):
    """Raises at the first label outside [0, len(class_names)) (or below 0
    without class names); `offset` is the index of labels[0] in the dataset."""
    limit = len(class_names) if class_names is not None else np.iinfo(np.int32).max
    bad = np.flatnonzero((labels < 0) | (labels >= limit))
    if not len(bad):
        return
    where = f"element {offset + int(bad[0])} of the dataset has label {int(labels[bad[0]])}"
    if class_names is None:
        raise ValueError(f"Labels must be 0 or more (class indices); {where}. Map the "
                         "labels to 0, 1, ... with `dataset.map`.")
    raise ValueError(
        f"Labels must lie in [0, {limit}) for class names {list(class_names)}; {where}. "
        "Pass `class_names` with one name per label, or map the labels into that range.")


def is_tfds_name(source) -> bool:
    """Whether a data source names a TFDS dataset rather than a folder."""
    return (isinstance(source, str) and not os.path.isdir(source)
            and os.sep not in source)


def load_images(source, image_size, class_names=None, split="train",
                data_dir=None, budget=None, config=None, min_classes=2) -> ImageSet:
    """Loads any supported data source into an `ImageSet`.

    Args:
        source: A folder path (one subfolder per class), a TFDS name (with
            `split` and `data_dir`), a `tf.data.Dataset` of (image, label),
            or an `ImageSet`.
        image_size: Side of the square uint8 images to keep; None chooses it
            from the images (`load_image_folder`, `dataset_to_image_set`).
        class_names: Class names for a `tf.data.Dataset` source.
        budget: `arrays.ArrayBudget` the decoded images of a folder, TFDS
            or tf.data source are written into (memory up to the budget,
            spill files past it); all in memory when None.
        config: `FineTuneConfig` of the folder checks and decoding (see
            `load_image_folder`); the defaults when None.
        min_classes: Class folders a folder source must hold: 2 to train,
            1 to score.

    Raises:
        TypeError: for an unsupported source.
        ValueError, ImportError: see `load_image_folder`, `load_tfds`,
            `dataset_to_image_set`.
    """
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, tf.data.Dataset):
        return dataset_to_image_set(source, image_size, class_names, budget)
    if is_tfds_name(source):
        return load_tfds(source, split, image_size, data_dir, budget)
    if isinstance(source, (str, os.PathLike)):
        return load_image_folder(source, image_size, budget, config, min_classes)
    raise TypeError(
        "Invalid value for the data. Expected an image folder path, a TFDS "
        "dataset name, or a tf.data.Dataset of (image, label). Received: "
        f"{type(source).__name__}")


def _check_known_classes(found, class_names, name):
    """Raises ValueError naming the classes of `found` the training data lacks
    (and which of them differ from a training class only in case)."""
    unknown = sorted(set(found) - set(class_names))
    if not unknown:
        return
    by_case = {known.lower(): known for known in class_names}
    near = [f"{c!r} is {by_case[c.lower()]!r} but for case" for c in unknown
            if c.lower() in by_case]
    raise ValueError(
        f"The {name} data has class(es) {unknown} that the training data "
        f"does not have ({list(class_names)}){': ' + ', '.join(near) if near else ''}. "
        "Use the same class folders in both.")


def check_class_folders(train_dir, validation_dir, name="validation"):
    """Before anything is decoded: the class folders of `validation_dir`
    must be among those of `train_dir` (`match_classes`' check, early).

    Args:
        train_dir, validation_dir: Image folders, one subfolder per class.
        name: What `validation_dir` is, for the message.

    Raises:
        ValueError: naming the classes the training folder lacks.
    """
    def class_names(directory):
        return [image_files.display_path(folder) for folder in _top_level(directory)[0]]
    _check_known_classes(class_names(validation_dir), class_names(train_dir), name)


def match_classes(image_set: ImageSet, class_names, name) -> ImageSet:
    """Relabels `image_set` to the training classes, which must agree."""
    if list(image_set.class_names) == list(class_names):
        return image_set
    _check_known_classes(image_set.class_names, class_names, name)
    mapping = np.asarray([list(class_names).index(c) for c in image_set.class_names],
                         np.int32)
    return ImageSet(image_set.images, mapping[image_set.labels], list(class_names),
                    image_set.skipped, image_set.skip_reasons, image_set.paths)

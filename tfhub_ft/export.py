"""SavedModel export that serves encoded images with nothing but TensorFlow.

The exported model decodes, resizes and scales inside its graph, so a
server needs only `tf.saved_model.load` (or TF Serving) and no tfhub_ft.
"""

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import sys
import tempfile

import tensorflow as tf

from tfhub_ft import native_stderr, preprocessing, scratch
from tfhub_ft.checks import check_folder_path
from tfhub_ft.data import UNIT_RANGE_TOLERANCE

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
# What marks a folder as a SavedModel (TensorFlow's
# `saved_model.constants.SAVED_MODEL_FILENAME_PB`).
SAVED_MODEL_FILE = "saved_model.pb"
# How `serving_default` decodes, for what runs the model without it (a
# .tflite file takes resized pixels: `tfhub_ft.predict` decodes for it).
DECODING_FILE = "decoding.json"


class _ServingModule(tf.Module):
    """Holds the classifier and its labels for `tf.saved_model.save`."""

    def __init__(self, model, class_names, image_size, max_pixels=None,
                 exif_orientation=True):
        super().__init__(name="classifier")
        self.model = model
        self.image_size = image_size
        self.class_names = tf.constant(list(class_names))
        # The concrete function of training's decoder, fetched here: a
        # tf.function called while tf.saved_model.save traces the signatures
        # misses its cache (the save context is part of the key) and traces
        # the decode graph again, about 0.5 s. In a tuple set past tf.Module's
        # tracking: the save exports any function attribute as one of the
        # module's own.
        object.__setattr__(self, "_decoder", (preprocessing.traced_decoder(
            image_size, max_pixels, exif_orientation).get_concrete_function(),))

    def _outputs(self, images):
        # An empty request (a server's empty batch) gets empty outputs
        # without running the model: TensorFlow 2.21's oneDNN depthwise
        # convolution fails on a batch of 0 ("input depth must be evenly
        # divisible by filter depth: 3 vs 16"), where FineTuner.predict
        # returns [0, C].
        logits = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: tf.cast(self.model(images, training=False), tf.float32),
            lambda: tf.zeros([0, self.class_names.shape[0]], tf.float32))
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "classes": tf.gather(self.class_names, class_ids),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
                 autograph=False)
    def serve_image_bytes(self, image_bytes):
        def decode(element):
            index, encoded = element
            return self._decoder[0](encoded, tf.strings.format("image_bytes[{}]", index))

        images = tf.map_fn(
            decode, (tf.range(tf.size(image_bytes)), image_bytes),
            fn_output_signature=tf.TensorSpec(
                [self.image_size, self.image_size, 3], tf.uint8))
        return self._outputs(images)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name="images")], autograph=False)
    def serve_images(self, images):
        # Values outside [0, 1] (0-255 floats, normalised ones) or NaN give
        # confident nonsense, not an error: refused, as FineTuner.predict
        # refuses them.
        finite = tf.math.is_finite(images)
        # NaN makes min and max depend on the order: the range of the rest.
        low = tf.reduce_min(tf.where(finite, images, 0.0))
        high = tf.reduce_max(tf.where(finite, images, 0.0))
        not_finite = tf.size(images) - tf.math.count_nonzero(finite, dtype=tf.int32)
        check = tf.debugging.Assert(
            tf.logical_or(tf.equal(tf.size(images), 0), tf.reduce_all([
                low >= -UNIT_RANGE_TOLERANCE, high <= 1.0 + UNIT_RANGE_TOLERANCE,
                tf.equal(not_finite, 0)])),
            ["Invalid value for `images`. Expected float32 RGB in [0, 1], as training saw "
             "them. Received: values from", low, "to", high, "and", not_finite,
             "NaN or infinite value(s). Divide 0-255 values by 255, and pass images "
             "before any normalisation (the model normalises them)."], summarize=1)
        with tf.control_dependencies([check]):
            return self._outputs(tf.identity(images))


def export_saved_model(model, class_names, export_dir, image_size, write_extras=None,
                       max_pixels=None, exif_orientation=True):
    """Writes the classifier as a SavedModel, atomically, with labels.txt.

    Signatures:
        serving_default: image_bytes tf.string [N] (encoded JPEG, PNG, GIF,
            BMP or WebP, decoded as in training: transparency over white,
            EXIF orientation when `exif_orientation`, at most `max_pixels`)
            -> probabilities float32 [N, C], class_ids int32 [N], classes
            tf.string [N] (top-1 label). One element that cannot be decoded
            fails the whole request with an InvalidArgumentError; for an
            unknown format, a truncated JPEG or PNG, or an image above
            `max_pixels` the message names the element ("image_bytes[3] is
            not a JPEG, ..."); other decoder errors do not.
        serving_images: images float32 [N, H, W, 3] RGB in [0, 1], any H, W
            -> the same outputs. Values outside [0, 1] (by more than 1e-3)
            or NaN fail with an InvalidArgumentError that says so.
        An empty request (N = 0) gets outputs with N = 0.

    Beside the SavedModel: labels.txt (one class name per line, in the
    order of the probabilities) and decoding.json (`read_decoding`: the
    image size and the two decode settings above, for what runs the model
    without `serving_default`).

    The SavedModel is written to a temporary folder beside `export_dir` and
    renamed into place, so a failed export leaves an earlier one intact.

    Args:
        write_extras: Optional callable taking the staging folder, called
            after the SavedModel and labels.txt are written there and before
            the rename, so that what it writes (e.g. `tflite.export_tflite`'s
            model.tflite) is part of the same atomic export.
        max_pixels: Largest image (height * width from its header) that
            `serving_default` decodes, or None for no limit.
        exif_orientation: Whether `serving_default` applies EXIF
            orientation (as training did).

    Returns:
        The export folder path.

    Raises:
        ValueError: if `export_dir` is a file, a link, a folder that is
            neither empty nor an earlier export (`check_replaceable`), or its
            parent cannot be written.
    """
    with atomic_folder(export_dir, "the export") as staging:
        module = _ServingModule(model, class_names, image_size, max_pixels,
                                exif_orientation)
        with native_stderr.quiet_saving_logs():
            tf.saved_model.save(module, staging, signatures={
                "serving_default": module.serve_image_bytes,
                "serving_images": module.serve_images,
            })
        with open(os.path.join(staging, LABELS_FILE), "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        with open(os.path.join(staging, DECODING_FILE), "w", encoding="utf-8") as f:
            json.dump({"image_size": image_size, "max_image_pixels": max_pixels,
                       "exif_orientation": exif_orientation}, f, indent=2)
            f.write("\n")
        if write_extras is not None:
            write_extras(staging)
    export_dir = os.path.abspath(os.fspath(export_dir))
    logger.info("Exported the SavedModel to %s", export_dir)
    return export_dir


@contextlib.contextmanager
def atomic_folder(path, what, kind="classifier"):
    """Yields a staging folder beside `path` that replaces `path` on success.

    A failure (or a kill) before the end leaves an earlier folder at `path`
    intact; the staging folder is removed on failure.

    Args:
        path: The folder to write (str or os.PathLike).
        what: Names the content in errors, e.g. "the export".
        kind: "classifier" or "backbone": the kind of earlier export that
            may be replaced (`check_replaceable`).

    Raises:
        TypeError, ValueError: if `path` is not a folder path (see
            `checks.check_folder_path`), is a folder an export may not
            replace (`check_replaceable`), or its parent cannot be written.
    """
    path = os.path.abspath(check_folder_path("export_dir", path))
    check_replaceable(path, kind=kind)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_abandoned_staging(parent)
        staging = scratch.make_folder(STAGING_KIND, parent)
    except OSError as error:
        raise ValueError(
            f"Cannot write {what} to {path!r}: {error}. Choose a folder you can "
            "write to.") from error
    try:
        yield staging
        # mkdtemp makes the folder private (0700); an export is read by
        # servers running as other users, so it gets the usual mode.
        os.chmod(staging, 0o777 & ~_umask())
        # Checked again here: another run may have exported to `path` since.
        if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
            logger.warning("Replacing the earlier export at %s (its files go with it).", path)
        _replace_folder(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# The staging folder's prefix (`scratch.make_folder`): hidden, and named
# with its writer's process so that a later export can remove one a killed
# export left.
STAGING_KIND = ".export"


def remove_abandoned_staging(parent):
    """Removes staging folders in `parent` that a killed export left behind.

    Returns:
        The paths removed (see `scratch.remove_abandoned`).
    """
    return scratch.remove_abandoned(STAGING_KIND, parent, "the staging folder of an export")


def _umask():
    """The process's umask, read without changing it where Linux allows
    (os.umask can only be read by setting it, for every thread at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def check_replaceable(path, name="export_dir", kind="classifier"):
    """Whether writing an export to `path` replaces an earlier one.

    An export replaces the folder at its path whole. A folder that holds
    anything but an earlier export of the same kind (a SavedModel:
    saved_model.pb; a classifier's has labels.txt beside it, a backbone's
    not) would be deleted with it, so it is refused.

    Args:
        path: The export folder (str or os.PathLike).
        name: The argument's name in the error.
        kind: "classifier" (`export_saved_model`) or "backbone"
            (`hub_export.export_backbone`).

    Returns:
        True when `path` holds an earlier export (to be replaced), False
        when it does not exist or is empty.

    Raises:
        TypeError, ValueError: if `path` is not a folder path
            (`checks.check_folder_path`: a file, for one), is a folder
            with other content, or is inside an export.
    """
    path = os.path.abspath(check_folder_path(name, path))
    if os.path.islink(path):
        raise ValueError(
            f"Invalid value for `{name}`. Expected a folder path, not a symbolic link (an "
            f"export replaces the folder at its path, not the link's target). Received: "
            f"{name}={path!r}, a link to {os.readlink(path)!r}. Pass the target's path.")
    # Inside an export, the next export there would delete it with the rest.
    for folder in _ancestors(path):
        if os.path.isfile(os.path.join(folder, SAVED_MODEL_FILE)):
            raise ValueError(
                f"Invalid value for `{name}`. Expected a folder outside any export. "
                f"Received: {name}={path!r}, inside the export at {folder!r}, which "
                "deletes it when that export is written again. Choose a folder beside it.")
    if not os.path.isdir(path):
        return False
    try:
        entries = sorted(os.listdir(path))
    except OSError as error:
        raise ValueError(
            f"Invalid value for `{name}`. Cannot read {path!r}: {error.strerror}. Choose a "
            "folder you can write to.") from None
    if not entries:
        return False
    if SAVED_MODEL_FILE in entries:
        found = "classifier" if LABELS_FILE in entries else "backbone"
        if found == kind:
            return True
        held = ("a classifier export (saved_model.pb with labels.txt)" if found == "classifier"
                else "a backbone or hub module (saved_model.pb without labels.txt)")
        raise ValueError(
            f"Invalid value for `{name}`. Expected a new or empty folder, or an earlier "
            f"{kind} export to replace. Received: {name}={path!r}, which holds {held} "
            f"that the {kind} would replace. Choose another folder.")
    raise ValueError(
        f"Invalid value for `{name}`. Expected a new or empty folder, or an earlier "
        f"export to replace (a folder with saved_model.pb). Received: {name}={path!r}, "
        f"which holds {len(entries)} other entr{'y' if len(entries) == 1 else 'ies'} "
        f"({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}) that the "
        "export would delete. Choose a new folder.")


def _ancestors(path):
    """The folders above the absolute `path`, nearest first."""
    parent = os.path.dirname(path)
    while parent != path:
        yield parent
        path, parent = parent, os.path.dirname(parent)


def _replace_folder(source, destination):
    """Moves `source` to `destination`, replacing an earlier folder there.

    Where the file system can swap two paths in one step (Linux
    `renameat2(RENAME_EXCHANGE)`), `destination` is never missing: a kill
    at any moment leaves the old or the new folder there, and the old one,
    swapped into `source`'s staging name, is swept up by the next export
    if the kill came before its removal. Elsewhere the old folder is first
    renamed aside (`.previous-*`, kept if a kill comes between the two
    renames).
    """
    if not os.path.exists(destination):
        os.replace(source, destination)
        return
    try:
        swapped = _exchange(source, destination)
    except FileNotFoundError:
        # Another process removed the old folder since: nothing to swap.
        os.replace(source, destination)
        return
    if swapped:
        shutil.rmtree(source, ignore_errors=True)
        return
    # A fresh name, so that no folder of the user's is in the way (an empty
    # folder may be renamed over).
    previous = tempfile.mkdtemp(prefix=".previous-", dir=os.path.dirname(destination))
    try:
        os.replace(destination, previous)
    except FileNotFoundError:
        # Another process removed the old folder since: nothing to set aside.
        os.rmdir(previous)
        os.replace(source, destination)
        return
    except BaseException:
        os.rmdir(previous)
        raise
    try:
        os.replace(source, destination)
    except BaseException:
        os.replace(previous, destination)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _exchange(first, second):
    """Swaps two paths atomically (Linux `renameat2` with RENAME_EXCHANGE).

    Returns:
        True when swapped; False where the system or the file system cannot
        (not Linux, a C library without `renameat2`, ENOSYS, EINVAL).

    Raises:
        OSError: for any other failure (FileNotFoundError where a path is
            missing).
    """
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                 rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), second)


def read_labels(export_dir):
    """Returns the class names written beside an export."""
    with open(os.path.join(export_dir, LABELS_FILE), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def read_decoding(export_dir):
    """How the export's `serving_default` decodes images, from decoding.json.

    Returns:
        {"image_size": int, "max_image_pixels": int or None,
        "exif_orientation": bool}, or None when the folder has no
        decoding.json (an export written before tfhub_ft wrote it).
    """
    path = os.path.join(export_dir, DECODING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)

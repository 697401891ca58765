"""Argument checks shared by the library's modules, with Keras-style errors.

Each names the argument, says what was expected and what was received:
"Invalid value for `batch_size`. Expected an integer >= 1. Received:
batch_size=0". Importing this module imports no TensorFlow (the command
checks its flags before TensorFlow loads).
"""

import os
import tempfile

import numpy as np


def check_integer(name, value, minimum, maximum=None, optional=False, context=""):
    """Returns `value` as an int, or raises a Keras-style error naming `name`.

    Args:
        context: Appended to the expectation, e.g. " (the backbone has 19
            blocks)".

    Raises:
        ValueError: if `value` is not an integer in [minimum, maximum] (or
            None, when `optional`).
    """
    if optional and value is None:
        return None
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_integer or value < minimum or (maximum is not None and value > maximum):
        expected = (f"an integer in [{minimum}, {maximum}]" if maximum is not None
                    else f"an integer >= {minimum}")
        raise ValueError(
            f"Invalid value for `{name}`. Expected {expected}"
            f"{' or None' if optional else ''}{context}. Received: {name}={value!r}")
    return int(value)


def check_positive_number(name, value):
    """Raises a Keras-style ValueError naming `name` unless `value` > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"Invalid value for `{name}`. Expected a number > 0. "
            f"Received: {name}={value!r}")


def is_url(path):
    """Whether `path` (a str) has a scheme: a file system `tf.io.gfile`
    reads (gs://, s3://, hdfs://), which the local `os.path` functions
    cannot see, or, for a hub handle, a URL `tensorflow_hub` resolves."""
    return "://" in path


def is_within(path, folder):
    """Whether `path` is `folder` or below it, links resolved (local paths)."""
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def check_outside_image_folder(name, value, folder_name, folder):
    """Refuses an output folder inside an image folder: the next run on that
    folder would read the output as a class folder (a report's PNGs as
    training images). URLs (gs://...) and None pass.

    Args:
        name, value: The output argument and its path.
        folder_name: How the image folder is named in the message, e.g.
            "`image_dir`".
        folder: The image folder's path.

    Raises:
        ValueError: if `value` is `folder` or below it.
    """
    if value is None or not isinstance(value, (str, os.PathLike)):
        return
    value = os.fspath(value)
    if not is_url(value) and is_within(value, folder):
        raise ValueError(
            f"Invalid value for `{name}`. Expected a folder outside {folder_name}: "
            "inside it, the next run on that folder would read it as a class folder. "
            f"Received: {name}={value!r}, inside {folder_name} ({os.fspath(folder)!r}). "
            "Choose a folder beside it.")


def check_folder_path(name, value):
    """Returns a folder path argument as a str.

    Local paths that name an existing file are refused; URLs (gs://...) are
    returned as they are.

    Raises:
        TypeError: if `value` is not a non-empty str or `os.PathLike`.
        ValueError: if it names an existing file.
    """
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path:
        raise TypeError(
            f"Invalid value for `{name}`. Expected a folder path. Received: {name}={value!r}")
    if not is_url(path) and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"Invalid value for `{name}`. Expected a folder path. Received: "
            f"{name}={path!r}, which is a file. Choose another path or remove it.")
    return path


def check_writable_folder(name, path):
    """Refuses a folder path that cannot be created or written, before any work.

    The nearest existing folder on the path is tried by making (and
    removing) a folder in it: the only sure test (root passes `os.access`
    on read-only mounts).

    Raises:
        ValueError: if the path or a folder above it is a file, or the
            nearest existing folder cannot be written.
    """
    path = os.path.abspath(check_folder_path(name, path))
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tfhub_ft-check-", dir=parent))
    except OSError as error:
        raise ValueError(f"Invalid value for `{name}`. Cannot write {path!r}: {error.strerror} "
                         f"({parent!r}). Choose a folder you can write to.") from None

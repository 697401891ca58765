"""Test-only fixtures: image folders (mixed formats, corrupt files) and odd modules.

The images themselves come from `tfhub_ft.demo.shapes.make_shape_images` and
the well-formed backbone from `tfhub_ft.demo.tiny_backbone`; what is here
exists only to test the library's loaders against awkward inputs.
"""

import io
import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from tfhub_ft.config import check_integer
from tfhub_ft.demo.tiny_backbone import TinyBackbone, save_feature_vector_module

logger = logging.getLogger(__name__)

_IMAGE_FORMATS = ("jpeg", "png", "mixed")
# Extensions written by `image_format="mixed"`, cycled by image index. The
# upper-case and `.jpeg` spellings are deliberate: loaders should match
# extensions case-insensitively and accept both JPEG spellings.
_MIXED_EXTENSIONS = ("jpg", "png", "jpeg", "bmp", "jpg", "png", "JPG", "gif", "jpg", "PNG")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid value for `{name}`. Expected one of {list(choices)}. "
            f"Received: {name}={value!r}"
        )



def _encode(image, extension):
    extension = extension.lower()
    # JPEG and PNG through TensorFlow, so these files stay byte-identical to
    # what the tests were written against; TensorFlow decodes BMP and GIF but
    # cannot encode them, so Pillow writes those (BMP: 24-bit uncompressed,
    # GIF: one frame, an adaptive palette of at most 256 colours).
    if extension in ("jpg", "jpeg"):
        return tf.io.encode_jpeg(image, quality=95).numpy()
    if extension == "png":
        return tf.io.encode_png(image).numpy()
    if extension in ("bmp", "gif"):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format=extension.upper())
        return buffer.getvalue()
    raise ValueError(f"Unknown extension: {extension}")


def _corrupt_file_contents(kind, image, rng):
    """Returns (extension, bytes) of a file that no image decoder accepts."""
    if kind == 0:
        # Truncated JPEG: valid header, missing scan data and end marker.
        encoded = tf.io.encode_jpeg(image).numpy()
        return "jpg", encoded[: len(encoded) // 3]
    if kind == 1:
        return "png", rng.integers(0, 256, size=200, dtype=np.uint8).tobytes()
    if kind == 2:
        return "jpeg", b""
    if kind == 3:
        return "bmp", b"BM" + b"this is not a bitmap" * 3
    encoded = tf.io.encode_png(image).numpy()
    return "png", encoded[: len(encoded) // 3]


def write_image_folder(
    directory, images, labels, class_names, image_format="jpeg", corrupt_files=0, seed=0
):
    """Writes images as `directory/<class_name>/<index>.<extension>` files.

    `<index>` is the image's position in `images`, zero-padded to 5 digits.
    Besides the images, the folder always gets one non-image file,
    `directory/<class_names[0]>/notes.txt`, which a loader must ignore, and
    `corrupt_files` files named `corrupt_<k>.<extension>` (image extensions,
    undecodable content: truncated JPEG, random bytes, empty file, bad BMP,
    truncated PNG, in turn) spread round-robin over the class folders.

    Args:
        directory: Path of the root folder; created if missing.
        images: uint8 array `[N, H, W, 3]`, RGB in `[0, 255]`.
        labels: Integer array `[N]` in `[0, len(class_names))`.
        class_names: Sequence of distinct folder names (non-empty strings
            without path separators), indexed by label.
        image_format: `"jpeg"` (`.jpg`, quality 95), `"png"` (lossless) or
            `"mixed"`, which cycles by index through the extensions `jpg, png,
            jpeg, bmp, jpg, png, JPG, gif, jpg, PNG`: BMP files are lossless
            24-bit, GIF files are single-frame with colours quantised by
            Pillow to an adaptive palette of at most 256 colours (decoders
            return them as 4-D `[1, H, W, 3]` unless told otherwise), and the
            upper-case spellings test case-insensitive extension matching.
        corrupt_files: Number of undecodable files to add, an integer >= 0.
        seed: Non-negative integer seeding the random bytes of corrupt files.

    Returns:
        List of the paths (str) of the corrupt files, in creation order.

    Raises:
        ValueError: If an argument is out of range or the arrays disagree.
        TypeError: If `images` is not uint8.
    """
    _check_choice("image_format", image_format, _IMAGE_FORMATS)
    corrupt_files = check_integer("corrupt_files", corrupt_files, 0)
    seed = check_integer("seed", seed, 0)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise TypeError(
            f"Invalid dtype for `images`. Expected uint8. Received: images.dtype={images.dtype}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "Invalid shape for `images`. Expected [N, H, W, 3]. "
            f"Received: images.shape={images.shape}"
        )
    if labels.shape != images.shape[:1]:
        raise ValueError(
            "Invalid shape for `labels`. Expected one label per image, "
            f"[{images.shape[0]}]. Received: labels.shape={labels.shape}"
        )
    class_names = list(class_names)
    for name in class_names:
        is_folder_name = (
            isinstance(name, str)
            and name not in ("", ".", "..")
            and "/" not in name
            and os.sep not in name
        )
        if not is_folder_name:
            raise ValueError(
                "Invalid value in `class_names`. Expected non-empty folder names without path "
                f"separators. Received: {name!r}"
            )
    if len(set(class_names)) != len(class_names):
        raise ValueError(
            f"Invalid value for `class_names`. Expected distinct names. Received: {class_names}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"Invalid value for `labels`. Expected values in [0, {len(class_names)}). "
            f"Received: labels in [{labels.min()}, {labels.max()}]"
        )

    directory = os.fspath(directory)
    for name in class_names:
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        if image_format == "mixed":
            extension = _MIXED_EXTENSIONS[index % len(_MIXED_EXTENSIONS)]
        else:
            extension = "jpg" if image_format == "jpeg" else "png"
        path = os.path.join(directory, class_names[label], f"{index:05d}.{extension}")
        with open(path, "wb") as file:
            file.write(_encode(image, extension))

    with open(os.path.join(directory, class_names[0], "notes.txt"), "w") as file:
        file.write("Not an image: loaders must skip files without an image extension.\n")

    rng = np.random.default_rng(seed)
    fallback_image = np.full((16, 16, 3), 128, dtype=np.uint8)
    corrupt_paths = []
    for corrupt_index in range(corrupt_files):
        source_image = images[corrupt_index % len(images)] if len(images) else fallback_image
        extension, contents = _corrupt_file_contents(corrupt_index % 5, source_image, rng)
        class_name = class_names[corrupt_index % len(class_names)]
        path = os.path.join(directory, class_name, f"corrupt_{corrupt_index:03d}.{extension}")
        with open(path, "wb") as file:
            file.write(contents)
        corrupt_paths.append(path)
    logger.info(
        "Wrote %d images and %d corrupt files under %s.", len(images), corrupt_files, directory
    )
    return corrupt_paths


def write_grayscale_and_rgba(directory, class_name, count=2, image_size=32):
    """Writes 1-channel and 4-channel PNGs into `directory/<class_name>/`.

    Files are `grayscale_<k>.png` (uint8 `[image_size, image_size, 1]`) and
    `rgba_<k>.png` (uint8 `[image_size, image_size, 4]`, alpha varying across
    the image), for `k` in `[0, count)`; they test a loader's RGB conversion.

    Args:
        directory: Path of the root folder; created if missing.
        class_name: Name of the class folder; created if missing.
        count: Number of files of each kind, an integer >= 1.
        image_size: Height and width in pixels, an integer >= 1.

    Returns:
        List of the `2 * count` written paths (str), grayscale first.
    """
    count = check_integer("count", count, 1)
    image_size = check_integer("image_size", image_size, 1)
    class_directory = os.path.join(os.fspath(directory), class_name)
    os.makedirs(class_directory, exist_ok=True)
    ramp = np.linspace(0, 255, image_size).astype(np.uint8)
    paths = []
    for index in range(count):
        gray = np.broadcast_to(
            (ramp[None, :] // (index + 1))[..., None], (image_size, image_size, 1)
        )
        path = os.path.join(class_directory, f"grayscale_{index}.png")
        with open(path, "wb") as file:
            file.write(tf.io.encode_png(np.ascontiguousarray(gray)).numpy())
        paths.append(path)
    for index in range(count):
        rgba = np.zeros((image_size, image_size, 4), dtype=np.uint8)
        rgba[..., index % 3] = 200
        rgba[..., 3] = ramp[:, None]
        path = os.path.join(class_directory, f"rgba_{index}.png")
        with open(path, "wb") as file:
            file.write(tf.io.encode_png(rgba).numpy())
        paths.append(path)
    return paths



class _FeatureMapBackbone(TinyBackbone):
    """A TinyBackbone that wrongly returns the [N, h, w, C] map instead of [N, C]."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._pool_features = False



def save_non_feature_vector_module(path):
    """Saves a hub-like SavedModel whose `__call__` returns a 4-D feature map.

    Everything matches `build_tiny_backbone` except the output: float32
    `[N, ceil(H / 16), ceil(W / 16), 16]` instead of `[N, 16]`, so loaders can
    be tested for a clear error about the output rank.

    Returns:
        `path` as a str.
    """
    return save_feature_vector_module(_FeatureMapBackbone(constant_init=True), path)


def save_tf1_hub_module_stub(path):
    """Writes a folder that looks like a TF1 Hub module (hub.Module format).

    It contains `tfhub_module.pb` (a serialized ModuleDef with format 3, the
    marker of the TF1 format), a `saved_model.pb` holding one empty MetaGraphDef
    and an empty `variables/` folder. It is not a usable model, but note that
    `tf.saved_model.load` succeeds on it (returning an object without
    `__call__`), as it partly does on real TF1 modules; loaders should check for
    `tfhub_module.pb` first and explain that the TF1 format is not supported.

    Returns:
        `path` as a str.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.fspath(path)
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    # Field 1 (format), varint 3: the ModuleDef that hub.Module writes.
    with open(os.path.join(path, "tfhub_module.pb"), "wb") as file:
        file.write(b"\x08\x03")
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    saved_model.meta_graphs.add()
    with open(os.path.join(path, "saved_model.pb"), "wb") as file:
        file.write(saved_model.SerializeToString())
    return path


def corrupt_jpeg(seed=0):
    """A 64 x 64 JPEG with 200 bytes of its scan zeroed: libjpeg recovers
    from it and warns ("Corrupt JPEG data: ...")."""
    image = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), np.uint8)
    data = bytearray(tf.io.encode_jpeg(image, quality=90).numpy())
    middle = len(data) // 2
    data[middle:middle + 200] = bytes(200)
    return bytes(data)


def run_python(code, cwd, timeout=300, **env):
    """Runs `code` in a new Python process with TensorFlow's C++ log level
    unset (as a user's shell has it) and `env` added; its CompletedProcess
    (text stdout and stderr)."""
    import subprocess
    import sys
    environment = {key: value for key, value in os.environ.items()
                   if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**environment, **env}, cwd=str(cwd), timeout=timeout)


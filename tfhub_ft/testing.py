"""Synthetic data and tiny TF Hub style backbones for tests, examples and benchmarks.

Nothing here downloads anything: the images are drawn procedurally with numpy
and the backbones are small `tf.Module`s saved in the TF2 TF Hub "image feature
vector" convention (`__call__(images, training)` returning `[batch, features]`,
plus `variables`, `trainable_variables` and `regularization_losses`).

Two image concept families are provided so that a genuine transfer-learning
story can be told offline:

* `task="source"`: up to 48 classes, each a combination of a colour (red, green,
  blue), a fill texture (solid, horizontal stripes, vertical stripes, checker)
  and a shape (disc, square, triangle, ring).
* `task="target"`: up to 15 classes with new shapes (cross, diamond, frame,
  semicircle, hexagon) and new textures (dots, diagonal stripes, concentric
  rings), drawn in a random colour so that colour carries no label information.

Features learned on the source family (edges, corners, periodic textures) help
on the target family, but no target class appears in the source family.
"""

import logging
import os
import struct

import numpy as np
import tensorflow as tf

from tfhub_ft.config import check_integer

logger = logging.getLogger(__name__)

_SOURCE_COLOURS = {
    "red": (0.85, 0.18, 0.15),
    "green": (0.20, 0.70, 0.25),
    "blue": (0.20, 0.35, 0.90),
}
_SOURCE_TEXTURES = ("solid", "horizontal_stripes", "vertical_stripes", "checker")
_SOURCE_SHAPES = ("disc", "square", "triangle", "ring")
_TARGET_TEXTURES = ("dots", "diagonal_stripes", "concentric")
_TARGET_SHAPES = ("cross", "diamond", "frame", "semicircle", "hexagon")

MAX_SOURCE_CLASSES = len(_SOURCE_COLOURS) * len(_SOURCE_TEXTURES) * len(_SOURCE_SHAPES)
MAX_TARGET_CLASSES = len(_TARGET_TEXTURES) * len(_TARGET_SHAPES)

_TASKS = ("source", "target")
_IMAGE_FORMATS = ("jpeg", "png", "mixed")
# Extensions written by `image_format="mixed"`, cycled by image index. The
# upper-case and `.jpeg` spellings are deliberate: loaders should match
# extensions case-insensitively and accept both JPEG spellings.
_MIXED_EXTENSIONS = ("jpg", "png", "jpeg", "bmp", "jpg", "png", "JPG", "gif", "jpg", "PNG")
# Batch-norm constants match Keras' BatchNormalization defaults.
_BATCH_NORM_MOMENTUM = 0.99
_BATCH_NORM_EPSILON = 1e-3
_RENDER_CHUNK_SIZE = 256


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid value for `{name}`. Expected one of {list(choices)}. "
            f"Received: {name}={value!r}"
        )


def _class_specs(task):
    """Returns the (colour or None, texture, shape) tuple of every class of a task.

    The order interleaves the attributes so that any prefix (the first
    `num_classes` classes) varies colour, texture and shape rather than only
    one of them: class k has colour k % 3 and shape k % 4, which by the Chinese
    remainder theorem fix k % 12, so texture (k // 12 + (k % 12) // 3) % 4
    makes the map a bijection; within each run of 12 classes every colour
    meets every texture and no texture is tied to one shape.
    """
    if task == "source":
        colours = list(_SOURCE_COLOURS)
        return [
            (
                colours[k % 3],
                _SOURCE_TEXTURES[(k // 12 + (k % 12) // 3) % 4],
                _SOURCE_SHAPES[k % 4],
            )
            for k in range(MAX_SOURCE_CLASSES)
        ]
    # 3 and 5 are coprime, so k -> (k % 3, k % 5) is a bijection on [0, 15).
    return [
        (None, _TARGET_TEXTURES[k % 3], _TARGET_SHAPES[k % 5]) for k in range(MAX_TARGET_CLASSES)
    ]


def _class_name(spec):
    colour, texture, shape = spec
    parts = [colour, texture, shape] if colour is not None else [texture, shape]
    return "_".join(parts)


def _shape_mask(shape, u, v):
    """Boolean mask of a shape in shape-local coordinates (unit radius)."""
    radius = np.sqrt(u * u + v * v)
    box = np.maximum(np.abs(u), np.abs(v))
    if shape == "disc":
        return radius <= 1.0
    if shape == "square":
        return box <= 0.85
    if shape == "triangle":
        # Outward edge normals of an upright equilateral triangle with
        # inradius 0.55; the image y axis points down, so the apex is at -v.
        mask = v <= 0.55
        for angle in (np.pi * 7 / 6, np.pi * 11 / 6):
            mask &= u * np.cos(angle) + v * np.sin(angle) <= 0.55
        return mask
    if shape == "ring":
        return (radius >= 0.5) & (radius <= 1.0)
    if shape == "cross":
        vertical_bar = (np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)
        horizontal_bar = (np.abs(v) <= 0.32) & (np.abs(u) <= 1.0)
        return vertical_bar | horizontal_bar
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.1
    if shape == "frame":
        return (box <= 0.9) & (box >= 0.5)
    if shape == "semicircle":
        return (radius <= 1.1) & (v >= -0.2)
    if shape == "hexagon":
        distance = np.abs(u)
        for angle in (np.pi / 3, 2 * np.pi / 3):
            distance = np.maximum(distance, np.abs(u * np.cos(angle) + v * np.sin(angle)))
        return distance <= 0.9
    raise ValueError(f"Unknown shape: {shape}")


def _texture_pattern(texture, u, v, frequency, phase):
    """Binary fill pattern (1 = full colour, 0 = dark shade) in local coordinates."""
    if texture == "solid":
        return np.ones_like(u, dtype=bool)
    if texture == "horizontal_stripes":
        return np.sin(np.pi * frequency * v + phase) > 0
    if texture == "vertical_stripes":
        return np.sin(np.pi * frequency * u + phase) > 0
    if texture == "checker":
        # Checker cells at the stripe frequency would be too small at 32x32.
        cell_frequency = 0.75 * frequency
        return (np.sin(np.pi * cell_frequency * u + phase) > 0) ^ (
            np.sin(np.pi * cell_frequency * v + phase) > 0
        )
    if texture == "dots":
        cell_u = np.mod(0.6 * frequency * u + phase / (2 * np.pi), 1.0) - 0.5
        cell_v = np.mod(0.6 * frequency * v + phase / (2 * np.pi), 1.0) - 0.5
        return cell_u * cell_u + cell_v * cell_v <= 0.09
    if texture == "diagonal_stripes":
        return np.sin(np.pi * frequency * (u + v) / np.sqrt(2.0) + phase) > 0
    if texture == "concentric":
        return np.sin(np.pi * frequency * np.sqrt(u * u + v * v) + phase) > 0
    raise ValueError(f"Unknown texture: {texture}")


def _hue_to_rgb(hue, saturation, value):
    """Vectorised HSV -> RGB for hue in [0, 1); returns float [N, 3]."""
    channel_offsets = np.array([5.0, 3.0, 1.0])
    k = np.mod(channel_offsets[None, :] + hue[:, None] * 6.0, 6.0)
    weight = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[:, None] * (1.0 - saturation[:, None] * weight)


def _draw_parameters(rng, specs, labels):
    """Draws every per-image random parameter up front, so rendering in chunks
    cannot change the random stream."""
    count = len(labels)
    parameters = {
        "center": rng.uniform(-0.3, 0.3, size=(count, 2)),
        "scale": rng.uniform(0.3, 0.6, size=count),
        # Small rotations only: stripe orientation is part of some classes.
        "rotation": rng.uniform(-0.2, 0.2, size=count),
        "frequency": rng.uniform(2.5, 3.5, size=count),
        "phase": rng.uniform(0.0, 2 * np.pi, size=count),
        "brightness": rng.uniform(0.8, 1.1, size=count),
        "background_levels": rng.uniform(0.15, 0.85, size=(count, 2)),
        "background_tint": rng.normal(0.0, 0.05, size=(count, 3)),
        "background_angle": rng.uniform(0.0, 2 * np.pi, size=count),
        "clutter_center": rng.uniform(-0.95, 0.95, size=(count, 4, 2)),
        "clutter_radius": rng.uniform(0.04, 0.1, size=(count, 4)),
        "clutter_colour": rng.uniform(0.0, 1.0, size=(count, 4, 3)),
        "clutter_present": rng.uniform(size=(count, 4)) < 0.7,
        "noise_level": rng.uniform(0.02, 0.06, size=count),
    }
    colour_jitter = rng.normal(0.0, 0.06, size=(count, 3))
    random_colours = _hue_to_rgb(
        rng.uniform(0.0, 1.0, size=count),
        rng.uniform(0.6, 1.0, size=count),
        rng.uniform(0.7, 1.0, size=count),
    )
    class_colours = [specs[label][0] for label in labels]
    base_colours = np.array(
        [_SOURCE_COLOURS.get(colour, (0.0, 0.0, 0.0)) for colour in class_colours]
    ).reshape(count, 3)
    has_class_colour = np.array([colour is not None for colour in class_colours], dtype=bool)
    parameters["colour"] = np.where(
        has_class_colour[:, None], base_colours + colour_jitter, random_colours
    )
    return parameters


def _render(rng, specs, labels, parameters, image_size):
    """Renders images float32 [N, S, S, 3] in [0, 1] from drawn parameters."""
    count = len(labels)
    coordinates = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size * 2.0 - 1.0
    y = coordinates[None, :, None]
    x = coordinates[None, None, :]

    def column(name):
        return parameters[name].astype(np.float32)[:, None, None]

    angle = column("background_angle")
    gradient = np.clip((np.cos(angle) * x + np.sin(angle) * y + 1.0) / 2.0, 0.0, 1.0)[..., None]
    levels = parameters["background_levels"].astype(np.float32)
    tint = parameters["background_tint"].astype(np.float32)
    start = (levels[:, 0:1] + tint)[:, None, None, :]
    end = (levels[:, 1:2] + tint)[:, None, None, :]
    images = start + (end - start) * gradient

    # Clutter goes behind the object so it never hides the class evidence.
    for slot in range(parameters["clutter_center"].shape[1]):
        center = parameters["clutter_center"][:, slot].astype(np.float32)
        radius = parameters["clutter_radius"][:, slot].astype(np.float32)
        inside = (x - center[:, 0, None, None]) ** 2 + (y - center[:, 1, None, None]) ** 2 <= (
            radius[:, None, None] ** 2
        )
        inside &= parameters["clutter_present"][:, slot, None, None]
        colour = parameters["clutter_colour"][:, slot].astype(np.float32)[:, None, None, :]
        images = np.where(inside[..., None], colour, images)

    delta_x = x - parameters["center"][:, 0].astype(np.float32)[:, None, None]
    delta_y = y - parameters["center"][:, 1].astype(np.float32)[:, None, None]
    cosine = np.cos(column("rotation"))
    sine = np.sin(column("rotation"))
    scale = column("scale")
    u = (cosine * delta_x + sine * delta_y) / scale
    v = (-sine * delta_x + cosine * delta_y) / scale

    mask = np.zeros((count, image_size, image_size), dtype=bool)
    pattern = np.zeros((count, image_size, image_size), dtype=bool)
    frequency = column("frequency")
    phase = column("phase")
    shapes = np.array([specs[label][2] for label in labels])
    textures = np.array([specs[label][1] for label in labels])
    for shape in np.unique(shapes):
        selected = shapes == shape
        mask[selected] = _shape_mask(shape, u[selected], v[selected])
    for texture in np.unique(textures):
        selected = textures == texture
        pattern[selected] = _texture_pattern(
            texture, u[selected], v[selected], frequency[selected], phase[selected]
        )

    colour = (parameters["colour"] * parameters["brightness"][:, None]).astype(np.float32)
    colour = np.clip(colour, 0.0, 1.0)[:, None, None, :]
    dark_shade = 0.3
    foreground = colour * np.where(pattern[..., None], np.float32(1.0), np.float32(dark_shade))
    images = np.where(mask[..., None], foreground, images)

    noise = rng.standard_normal(size=images.shape, dtype=np.float32)
    images = images + noise * column("noise_level")[..., None]
    return np.clip(images, 0.0, 1.0)


def make_shape_images(num_classes, images_per_class, image_size=64, seed=0, task="source"):
    """Draws a balanced, shuffled synthetic image classification data set.

    Every class is a distinct visual concept (see the module docstring); every
    image has its own position, scale, small rotation, stripe frequency and
    phase, colour jitter, gradient background, up to four clutter blobs behind
    the object and Gaussian pixel noise.

    Args:
        num_classes: Number of classes, an integer in `[2, 48]` for
            `task="source"` and in `[2, 15]` for `task="target"`. The first
            `num_classes` concepts of the task are used.
        images_per_class: Number of images per class, an integer >= 1.
        image_size: Height and width in pixels, an integer >= 8.
        seed: Non-negative integer; the output is a deterministic function of
            all arguments.
        task: `"source"` or `"target"`; the two concept families share no class.

    Returns:
        A tuple `(images, labels, class_names)`:
        images: uint8 array `[num_classes * images_per_class, image_size,
            image_size, 3]`, RGB values in `[0, 255]`.
        labels: int32 array `[num_classes * images_per_class]` in
            `[0, num_classes)`, each class exactly `images_per_class` times, in
            a seed-dependent shuffled order.
        class_names: list of `num_classes` distinct strings made of lower-case
            letters and underscores (usable as folder names), indexed by label.

    Raises:
        ValueError: If an argument is out of range.
    """
    _check_choice("task", task, _TASKS)
    max_classes = MAX_SOURCE_CLASSES if task == "source" else MAX_TARGET_CLASSES
    num_classes = check_integer("num_classes", num_classes, 2, max_classes)
    images_per_class = check_integer("images_per_class", images_per_class, 1)
    image_size = check_integer("image_size", image_size, 8)
    seed = check_integer("seed", seed, 0)

    specs = _class_specs(task)[:num_classes]
    rng = np.random.default_rng([seed, _TASKS.index(task)])
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int32), images_per_class))
    parameters = _draw_parameters(rng, specs, labels)

    images = np.empty((len(labels), image_size, image_size, 3), dtype=np.uint8)
    # Chunking bounds the float32 working memory independently of N.
    for start in range(0, len(labels), _RENDER_CHUNK_SIZE):
        stop = min(start + _RENDER_CHUNK_SIZE, len(labels))
        chunk_parameters = {name: values[start:stop] for name, values in parameters.items()}
        rendered = _render(rng, specs, labels[start:stop], chunk_parameters, image_size)
        images[start:stop] = np.round(rendered * 255.0).astype(np.uint8)
    return images, labels.astype(np.int32), [_class_name(spec) for spec in specs]


def _encode_bmp(image):
    """Encodes uint8 [H, W, 3] RGB as an uncompressed 24-bit BMP."""
    height, width = image.shape[:2]
    row_size = (width * 3 + 3) & ~3
    # BMP stores rows bottom-up, pixels as BGR, rows padded to 4 bytes.
    rows = np.zeros((height, row_size), dtype=np.uint8)
    rows[:, : width * 3] = image[::-1, :, ::-1].reshape(height, width * 3)
    pixel_bytes = rows.tobytes()
    header_size = 14 + 40
    file_header = b"BM" + struct.pack("<IHHI", header_size + len(pixel_bytes), 0, 0, header_size)
    # 24 bits per pixel, no compression, 72 dpi (2835 pixels per metre).
    info_header = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixel_bytes), 2835, 2835, 0, 0
    )
    return file_header + info_header + pixel_bytes


def _encode_gif(image):
    """Encodes uint8 [H, W, 3] RGB as a single-frame GIF with a 3-3-2 palette.

    Pillow is not a dependency, so the LZW stream is written "uncompressed":
    only literal codes, with a clear code often enough that the decoder's code
    width never grows beyond 9 bits. Colours are quantised (3 bits red and
    green, 2 bits blue), so decoded pixels differ from the input by < 64.
    """
    height, width = image.shape[:2]
    red = image[..., 0].astype(np.uint16) >> 5
    green = image[..., 1].astype(np.uint16) >> 5
    blue = image[..., 2].astype(np.uint16) >> 6
    indices = ((red << 5) | (green << 2) | blue).ravel()
    palette_index = np.arange(256)
    palette = np.stack(
        [
            ((palette_index >> 5) & 7) * 255 // 7,
            ((palette_index >> 2) & 7) * 255 // 7,
            (palette_index & 3) * 255 // 3,
        ],
        axis=1,
    ).astype(np.uint8)

    clear_code, end_code = 256, 257
    # 250 literals after a clear add 249 entries (codes 258..506), below the
    # 512 that would switch a decoder to 10-bit codes.
    literals_per_clear = 250
    codes = []
    for start in range(0, len(indices), literals_per_clear):
        codes.append(np.array([clear_code], dtype=np.uint16))
        codes.append(indices[start : start + literals_per_clear])
    codes.append(np.array([end_code], dtype=np.uint16))
    codes = np.concatenate(codes)
    bits = ((codes[:, None] >> np.arange(9, dtype=np.uint16)) & 1).astype(np.uint8).ravel()
    data = np.packbits(bits, bitorder="little").tobytes()
    # Image data goes in length-prefixed sub-blocks of at most 255 bytes.
    sub_blocks = b"".join(
        bytes([len(data[offset : offset + 255])]) + data[offset : offset + 255]
        for offset in range(0, len(data), 255)
    )

    # Flags 0xF7: global colour table present, 8-bit colour resolution, 256 entries.
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + palette.tobytes()
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    minimum_code_size = bytes([8])
    return screen + descriptor + minimum_code_size + sub_blocks + b"\x00;"


def _encode(image, extension):
    extension = extension.lower()
    if extension in ("jpg", "jpeg"):
        return tf.io.encode_jpeg(image, quality=95).numpy()
    if extension == "png":
        return tf.io.encode_png(image).numpy()
    if extension == "bmp":
        return _encode_bmp(image)
    if extension == "gif":
        return _encode_gif(image)
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
            24-bit, GIF files are single-frame with colours quantised to 3-3-2
            bits (decoders return them as 4-D `[1, H, W, 3]` unless told
            otherwise), and the upper-case spellings test case-insensitive
            extension matching.
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


def _constant_pattern(shape, fan_in):
    """Deterministic, non-degenerate weights in [-1, 1], scaled like He init.

    A multiplicative hash modulo the prime 1009 instead of a short-period ramp:
    with a period that divides into the channel stride, output channels would
    get identical weights and the features would repeat.
    """
    size = int(np.prod(shape))
    ramp = ((np.arange(size) * 389) % 1009) / 504.0 - 1.0
    # The ramp is ~uniform on [-1, 1] (variance 1/3); sqrt(3) restores He
    # variance so activations keep their scale through the layers.
    return (ramp * np.sqrt(3.0 * 2.0 / fan_in)).reshape(shape).astype(np.float32)


def check_widths(widths):
    """Returns `widths` as a tuple of ints, or raises a Keras-style ValueError.

    Args:
        widths: Output channels of a `TinyBackbone`'s stem and blocks: a
            sequence of at least 2 positive integers.
    """
    try:
        values = tuple(widths)
    except TypeError:
        values = ()
    if len(values) < 2 or not all(
            isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1
            for w in values):
        raise ValueError(
            "Invalid value for `widths`. Expected a sequence of at least 2 positive "
            f"integers. Received: widths={widths!r}")
    return tuple(int(w) for w in values)


class TinyBackbone(tf.Module):
    """A few-thousand-parameter CNN in the TF Hub image feature vector convention.

    Layers: `stem` (3x3 conv, stride 2), one `block_<k>` per entry of
    `widths[1:]` (3x3 conv, stride 2), and `head` (1x1 conv to `widths[-1]`);
    each conv is followed by batch normalization and ReLU, and the result is
    averaged over height and width. Variables are named Keras-style, in this
    order per layer: `<layer>_conv/kernel`, `<layer>_bn/gamma`, `<layer>_bn/beta`,
    `<layer>_bn/moving_mean`, `<layer>_bn/moving_variance` (the moving
    statistics are not trainable), with `<layer>` in `stem, block_1, ...,
    block_<len(widths) - 1>, head`. `variables` and `trainable_variables` are
    returned in that layer order.

    Args:
        widths: Sequence of at least 2 positive integers: output channels of
            the stem, then of each block.
        constant_init: If True, kernels get a fixed deterministic pattern (so
            outputs are exactly reproducible across instances); otherwise
            seeded He-normal values.
        seed: Non-negative integer seeding the He-normal initialization.
        name: Optional module name.
    """

    def __init__(self, widths=(4, 8, 8, 16), constant_init=False, seed=0, name=None):
        super().__init__(name=name)
        self._widths = check_widths(widths)
        seed = check_integer("seed", seed, 0)
        self._pool_features = True
        rng = np.random.default_rng(seed)
        layers = [("stem", 3, 2, self._widths[0])]
        layers += [
            (f"block_{index}", 3, 2, width)
            for index, width in enumerate(self._widths[1:], start=1)
        ]
        layers += [("head", 1, 1, self._widths[-1])]
        self._layer_strides = tuple(stride for _, _, stride, _ in layers)
        # One flat list in layer order: `tf.Module.variables` would sort by
        # attribute name, and block order matters to layer-grouping rules.
        self._ordered_variables = []
        input_channels = 3
        for layer_name, kernel_size, _, output_channels in layers:
            kernel_shape = (kernel_size, kernel_size, input_channels, output_channels)
            fan_in = kernel_size * kernel_size * input_channels
            if constant_init:
                kernel = _constant_pattern(kernel_shape, fan_in)
            else:
                kernel = rng.standard_normal(kernel_shape) * np.sqrt(2.0 / fan_in)
                kernel = kernel.astype(np.float32)
            ones = np.ones((output_channels,), np.float32)
            zeros = np.zeros((output_channels,), np.float32)
            batch_norm_scope = f"{layer_name}_bn"
            self._add_variable(f"{layer_name}_conv", "kernel", kernel, trainable=True)
            self._add_variable(batch_norm_scope, "gamma", ones, trainable=True)
            self._add_variable(batch_norm_scope, "beta", zeros, trainable=True)
            self._add_variable(batch_norm_scope, "moving_mean", zeros, trainable=False)
            self._add_variable(batch_norm_scope, "moving_variance", ones, trainable=False)
            input_channels = output_channels
        # Real TF Hub modules expose this list; the library must accept it empty.
        self.regularization_losses = []

    def _add_variable(self, scope, name, initial_value, trainable):
        # The trailing "/" makes the scope absolute, so the variable names do
        # not depend on whatever name scope the caller happens to be in.
        with tf.name_scope(f"{scope}/"):
            variable = tf.Variable(initial_value, trainable=trainable, name=name)
        self._ordered_variables.append(variable)

    @property
    def variables(self):
        """All variables, in layer order, as a tuple."""
        return tuple(self._ordered_variables)

    @property
    def trainable_variables(self):
        """Trainable variables (kernels, gammas, betas), in layer order, as a tuple."""
        return tuple(variable for variable in self._ordered_variables if variable.trainable)

    @property
    def widths(self):
        """The `widths` the module was built with; features have `widths[-1]` channels."""
        return self._widths

    @tf.function(reduce_retracing=True)
    def __call__(self, images, training=False):
        """Computes image features.

        Args:
            images: float32 `[N, H, W, 3]`, RGB in `[0, 1]`.
            training: Python bool. If True, batch normalization uses batch
                statistics and updates the moving statistics (momentum 0.99);
                if False, it uses the moving statistics.

        Returns:
            float32 `[N, widths[-1]]` features (non-negative, post-ReLU).
        """
        # TF Hub image modules take [0, 1] inputs and rescale internally.
        outputs = tf.convert_to_tensor(images, dtype=tf.float32) * 2.0 - 1.0
        for layer_index, stride in enumerate(self._layer_strides):
            kernel, gamma, beta, moving_mean, moving_variance = self._ordered_variables[
                5 * layer_index : 5 * layer_index + 5
            ]
            outputs = tf.nn.conv2d(outputs, kernel, strides=stride, padding="SAME")
            if training:
                mean, variance = tf.nn.moments(outputs, axes=[0, 1, 2])
                momentum = _BATCH_NORM_MOMENTUM
                moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
                moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
            else:
                mean, variance = moving_mean, moving_variance
            outputs = tf.nn.batch_normalization(
                outputs, mean, variance, beta, gamma, _BATCH_NORM_EPSILON
            )
            outputs = tf.nn.relu(outputs)
        if self._pool_features:
            outputs = tf.reduce_mean(outputs, axis=[1, 2])
        return outputs


class _FeatureMapBackbone(TinyBackbone):
    """A TinyBackbone that wrongly returns the [N, h, w, C] map instead of [N, C]."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._pool_features = False


def save_feature_vector_module(module, path):
    """Saves a module as a TF2 TF Hub style SavedModel.

    The saved root object has `__call__(images, training=False)` traced for
    `images` float32 `[None, None, None, 3]` and both `training=True` and
    `training=False`, plus `variables`, `trainable_variables` (lists, in the
    module's order) and `regularization_losses` (an empty list), matching what
    `tf.saved_model.load` returns for a real TF Hub image feature vector model.

    Args:
        module: A `tf.Module` whose `__call__` is a `tf.function` taking
            `(images, training)`, e.g. a `TinyBackbone`.
        path: Directory to write the SavedModel to.

    Returns:
        `path` as a str.

    Raises:
        TypeError: If `module` is not a `tf.Module`.
    """
    if not isinstance(module, tf.Module):
        raise TypeError(
            "Invalid type for `module`. Expected a `tf.Module`. "
            f"Received: module of type {type(module).__name__}"
        )
    path = os.fspath(path)
    image_spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    module_call = module.__call__

    # A fresh function traced only for any image shape: the module's own may
    # hold traces for fixed shapes (from training), and a restored SavedModel
    # runs the first saved trace an input is compatible with.
    @tf.function
    def call(images, training=False):
        return module_call(images, training=training)

    for training in (False, True):
        call.get_concrete_function(image_spec, training=training)
    # A bare trackable root, because `tf.Module.variables` is a read-only
    # property and hub consumers read these as plain saved attributes.
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    root.variables = list(module.variables)
    root.trainable_variables = list(module.trainable_variables)
    root.regularization_losses = []
    tf.saved_model.save(root, path)
    return path


def build_tiny_backbone(path, **kwargs):
    """Creates a `TinyBackbone(**kwargs)` and saves it with `save_feature_vector_module`.

    Returns:
        `path` as a str.
    """
    return save_feature_vector_module(TinyBackbone(**kwargs), path)


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

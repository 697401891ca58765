"""Generated shape images: an offline source task and target task.

Nothing here downloads anything: the images are drawn procedurally with numpy.
Two image concept families are provided so that a genuine transfer-learning
story can be told offline (the quickstart, `tfhub_ft.demo.quickstart`):

* `task="source"`: up to 48 classes, each a combination of a colour (red, green,
  blue), a fill texture (solid, horizontal stripes, vertical stripes, checker)
  and a shape (disc, square, triangle, ring).
* `task="target"`: up to 15 classes with new shapes (cross, diamond, frame,
  semicircle, hexagon) and new textures (dots, diagonal stripes, concentric
  rings), drawn in a random colour so that colour carries no label information.

Features learned on the source family (edges, corners, periodic textures) help
on the target family, but no target class appears in the source family.
"""

import numpy as np

from tfhub_ft.config import check_integer

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


"""Image decoding and resizing, shared by the data pipeline, the model and
the exported SavedModel so that training and serving see the same pixels.

Everything here is TensorFlow graph ops (the export calls it inside a
`tf.function`), so a served model decodes exactly as training did:

- Formats, told by their first bytes (not the file name): JPEG, PNG, GIF
  (first frame), BMP and WebP.
- Transparency (RGBA, gray + alpha, palette PNG with a transparent entry,
  WebP with alpha, a GIF's transparent colour) is composited over a white
  background.
- The EXIF orientation (tags 2-8) of a JPEG (APP1 segment), PNG (eXIf
  chunk) or WebP (EXIF chunk) is applied, unless turned off.
- The size is read from the header first: an image above `max_pixels` is
  refused with its size named, and a large JPEG is decoded at a reduced
  scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling) when its short side stays at
  least twice the target size.
"""

import contextlib
import functools
import logging
import re

import tensorflow as tf

from tfhub_ft import image_files, native_stderr
from tfhub_ft.config import FineTuneConfig

logger = logging.getLogger(__name__)

# File name extensions listed in class folders: what TensorFlow decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp")

# Formats by their first bytes, the codes `image_format` returns.
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP = 0, 1, 2, 3, 4, 5
FORMAT_NAMES = {UNKNOWN: "unknown", JPEG: "JPEG", PNG: "PNG", GIF: "GIF", BMP: "BMP",
                WEBP: "WebP"}

# Where transparent pixels end up: white, in training and serving alike.
BACKGROUND = 255

_DEFAULTS = FineTuneConfig()
_JPEG_RATIOS = (1, 2, 4, 8)
# The EXIF block (APP1) starts within the first 64 KiB of a JPEG: only the
# APP0 (JFIF) segment, at most 64 KiB, may come before it.
_EXIF_SEARCH_BYTES = 2 * 65536
_MAX_IFD_ENTRIES = 64
_PAD = 1024


def image_format(encoded):
    """Tells an encoded image's format by its first bytes.

    Args:
        encoded: tf.string scalar.

    Returns:
        int32 scalar: `JPEG`, `PNG`, `GIF`, `BMP`, `WEBP` or `UNKNOWN`.
    """
    head = _padded_head(encoded, 12)
    first = lambda n: tf.strings.substr(head, 0, n)  # noqa: E731
    is_webp = tf.logical_and(tf.equal(first(4), b"RIFF"),
                             tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    codes = [
        (tf.equal(first(3), image_files.JPEG_SIGNATURE), JPEG),
        (tf.equal(first(8), b"\x89PNG\r\n\x1a\n"), PNG),
        (tf.logical_or(tf.equal(first(6), b"GIF87a"), tf.equal(first(6), b"GIF89a")), GIF),
        (tf.equal(first(2), b"BM"), BMP),
        (is_webp, WEBP),
    ]
    result = tf.constant(UNKNOWN, tf.int32)
    for condition, code in reversed(codes):
        result = tf.where(condition, tf.constant(code, tf.int32), result)
    return result


def _bytes_at(padded, position, count):
    """int64 [count] bytes of `padded` at `position`, and whether in range."""
    position = tf.cast(position, tf.int64)
    limit = tf.cast(tf.strings.length(padded), tf.int64) - count
    clamped = tf.clip_by_value(position, 0, tf.maximum(limit, 0))
    values = tf.io.decode_raw(tf.strings.substr(padded, clamped, count), tf.uint8)
    values = tf.reshape(tf.cast(values, tf.int64), [count])
    return values, tf.equal(clamped, position)


def _number(values, little_endian):
    """Unsigned integer from int64 bytes [n] in the given byte order."""
    count = values.shape[0]
    weights_big = tf.constant([256 ** (count - 1 - i) for i in range(count)], tf.int64)
    weights_little = tf.reverse(weights_big, [0])
    weights = tf.where(little_endian, weights_little, weights_big)
    return tf.reduce_sum(values * weights)


def _padded_head(encoded, length):
    return tf.strings.join([tf.strings.substr(encoded, 0, length),
                            tf.constant(b"\x00" * _PAD)])


def header_size(encoded, image_format_code=None):
    """Reads (height, width) from an image's header, without decoding it.

    Args:
        encoded: tf.string scalar, a JPEG, PNG, GIF, BMP or WebP file.
        image_format_code: `image_format(encoded)`, if already known.

    Returns:
        int64 [2]: height and width in pixels; [0, 0] for an unknown format
        or a header TensorFlow cannot read.
    """
    code = image_format(encoded) if image_format_code is None else image_format_code
    head = _padded_head(encoded, 64)
    true = tf.constant(True)

    def little(position, count):
        return _number(_bytes_at(head, position, count)[0], true)

    def big(position, count):
        return _number(_bytes_at(head, position, count)[0], tf.logical_not(true))

    def jpeg():
        # extract_jpeg_shape fails on a damaged header; the decoder would too.
        return tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)

    def png():
        return tf.stack([big(20, 4), big(16, 4)])

    def gif():
        return tf.stack([little(8, 2), little(6, 2)])

    def bmp():
        height = little(22, 4)
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down
        return tf.stack([height, little(18, 4)])

    def webp():
        chunk = tf.strings.substr(head, 12, 4)
        lossy = tf.stack([little(28, 2) % 16384, little(26, 2) % 16384])
        bits = little(21, 4)
        lossless = tf.stack([(bits // 16384) % 16384 + 1, bits % 16384 + 1])
        extended = tf.stack([little(27, 3) + 1, little(24, 3) + 1])
        return tf.where(tf.equal(chunk, b"VP8 "), lossy,
                        tf.where(tf.equal(chunk, b"VP8L"), lossless, extended))

    branches = [lambda: tf.zeros([2], tf.int64), jpeg, png, gif, bmp, webp]
    return tf.switch_case(code, branches)


def _last_position(encoded, marker):
    """Byte offset of the last occurrence of `marker` in `encoded`, or -1."""
    parts = tf.strings.split(encoded, sep=marker)
    found = tf.size(parts) > 1
    position = tf.strings.length(encoded) - tf.strings.length(parts[-1]) - len(marker)
    return tf.where(found, position, -1)


def is_complete(encoded, image_format_code=None):
    """Whether a JPEG or PNG file has its end: a JPEG's last end-of-image
    marker (FFD9) comes after its last start-of-scan (FFDA; neither can occur
    inside compressed data, and an EXIF thumbnail's come earlier), a PNG has
    its IEND chunk. Bytes after the end are allowed. Other formats: True.

    Returns:
        bool scalar.
    """
    code = image_format(encoded) if image_format_code is None else image_format_code
    return tf.case([
        (tf.equal(code, JPEG), lambda: _last_position(encoded, b"\xff\xd9")
         > _last_position(encoded, b"\xff\xda")),
        (tf.equal(code, PNG), lambda: _last_position(encoded, b"IEND") >= 0),
    ], default=lambda: tf.constant(True))


def _exif_location(encoded, code):
    """(data, TIFF header offset in it, found) of an image's EXIF block.

    JPEG: the APP1 segment ("Exif\\0\\0" after an FFE1 marker) within the
    first 128 KiB. PNG: the eXIf chunk. WebP: the EXIF chunk (with or
    without the "Exif\\0\\0" prefix). `data` is zero-padded so reads
    past its end stay in range.
    """
    zeros = tf.constant(b"\x00" * (_MAX_IFD_ENTRIES * 12 + _PAD))

    def jpeg():
        head = tf.strings.substr(encoded, 0, _EXIF_SEARCH_BYTES)
        parts = tf.strings.split(head, sep=b"Exif\x00\x00", maxsplit=1)
        padded = tf.strings.join([head, zeros])
        tiff = tf.cast(tf.strings.length(parts[0]), tf.int64) + 6
        marker, ok_marker = _bytes_at(padded, tiff - 10, 2)
        found = tf.logical_and(tf.equal(tf.size(parts), 2), tf.logical_and(
            ok_marker, tf.reduce_all(tf.equal(marker, tf.constant([0xFF, 0xE1], tf.int64)))))
        return padded, tiff, found

    def chunk(name, header):
        def locate():
            parts = tf.strings.split(encoded, sep=name, maxsplit=1)
            padded = tf.strings.join([encoded, zeros])
            tiff = tf.cast(tf.strings.length(parts[0]), tf.int64) + header
            prefix = tf.strings.substr(padded, tf.cast(tiff, tf.int32), 6)
            tiff = tf.where(tf.equal(prefix, b"Exif\x00\x00"), tiff + 6, tiff)
            return padded, tiff, tf.equal(tf.size(parts), 2)
        return locate

    return tf.case([(tf.equal(code, JPEG), jpeg), (tf.equal(code, PNG), chunk(b"eXIf", 4)),
                    (tf.equal(code, WEBP), chunk(b"EXIF", 8))],
                   default=lambda: (zeros, tf.constant(0, tf.int64), tf.constant(False)))


def exif_orientation(encoded):
    """The EXIF orientation of an image, from tag 0x0112 of its IFD0.

    Read from a JPEG's APP1 segment, a PNG's eXIf chunk or a WebP's EXIF
    chunk, in both TIFF byte orders ("II", "MM").

    Args:
        encoded: tf.string scalar.

    Returns:
        int32 scalar in [1, 8]; 1 (as stored) when the file has no EXIF
        block (GIF and BMP have none), or its tag is missing or out of range.
    """
    code = image_format(encoded)

    def read():
        padded, tiff, found = _exif_location(encoded, code)
        order, _ = _bytes_at(padded, tiff, 2)
        little_endian = tf.reduce_all(tf.equal(order, 0x49))
        big_endian = tf.reduce_all(tf.equal(order, 0x4D))
        offset_bytes, _ = _bytes_at(padded, tiff + 4, 4)
        ifd = tiff + _number(offset_bytes, little_endian)
        count_bytes, ok_count = _bytes_at(padded, ifd, 2)
        count = tf.minimum(_number(count_bytes, little_endian), _MAX_IFD_ENTRIES)
        entries, ok_entries = _bytes_at(padded, ifd + 2, _MAX_IFD_ENTRIES * 12)
        entries = tf.reshape(entries, [_MAX_IFD_ENTRIES, 12])

        def pair(column):
            first, second = entries[:, column], entries[:, column + 1]
            return tf.where(little_endian, first + 256 * second, 256 * first + second)

        matches = tf.logical_and(tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64) < count,
                                 tf.equal(pair(0), 0x0112))
        values = tf.boolean_mask(pair(8), matches)
        value = tf.cond(tf.size(values) > 0, lambda: values[0],
                        lambda: tf.constant(1, tf.int64))
        valid = tf.reduce_all(tf.stack([
            found, tf.logical_or(little_endian, big_endian), ok_count,
            ok_entries, value >= 1, value <= 8]))
        return tf.cast(tf.where(valid, value, 1), tf.int32)

    has_exif = tf.logical_or(tf.equal(code, JPEG),
                             tf.logical_or(tf.equal(code, PNG), tf.equal(code, WEBP)))
    return tf.cond(has_exif, read, lambda: tf.constant(1, tf.int32))


def apply_orientation(image, orientation):
    """Turns an image [H, W, C] stored with EXIF `orientation` upright.

    Tags as the EXIF standard numbers them: 2 mirrored, 3 rotated 180, 4
    flipped, 5 transposed, 6 rotated 90 clockwise to view (a phone held
    upright), 7 transversed, 8 rotated 90 counter-clockwise to view.
    """
    # A uint8 (or int32) Transpose kernel, which tf.image.rot90 and
    # tf.image.transpose use (and which grappler moves before a cast to
    # float), makes oneDNN log an error line ("oneDNN supports DT_UINT8 only
    # on platforms with AVX-512") when the graph is built, in every process
    # that decodes. So each pixel's 3 bytes plus a 0x3F byte (which keeps
    # the float normal: no NaN, no denormal) are bitcast to one float32 and
    # transposed as floats, bit for bit.
    def transpose(x):
        pad = tf.fill(tf.concat([tf.shape(x)[:-1], [1]], 0), tf.constant(0x3F, tf.uint8))
        packed = tf.bitcast(tf.concat([x, pad], -1), tf.float32)
        return tf.bitcast(tf.transpose(packed), tf.uint8)[..., :3]

    branches = [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        lambda: transpose(image),
        lambda: tf.reverse(transpose(image), [1]),
        lambda: tf.reverse(transpose(image), [0, 1]),
        lambda: tf.reverse(transpose(image), [0]),
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)


def composite_over_background(image):
    """Composites uint8 [H, W, C] (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
    over the white `BACKGROUND`, returning uint8 RGB [H, W, 3]."""
    channels = tf.shape(image)[-1]
    opaque = tf.fill(tf.concat([tf.shape(image)[:-1], [1]], 0), tf.constant(255, tf.uint8))

    def rgba(color, alpha):
        return tf.concat([color, alpha], -1)

    branches = [
        lambda: rgba(tf.repeat(image[..., :1], 3, -1), opaque),
        lambda: rgba(tf.repeat(image[..., :1], 3, -1), image[..., 1:2]),
        lambda: rgba(image[..., :3], opaque),
        lambda: image[..., :4],
    ]
    image = tf.switch_case(tf.clip_by_value(channels, 1, 4) - 1, branches)
    alpha = tf.cast(image[..., 3:], tf.float32) / 255.0
    color = tf.cast(image[..., :3], tf.float32)
    composited = color * alpha + float(BACKGROUND) * (1.0 - alpha)
    return tf.cast(tf.clip_by_value(tf.round(composited), 0, 255), tf.uint8)


def _hex(data):
    """Bytes as hex text, "3c 68 74": an error message must be valid UTF-8."""
    values = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    table = tf.constant([f"{i:02x}" for i in range(256)])
    return tf.strings.reduce_join(tf.gather(table, values), separator=" ")


_BYTE_STRINGS = [bytes([i]) for i in range(256)]


def _replace_bytes(data, position, new):
    """`data` with the bytes at `position` replaced by `new` (same length)."""
    length = tf.strings.length(new)
    rest = tf.strings.length(data) - tf.cast(position, tf.int32) - length
    return tf.strings.join([tf.strings.substr(data, 0, tf.cast(position, tf.int32)), new,
                            tf.strings.substr(data, tf.cast(position, tf.int32) + length,
                                              rest)])


def gif_transparency_to_white(encoded):
    """Makes a GIF's transparent colour opaque white in its first frame.

    TensorFlow's GIF decoder outputs black for transparent pixels, which
    cannot be told from real black afterwards; GIF transparency is one
    palette index, so the file itself is changed: that index's colour (in
    the first frame's local colour table, else the global one) becomes
    white and the frame's transparency flag is cleared. The first frame's
    Graphic Control Extension must directly precede its image descriptor,
    as encoders write it; otherwise the file is returned unchanged.

    Args:
        encoded: tf.string scalar, a GIF.

    Returns:
        tf.string scalar, a GIF that decodes to the first frame composited
        over white.
    """
    parts = tf.strings.split(encoded, sep=b"\x21\xf9\x04", maxsplit=1)
    found = tf.equal(tf.size(parts), 2)
    extension = tf.cast(tf.strings.length(parts[0]), tf.int64)
    padded = tf.strings.join([tf.strings.substr(encoded, 0, 1024),
                              tf.constant(b"\x00" * _PAD)])
    whole = tf.strings.join([encoded, tf.constant(b"\x00" * _PAD)])

    def byte(data, position):
        return _bytes_at(data, position, 1)[0][0]

    packed = byte(whole, extension + 3)
    index = byte(whole, extension + 6)
    descriptor = extension + 8
    local = tf.logical_and(tf.equal(byte(whole, descriptor), 0x2C),
                           tf.equal(byte(whole, descriptor + 9) // 128 % 2, 1))
    has_global = tf.equal(byte(padded, 10) // 128 % 2, 1)
    table = tf.where(local, descriptor + 10, 13)
    entry = table + 3 * index
    length = tf.cast(tf.strings.length(encoded), tf.int64)
    valid = tf.reduce_all(tf.stack([
        found, tf.equal(packed % 2, 1), tf.logical_or(local, has_global),
        entry + 3 <= length, extension + 8 <= length]))

    def patch():
        white = _replace_bytes(encoded, entry, tf.constant(b"\xff\xff\xff"))
        cleared = tf.gather(tf.constant(_BYTE_STRINGS), packed - 1)
        return _replace_bytes(white, extension + 3, cleared)

    return tf.cond(valid, patch, lambda: encoded)


def _jpeg_ratio(size, image_size):
    """Index into `_JPEG_RATIOS` of the largest scale-down keeping the short
    side at least twice `image_size`."""
    if image_size is None:
        return tf.constant(0, tf.int32)
    short = tf.reduce_min(size)
    index = tf.constant(0, tf.int32)
    for i, ratio in enumerate(_JPEG_RATIOS[1:], start=1):
        index = tf.where(short // ratio >= 2 * image_size, tf.constant(i, tf.int32), index)
    return index


def decode_image(encoded, image_size=None, max_pixels=_DEFAULTS.max_image_pixels,
                 exif_orientation_enabled=_DEFAULTS.exif_orientation, name=None):
    """Decodes one encoded image to upright, opaque RGB.

    Args:
        encoded: tf.string scalar, a JPEG, PNG, GIF (first frame), BMP or
            WebP file.
        image_size: The side the image will be resized to, or None; a JPEG
            whose short side is at least twice it (4x, 8x, 16x) is decoded
            at 1/2 (1/4, 1/8) scale.
        max_pixels: Largest height * width accepted, read from the header,
            or None for no limit.
        exif_orientation_enabled: Apply the EXIF orientation (JPEG, PNG,
            WebP).
        name: tf.string scalar naming the image in error messages (a path,
            or "image_bytes[3]"), valid UTF-8; None says "image".

    Returns:
        uint8 tensor [H, W, 3] in [0, 255]. Grayscale is repeated to three
        channels; transparency is composited over white.

    Raises:
        tf.errors.InvalidArgumentError: when run, for an unknown format, a
            truncated JPEG or PNG (`is_complete`) or an image above
            `max_pixels` (naming `name`, and the size), or whatever the
            decoder reports for another damaged file.
    """
    name = tf.constant("image") if name is None else tf.convert_to_tensor(name, tf.string)
    code = image_format(encoded)
    checks = [tf.debugging.Assert(
        tf.not_equal(code, UNKNOWN),
        [tf.strings.join([name, " is not a JPEG, PNG, GIF, BMP or WebP image "
                          "(unknown format); its first bytes are (hex):"]),
         _hex(tf.strings.substr(encoded, 0, 8)), "and its length in bytes is",
         tf.strings.length(encoded)], summarize=8)]
    with tf.control_dependencies(checks):
        checks.append(tf.debugging.Assert(
            is_complete(tf.identity(encoded), code),
            [tf.strings.join([name, " is a truncated ",
                              tf.gather(tf.constant(list(FORMAT_NAMES.values())), code),
                              " file (cut short: no end marker after its image data); its "
                              "length in bytes is ", tf.strings.as_string(
                                  tf.strings.length(encoded))])]))
    # Data dependencies, not only control ones: the decoders inside the
    # `switch_case` branches must not run before the checks.
    with tf.control_dependencies(checks):
        checked = tf.identity(encoded)
    size = header_size(checked, code)
    if max_pixels is not None:
        pixels = size[0] * size[1]
        checks.append(tf.debugging.Assert(
            pixels <= max_pixels,
            [tf.strings.join([
                name, " is too large: its header says ", tf.strings.as_string(size[1]),
                " x ", tf.strings.as_string(size[0]), " pixels = ",
                tf.strings.as_string(pixels), f", above max_image_pixels={max_pixels}. "
                "Shrink the image (an export keeps the limit it was trained with; "
                "max_image_pixels changes it for the next training run)."])]))
    with tf.control_dependencies(checks):
        encoded = tf.identity(encoded)

    def jpeg():
        index = _jpeg_ratio(size, image_size)
        return tf.switch_case(index, [
            (lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r))
            for r in _JPEG_RATIOS])

    def with_alpha():
        decoded = tf.io.decode_image(encoded, channels=0, expand_animations=False)
        return composite_over_background(decoded)

    def gif():
        return tf.io.decode_image(gif_transparency_to_white(encoded), channels=3,
                                  expand_animations=False)

    def other():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    image = tf.case([(tf.equal(code, JPEG), jpeg), (tf.equal(code, GIF), gif),
                     (tf.logical_or(tf.equal(code, PNG), tf.equal(code, WEBP)), with_alpha)],
                    default=other)
    if exif_orientation_enabled:
        image = apply_orientation(image, exif_orientation(encoded))
    image.set_shape([None, None, 3])
    return image


def resize_images(images, image_size):
    """Resizes images to a square of side `image_size`, keeping their dtype.

    uint8 images (decoded files: training, `serving_default`) that shrink
    are averaged over the input pixels each output pixel covers (area
    interpolation: antialiased, so large photos shrink without aliasing,
    and about 3x faster on a CPU than antialiased bilinear, which took
    most of the decoding time of 400-px photos). Float images that shrink
    (`serving_images`, gradients through the model) use antialiased
    bilinear, which has a gradient; the two differ slightly, most on fine
    texture.
    Enlarging is bilinear, shrinking one side only antialiased bilinear.
    An image already at the size is returned unchanged.

    Args:
        images: uint8 [..., H, W, 3] in [0, 255] or float32 in [0, 1], a
            tensor or numpy array.
        image_size: int, the side of the output.

    Returns:
        Tensor [..., image_size, image_size, 3] of the input dtype (uint8 is
        rounded back to uint8).
    """
    images = tf.convert_to_tensor(images)
    size = tf.constant([image_size, image_size])
    resized = tf.cond(
        tf.reduce_all(tf.shape(images)[-3:-1] == size),
        lambda: images,
        lambda: _resize(images, size),
    )
    # tf.cond forgets the static size; the backbone and the batching need it.
    resized.set_shape(images.shape[:-3].concatenate([image_size, image_size, 3]))
    return resized


def _resize(images, size):
    shape = tf.shape(images)[-3:-1]
    cases = [
        # Antialiasing filters nothing when enlarging, and costs twice the time.
        (tf.reduce_all(shape <= size), lambda: tf.image.resize(images, size))]
    if images.dtype == tf.uint8:
        # Not for float images: ResizeArea has no gradient, and a gradient
        # through a tf.case is built for every branch.
        cases.insert(0, (tf.reduce_all(shape >= size),
                         lambda: tf.image.resize(images, size, method="area")))
    resized = tf.case(cases, default=lambda: tf.image.resize(images, size, antialias=True))
    if images.dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.cast(resized, images.dtype)


def to_unit_range(images):
    """Converts images to float32 RGB in [0, 1], the hub image convention.

    Args:
        images: integer images in [0, 255] or floating images in [0, 1].

    Returns:
        float32 tensor of the same shape.
    """
    if images.dtype.is_integer:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def decode_and_resize(encoded, image_size, max_pixels=_DEFAULTS.max_image_pixels,
                      exif_orientation_enabled=_DEFAULTS.exif_orientation, name=None):
    """Decodes one encoded image (see `decode_image`) and resizes it:
    uint8 [image_size, image_size, 3]."""
    return resize_images(
        decode_image(encoded, image_size, max_pixels, exif_orientation_enabled, name),
        image_size)


@functools.lru_cache(maxsize=None)
def traced_decoder(image_size, max_pixels=_DEFAULTS.max_image_pixels,
                   exif_orientation_enabled=_DEFAULTS.exif_orientation):
    """`decode_and_resize` as a `tf.function` of (encoded, name), both
    tf.string scalars, traced once per process and settings.

    The decode graph (format, EXIF, alpha, size checks) takes about a
    second to trace. Training's file decoding (`data.decode_files`, once
    per folder) and the export's `serving_default` call this one function,
    so a run traces it once.
    """
    # No AutoGraph: the graph's branches are explicit `tf.case`s, and
    # converting these functions' source took about 1.5 s of the trace.
    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)],
                 autograph=False)
    def decode(encoded, name):
        return decode_and_resize(encoded, image_size, max_pixels, exif_orientation_enabled,
                                 name=name)

    return decode


# libjpeg's warnings (jerror.h, JWRN_*): it recovers from corrupt data (the
# rest of the image comes out gray or smeared) and prints one of these on
# stderr, naming no file, and TensorFlow's decoders return the image.
LIBJPEG_WARNING = re.compile(
    r"^(Corrupt JPEG data: |Premature end of JPEG file|Invalid SOS parameters for "
    r"sequential JPEG|Inconsistent progression sequence for component|"
    r"Unknown Adobe color transform code|"
    r"Warning: thumbnail image size does not match|Warning: unknown JFIF revision)")
_ANY_LINE = re.compile("")


@contextlib.contextmanager
def libjpeg_warnings_caught(caught):
    """Appends libjpeg's warnings (`LIBJPEG_WARNING`, str) printed inside
    the block, from any thread, to the list `caught`, instead of stderr.
    Other stderr lines are held and written back after the block
    (`native_stderr.filtered`): keep the block short."""
    with native_stderr.filtered(LIBJPEG_WARNING, caught.append):
        yield


def find_libjpeg_warnings(encoded_images, expected=None):
    """Which JPEGs make libjpeg warn, and what it says.

    Each JPEG (by its first bytes) is decoded again on its own, at 1/8
    scale (libjpeg still reads all of its data, so it warns the same, at
    a 64th of the memory): call it after `libjpeg_warnings_caught` caught
    something, to name the files, with the images that were decoded.

    Args:
        encoded_images: Iterable of encoded images (bytes), or of zero-
            argument functions returning them (files read on demand; one
            that raises OSError is passed over).
        expected: Stop once this many warnings are found (the count
            caught), or None to look at every image.

    Returns:
        {index: "warning; warning"} of the images that made libjpeg warn.
    """
    found, count = {}, 0
    for index, data in enumerate(encoded_images):
        if expected is not None and count >= expected:
            break
        try:
            data = data() if callable(data) else data
        except OSError:
            continue  # Gone since it was decoded: nothing to name.
        if not data.startswith(image_files.JPEG_SIGNATURE):
            continue
        # Everything this extra decode prints is dropped: the first decode
        # printed it already ("Input file read error" for a truncated file).
        printed = []
        with native_stderr.filtered(_ANY_LINE, printed.append):
            try:
                tf.io.decode_jpeg(data, channels=3, ratio=8)
            except tf.errors.OpError:
                continue  # A file that fails is reported by its own decode.
        caught = [line for line in printed if LIBJPEG_WARNING.match(line)]
        if caught:
            found[index] = "; ".join(caught)
            count += len(caught)
    return found


def log_libjpeg_warnings(paths, encoded_images, warnings, done):
    """Logs one WARNING naming the JPEGs among `paths` (their encoded
    images or readers in `encoded_images`, as `find_libjpeg_warnings`
    takes them) that made libjpeg print `warnings` (str), used anyway:
    `done` says how ("decoded", "classified")."""
    found = find_libjpeg_warnings(encoded_images, expected=len(warnings))
    named = [f"{image_files.display_path(paths[i])} ({message})"
             for i, message in sorted(found.items())]
    logger.warning(
        "%d JPEG file(s) with corrupt data, %s anyway (libjpeg fills what it cannot read, "
        "so part of the image may be gray or smeared): %s", len(named) or len(warnings), done,
        image_files.listing(named, "JPEG files with corrupt data") if named
        else "; ".join(warnings))

"""Generated photo files for the data-check tests, written with Pillow."""

import io
import struct

import numpy as np
from PIL import Image


def encode(image, image_format, **options):
    """Bytes of a Pillow image (or uint8 array) saved in `image_format`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def exif_block(orientation, byte_order="<"):
    """An EXIF APP1 payload with IFD0 holding only the Orientation tag."""
    tiff = (b"II" if byte_order == "<" else b"MM") + struct.pack(byte_order + "HI", 42, 8)
    tiff += struct.pack(byte_order + "H", 1)
    tiff += struct.pack(byte_order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(byte_order + "I", 0)
    return b"Exif\x00\x00" + tiff


def asymmetric_image(height=32, width=64):
    """uint8 [H, W, 3] whose every flip and rotation differs: a red top band,
    a blue left band, a green top-left square."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[: height // 4] = (255, 0, 0)
    image[:, : width // 8] = (0, 0, 255)
    image[: height // 4, : width // 8] = (0, 255, 0)
    return image


def jpeg_with_size(width, height):
    """A small baseline JPEG whose frame header claims width x height.

    Only the header is right (the pixel data is an 8x8 image's), enough for
    checks that must refuse the file before decoding it.
    """
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    position = 2
    while data[position + 1] not in (0xC0, 0xC1, 0xC2):
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    data[position + 5:position + 9] = struct.pack(">HH", height, width)
    return bytes(data)

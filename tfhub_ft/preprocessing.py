"""Image decoding and resizing, shared by the data pipeline, the model and
the exported SavedModel so that training and serving see the same pixels."""

import tensorflow as tf

# Extensions that `tf.io.decode_image` reads; other files in a class folder
# (notes, thumbnails databases) are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def decode_image(encoded):
    """Decodes one encoded image to RGB.

    Args:
        encoded: tf.string scalar, a JPEG, PNG, GIF (first frame) or BMP file.

    Returns:
        uint8 tensor [H, W, 3] in [0, 255]. Grayscale is repeated to three
        channels and an alpha channel is dropped.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_images(images, image_size):
    """Resizes images to a square of side `image_size`, keeping their dtype.

    Bilinear with antialiasing, so large photos shrink without aliasing; an
    image already at the size is returned unchanged.

    Args:
        images: uint8 [..., H, W, 3] in [0, 255] or float32 in [0, 1].
        image_size: int, the side of the output.

    Returns:
        Tensor [..., image_size, image_size, 3] of the input dtype (uint8 is
        rounded back to uint8).
    """
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
    resized = tf.image.resize(images, size, antialias=True)
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


def decode_and_resize(encoded, image_size):
    """Decodes one encoded image and resizes it: uint8 [size, size, 3]."""
    return resize_images(decode_image(encoded), image_size)

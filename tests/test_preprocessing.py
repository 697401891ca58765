import numpy as np
import tensorflow as tf

from tfhub_ft import preprocessing


def test_resize_keeps_dtype_and_skips_same_size():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    same = preprocessing.resize_images(tf.constant(images), 4)
    np.testing.assert_array_equal(same.numpy(), images)
    larger = preprocessing.resize_images(tf.constant(images), 8)
    assert larger.dtype == tf.uint8 and larger.shape == (2, 8, 8, 3)
    floats = preprocessing.resize_images(tf.ones([1, 5, 7, 3]), 3)
    assert floats.dtype == tf.float32
    np.testing.assert_allclose(floats.numpy(), 1.0, atol=1e-6)


def test_to_unit_range():
    np.testing.assert_allclose(
        preprocessing.to_unit_range(tf.constant([0, 255], tf.uint8)).numpy(), [0.0, 1.0])
    np.testing.assert_allclose(
        preprocessing.to_unit_range(tf.constant([0.25], tf.float64)).numpy(), [0.25])


def test_decode_grayscale_and_rgba_to_rgb():
    gray = tf.io.encode_png(tf.fill([3, 5, 1], tf.constant(7, tf.uint8)))
    rgba = tf.io.encode_png(tf.fill([3, 5, 4], tf.constant(9, tf.uint8)))
    # Alpha 9/255 over white: 9 * 9/255 + 255 * (1 - 9/255) = 246.3.
    for encoded, value in [(gray, 7), (rgba, 246)]:
        image = preprocessing.decode_image(encoded)
        assert image.shape == (3, 5, 3)
        assert np.all(image.numpy() == value)
    resized = preprocessing.decode_and_resize(gray, 4)
    assert resized.shape == (4, 4, 3) and resized.dtype == tf.uint8

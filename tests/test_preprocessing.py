import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures import corrupt_jpeg
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
    # A numpy array, as a TFLite caller has one (README's resize for .tflite).
    from_numpy = preprocessing.resize_images(images[0], 8)
    np.testing.assert_array_equal(from_numpy.numpy(), larger.numpy()[0])


def test_resize_shrinks_by_area_and_enlarges_bilinear():
    # Shrinking decoded (uint8) images 4x4 -> 2x2 averages each 2x2 block
    # (area interpolation).
    image = (np.arange(16).reshape(1, 4, 4, 1).repeat(3, axis=-1) * 10).astype(np.uint8)
    shrunk = preprocessing.resize_images(tf.constant(image), 2).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(shrunk, [[25, 45], [105, 125]])
    # Enlarging is bilinear with half-pixel centres: [0, 4] -> [0, 1, 3, 4].
    row = np.array([[0.0, 4.0]] * 2, np.float32).reshape(1, 2, 2, 1).repeat(3, axis=-1)
    enlarged = preprocessing.resize_images(tf.constant(row), 4).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(enlarged, [0.0, 1.0, 3.0, 4.0])
    # One side shrinking, the other growing: antialiased bilinear, still exact
    # on a constant image.
    mixed = preprocessing.resize_images(tf.fill([1, 8, 2, 3], 0.5), 4).numpy()
    np.testing.assert_allclose(mixed, 0.5, atol=1e-6)


def test_gradients_reach_float_images_through_the_resize():
    # Float images of any size (serving_images, saliency maps) never meet
    # ResizeArea, which has no gradient, not even in an untaken branch.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def gradient(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(preprocessing.resize_images(images, 4))
        return tape.gradient(loss, images)

    for shape in [(1, 8, 8, 3), (1, 4, 4, 3), (1, 2, 2, 3), (1, 8, 2, 3)]:
        assert gradient(tf.ones(shape)).shape == shape


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


# Issue 9, kind 1: transparency is composited over white, whatever carries it.
def test_transparency_is_composited_over_white():
    from PIL import Image
    from tests import photos

    transparent = Image.new("RGBA", (8, 8), (0, 128, 0, 0))
    logo = np.zeros((8, 8, 4), np.uint8)
    logo[2:6, 2:6] = (200, 0, 0, 255)  # opaque red on a transparent field
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 128, 0, 255, 0, 0] + [0] * 762)
    gray_alpha = Image.new("LA", (8, 8), (50, 0))
    cases = [
        (photos.encode(transparent, "PNG"), 255),
        (photos.encode(palette, "PNG", transparency=0), 255),
        (photos.encode(gray_alpha, "PNG"), 255),
        (photos.encode(transparent, "WEBP", lossless=True), 255),
        # 0 * 128/255 + 255 * 127/255 = 127.
        (photos.encode(half, "PNG"), 127),
    ]
    for encoded, value in cases:
        image = preprocessing.decode_image(tf.constant(encoded)).numpy()
        assert image.shape == (8, 8, 3)
        assert np.all(image == value), image[0, 0]
    image = preprocessing.decode_image(tf.constant(photos.encode(logo, "PNG"))).numpy()
    assert image[0, 0].tolist() == [255, 255, 255]
    assert image[3, 3].tolist() == [200, 0, 0]
    # GIF: a red top-left run on a green field; each colour in turn transparent.
    for x in range(4):
        palette.putpixel((x, 0), 1)
    for options, top_left, field in [({"transparency": 0}, [255, 0, 0], [255, 255, 255]),
                                     ({"transparency": 1}, [255, 255, 255], [0, 128, 0]),
                                     ({}, [255, 0, 0], [0, 128, 0])]:
        encoded = tf.constant(photos.encode(palette, "GIF", **options))
        image = preprocessing.decode_image(encoded).numpy()
        assert image[0, 0].tolist() == top_left and image[4, 4].tolist() == field


# Issue 9, kind 2: EXIF orientation, both byte orders, as Pillow applies it.
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_exif_orientation_matches_pillow(byte_order):
    import io

    from PIL import Image, ImageOps
    from tests import photos

    raw = photos.asymmetric_image()
    for orientation in range(1, 9):
        encoded = photos.encode(raw, "JPEG", quality=95,
                                exif=photos.exif_block(orientation, byte_order))
        assert preprocessing.exif_orientation(tf.constant(encoded)).numpy() == orientation
        ours = preprocessing.decode_image(tf.constant(encoded)).numpy()
        unrotated = preprocessing.decode_image(
            tf.constant(encoded), exif_orientation_enabled=False).numpy()
        assert unrotated.shape == raw.shape
        # Pillow's geometry on the same decoded pixels (its decoder rounds
        # differently from TensorFlow's).
        stored = Image.fromarray(unrotated)
        stored.info["exif"] = photos.exif_block(orientation, byte_order)
        np.testing.assert_array_equal(ours, np.asarray(ImageOps.exif_transpose(stored)))
        # And Pillow reads the same tag from the file.
        assert Image.open(io.BytesIO(encoded)).getexif()[0x0112] == orientation


def test_exif_orientation_absent_or_broken_is_one():
    from tests import photos

    plain = photos.encode(photos.asymmetric_image(), "JPEG")
    png = photos.encode(photos.asymmetric_image(), "PNG")
    broken = plain[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II\x2a\x00\xff\xff\xff\x7f" + plain[2:]
    for encoded in (plain, png, broken):
        assert preprocessing.exif_orientation(tf.constant(encoded)).numpy() == 1


# Issue 9, kind 5: the size comes from the header; big JPEGs decode at a
# reduced scale; a pixel limit refuses what is above it, naming the image.
def test_header_size_reduced_scale_and_pixel_limit():
    from PIL import Image
    from tests import photos

    image = photos.asymmetric_image(30, 50)
    for image_format in ("PNG", "GIF", "BMP", "JPEG"):
        encoded = tf.constant(photos.encode(image, image_format))
        assert preprocessing.header_size(encoded).numpy().tolist() == [30, 50]
    for options in ({"lossless": True}, {"quality": 80}):
        encoded = tf.constant(photos.encode(image, "WEBP", **options))
        assert preprocessing.header_size(encoded).numpy().tolist() == [30, 50]
    huge = tf.constant(photos.encode(Image.new("L", (4000, 3000), 90), "JPEG"))
    assert preprocessing.header_size(huge).numpy().tolist() == [3000, 4000]
    # Short side 3000 >= 8 * 2 * 160: decoded at 1/8 scale.
    assert preprocessing.decode_image(huge, image_size=160).shape == (375, 500, 3)
    assert preprocessing.decode_image(huge, image_size=700).shape == (1500, 2000, 3)
    assert preprocessing.decode_and_resize(huge, 160).shape == (160, 160, 3)
    claimed = tf.constant(photos.jpeg_with_size(12000, 12000))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"big\.jpg is too large: its header says 12000 x 12000 "
                             r"pixels = 144000000, above max_image_pixels=100000000"):
        preprocessing.decode_image(claimed, max_pixels=100_000_000, name="big.jpg")


# Issue 9, kind 9: an unknown format is named by the caller's name for it.
def test_unknown_format_error_names_the_image():
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)image_bytes\[1\] is not a JPEG, PNG, GIF, BMP or WebP "
                             r"image.*68 65 6c 6c 6f 20 77 6f.*16"):
        preprocessing.decode_image(tf.constant(b"hello world junk"), name="image_bytes[1]")
    assert preprocessing.image_format(tf.constant(b"")).numpy() == preprocessing.UNKNOWN


def test_truncated_files_are_named_before_decoding():
    from PIL import Image
    from tests import photos

    raw = photos.asymmetric_image()
    with_thumbnail_exif = photos.encode(raw, "JPEG", exif=photos.exif_block(6))
    progressive = photos.encode(Image.fromarray(raw).resize((640, 320)), "JPEG",
                                progressive=True)
    png = photos.encode(raw, "PNG")
    complete = [with_thumbnail_exif, with_thumbnail_exif + b"junk", progressive, png,
                photos.encode(raw, "GIF")]
    for encoded in complete:
        assert preprocessing.is_complete(tf.constant(encoded)).numpy()
    for encoded in (with_thumbnail_exif, progressive, png):
        cut = encoded[:int(len(encoded) * 0.6)]
        assert not preprocessing.is_complete(tf.constant(cut)).numpy()
    cut = progressive[:int(len(progressive) * 0.6)]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"image_bytes\[4\] is a truncated JPEG file \(cut short: no end "
                             rf"marker after its image data\); its length in bytes is {len(cut)}"):
        preprocessing.decode_image(tf.constant(cut), name="image_bytes[4]")


def test_exif_orientation_in_png_and_webp():
    from tests import photos

    raw = photos.asymmetric_image()
    for image_format, options in [("PNG", {}), ("WEBP", {"lossless": True})]:
        for byte_order in ("<", ">"):
            encoded = tf.constant(photos.encode(
                raw, image_format, exif=photos.exif_block(6, byte_order), **options))
            assert preprocessing.exif_orientation(encoded).numpy() == 6
            np.testing.assert_array_equal(preprocessing.decode_image(encoded).numpy(),
                                          np.rot90(raw, 3))
    gif = tf.constant(photos.encode(raw, "GIF"))
    assert preprocessing.exif_orientation(gif).numpy() == 1


def test_libjpeg_warnings_are_caught_and_traced_to_their_files(capfd):
    good = tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()
    png = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy()
    capfd.readouterr()
    caught = []
    with preprocessing.libjpeg_warnings_caught(caught):
        for data in (good, corrupt_jpeg(), png):
            tf.io.decode_image(data, channels=3)
    assert len(caught) == 1 and caught[0].startswith("Corrupt JPEG data: ")
    assert capfd.readouterr().err == ""
    found = preprocessing.find_libjpeg_warnings([good, png, corrupt_jpeg(), good[:20]])
    assert found == {2: caught[0]}
    # Stops once the expected count is found; files read on demand.
    assert preprocessing.find_libjpeg_warnings(
        [corrupt_jpeg, lambda: 1 / 0], expected=1) == {0: caught[0]}
    assert capfd.readouterr().err == ""

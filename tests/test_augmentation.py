import numpy as np
import tensorflow as tf

from tfhub_ft import augmentation


def test_cached_variants_are_what_the_online_layer_draws_from():
    images = np.arange(4 * 2 * 3 * 3, dtype=np.float32).reshape(4, 2, 3, 3)
    variants = [np.asarray(augmentation.apply_variant(images, mirrored))
                for mirrored in augmentation.cached_variants(("flip",))]
    np.testing.assert_array_equal(variants[0], images)
    np.testing.assert_array_equal(variants[1], images[:, :, ::-1])
    layer = augmentation.online_layer(("flip",), seed=0)
    np.testing.assert_array_equal(layer(images, training=False), images)
    seen = set()
    for _ in range(8):
        flipped = layer(tf.constant(images), training=True).numpy()
        for index in range(len(images)):
            matches = [np.array_equal(flipped[index], variant[index]) for variant in variants]
            assert matches.count(True) == 1
            seen.add(matches.index(True))
    assert seen == {0, 1}
    assert [augmentation.variant_name(m) for m in (False, True)] == ["plain", "mirrored"]


def test_no_augmentation_caches_one_variant_and_has_no_layer():
    assert augmentation.cached_variants(()) == [False]
    assert augmentation.online_layer((), seed=0) is None

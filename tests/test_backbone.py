import logging
import os
import tempfile
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tfhub_ft import backbone as backbone_lib
from tfhub_ft import hub_format
from tfhub_ft.backbone import HubBackbone, HubModuleError
from tfhub_ft.demo import tiny_backbone


def test_weights_wrap_module_variables(tiny_backbone_path):
    layer = HubBackbone(tiny_backbone_path)
    module = layer.module
    assert len(layer.weights) == len(module.variables)
    assert layer.count_params() == sum(int(np.prod(v.shape)) for v in module.variables)
    assert len(layer.trainable_weights) == len(module.trainable_variables)
    assert all("moving" in w.name for w in layer.non_trainable_weights)
    # Wrapped, not copied: an assignment through Keras is seen by the module.
    layer.weights[0].assign(tf.zeros_like(layer.weights[0]))
    assert np.all(module.variables[0].numpy() == 0)


def test_call_matches_module_and_keeps_statistics(tiny_backbone_path):
    layer = HubBackbone(tiny_backbone_path)
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
    expected = layer.module(images, training=False)
    statistics = [w.numpy().copy() for w in layer.non_trainable_weights]
    np.testing.assert_array_equal(layer(images, training=True).numpy(), expected.numpy())
    for before, after in zip(statistics, layer.non_trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert layer.feature_dim == 16
    assert layer.compute_output_shape((None, 32, 32, 3)) == (None, 16)


def test_batch_norm_trainable_updates_statistics(tiny_backbone_path):
    layer = HubBackbone(tiny_backbone_path, batch_norm_trainable=True)
    before = layer.non_trainable_weights[0].numpy().copy()
    layer(tf.random.stateless_uniform([4, 32, 32, 3], seed=[3, 4]), training=True)
    assert not np.array_equal(before, layer.non_trainable_weights[0].numpy())


def test_blocks_follow_the_call_graph(tiny_backbone_path):
    layer = HubBackbone(tiny_backbone_path)
    assert [b.name for b in layer.blocks] == ["stem", "block_1", "block_2", "block_3", "top"]
    summary = layer.block_summary()
    assert sum(count for _, count, _ in summary) == layer.count_params()
    assert all(trainable for _, _, trainable in summary)
    assert {w.name for w in layer.block_variables("block_2")} == {
        "block_2_conv_kernel", "block_2_bn_gamma", "block_2_bn_beta",
        "block_2_bn_moving_mean", "block_2_bn_moving_variance"}


def test_integer_state_is_not_counted_as_weights(tmp_path):
    # Keras 3 layers with randomness keep an int64 seed-generator state.
    kernel = tf.Variable(tf.ones([3, 3, 3, 4]), name="conv/kernel")
    state = tf.Variable(tf.constant([7, 0], tf.int64), trainable=False,
                        name="conv/seed_generator_state")

    @tf.function
    def call(images, training):
        del training
        features = tf.nn.conv2d(images, kernel, 2, "SAME") + tf.cast(state[1], tf.float32)
        return tf.reduce_mean(features, axis=[1, 2])

    path = tiny_backbone.save_feature_vector_function(call, [kernel, state], [kernel],
                                                      tmp_path / "module")
    layer = HubBackbone(path)
    assert [(block.name, block.parameter_count) for block in layer.blocks] == [("stem", 108)]


def test_unfreeze_top_blocks(tiny_backbone_path):
    layer = HubBackbone(tiny_backbone_path)
    chosen = layer.unfreeze_top_blocks(2)
    assert [b.name for b in chosen] == ["block_3", "top"]
    assert sorted(w.name for w in layer.trainable_weights) == sorted([
        "block_3_conv_kernel", "block_3_bn_gamma", "block_3_bn_beta",
        "head_conv_kernel", "head_bn_gamma", "head_bn_beta"])
    layer.freeze_all()
    assert layer.trainable_weights == []
    assert [t for _, _, t in layer.block_summary()] == [False] * 5
    with pytest.raises(ValueError, match=r"Expected an integer in \[0, 5\]"):
        layer.unfreeze_top_blocks(6)
    with pytest.raises(ValueError, match="Expected one of"):
        layer.block_variables("block_9")


def test_block_pattern_override(tiny_backbone_path):
    layer = HubBackbone(tiny_backbone_path, block_pattern=r"^(block_\d+|stem|head)")
    assert [b.name for b in layer.blocks] == ["stem", "block_1", "block_2", "block_3", "head"]
    coarse = HubBackbone(tiny_backbone_path,
                         block_pattern=lambda name: "top" if name.startswith("head") else "rest")
    assert [b.name for b in coarse.blocks] == ["rest", "top"]


def test_declared_image_size_and_module_without_one(tiny_backbone_path):
    assert HubBackbone(tiny_backbone_path).image_size is None


def test_tf1_module_is_refused(tmp_path):
    path = fixtures.save_tf1_hub_module_stub(str(tmp_path / "tf1"))
    with pytest.raises(HubModuleError, match="TF1 hub format"):
        HubBackbone(path)


def test_feature_map_module_is_refused(tmp_path):
    path = fixtures.save_non_feature_vector_module(str(tmp_path / "map"))
    with pytest.raises(HubModuleError, match=r"is not an image feature vector.*feature_vector"):
        HubBackbone(path)


def test_folder_without_saved_model(tmp_path):
    with pytest.raises(HubModuleError, match="No SavedModel"):
        HubBackbone(str(tmp_path))


@pytest.mark.parametrize("handle", [None, "", 3])
def test_handle_type_is_checked(handle):
    with pytest.raises(TypeError, match="Invalid value for `hub_handle`"):
        backbone_lib.resolve_handle(handle)


def test_unknown_handle_is_explained():
    with pytest.raises(HubModuleError, match="neither a local folder nor"):
        backbone_lib.resolve_handle("no/such/folder")


def test_offline_url_names_handle_and_cache(monkeypatch, tmp_path):
    import tensorflow_hub

    def offline(handle):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tensorflow_hub, "resolve", offline)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    url = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    with pytest.raises(HubModuleError) as error:
        backbone_lib.resolve_handle(url)
    message = str(error.value)
    assert url in message and "TFHUB_CACHE_DIR" in message and str(tmp_path) in message
    assert "SavedModel folder" in message


def test_kaggle_handle_goes_through_tensorflow_hub(monkeypatch):
    import tensorflow_hub
    seen = []
    monkeypatch.setattr(tensorflow_hub, "resolve", lambda h: seen.append(h) or "/x")
    assert backbone_lib.resolve_handle(
        "google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2") == "/x"
    assert seen == ["https://www.kaggle.com/models/google/mobilenet-v2/"
                    "tensorFlow2/100-224-feature-vector/2"]


def test_cached_url_resolves_offline(monkeypatch, tmp_path, tiny_backbone_path):
    """A module in TFHUB_CACHE_DIR is used without any network access."""
    import hashlib
    import shutil
    url = "https://tfhub.dev/example/tiny/feature_vector/1"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    # tensorflow_hub caches a module under the sha1 of its handle.
    shutil.copytree(tiny_backbone_path,
                    tmp_path / hashlib.sha1(url.encode("utf8")).hexdigest())
    path = backbone_lib.resolve_handle(url)
    assert os.path.isdir(path) and path.startswith(str(tmp_path))
    assert HubBackbone(path).feature_dim == 16


BLOCK = r"(dense)"


class _ScalingModule(tf.Module):
    """A feature vector that computes `(x / 255) * 2 - 1` first: it expects
    pixels in [0, 255]."""

    def __init__(self, width=4, softmax=False):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(rng.normal(size=(3, width)).astype(np.float32),
                                  name="dense/kernel")
        self.softmax = softmax

    @tf.function
    def __call__(self, images, training=False):
        features = tf.matmul(tf.reduce_mean(images / 255.0 * 2.0 - 1.0, [1, 2]), self.kernel)
        return tf.nn.softmax(features) if self.softmax else tf.nn.relu(features)


def _solid_images(count, size=16, seed=0):
    colours = np.random.default_rng(seed).integers(0, 256, (count, 1, 1, 3))
    return np.broadcast_to(colours, (count, size, size, 3)).astype(np.uint8)


# Issue 9, kind 8: input ranges, a calibration warning, and a classifier told
# by its output values.
def test_input_range_and_calibration(tmp_path, caplog):
    path = tiny_backbone.save_feature_vector_module(_ScalingModule(), str(tmp_path / "m"))
    images = _solid_images(16) / 255.0
    unit = HubBackbone(path, block_pattern=BLOCK)
    bytes_range = HubBackbone(path, input_range=(0, 255), block_pattern=BLOCK)
    np.testing.assert_allclose(bytes_range(images).numpy(),
                               unit.module(tf.constant(images * 255.0, tf.float32)).numpy(),
                               rtol=1e-5, atol=1e-5)
    problems = backbone_lib.feature_problems(unit(images).numpy())
    assert len(problems) == 1 and "near-constant across 16 training images" in problems[0]
    assert "try (0, 255) or (-1, 1)" in problems[0]
    assert backbone_lib.feature_problems(bytes_range(images).numpy(), (0, 255)) == []
    saturated = np.full((8, 5), 6.0)
    saturated[:, 0] = np.linspace(0, 5, 8)
    assert "saturated" in backbone_lib.feature_problems(saturated)[0]
    with pytest.raises(ValueError, match=r"Invalid value for `input_range`.*Received: "
                                         r"input_range=\(1, 0\)"):
        HubBackbone(path, input_range=(1, 0), block_pattern=BLOCK)


@pytest.mark.slow
def test_calibration_warning_in_fit(tmp_path, caplog):
    from tests import photos
    from tfhub_ft import FineTuner, FineTuneConfig
    path = tiny_backbone.save_feature_vector_module(_ScalingModule(), str(tmp_path / "m"))
    for label in ("a", "b"):
        os.makedirs(tmp_path / "data" / label)
        for i, image in enumerate(_solid_images(6, seed=ord(label))):
            (tmp_path / "data" / label / f"{i}.png").write_bytes(photos.encode(image, "PNG"))
    config = FineTuneConfig(image_size=16, batch_size=4, head_epochs=1, fine_tune_epochs=0)
    for input_range, warned in [((0.0, 1.0), True), ((0.0, 255.0), False)]:
        caplog.clear()
        with caplog.at_level("WARNING"):
            FineTuner(path, config=config, input_range=input_range, block_pattern=BLOCK).fit(
                str(tmp_path / "data"), validation_split=0.34, verbose=0)
        assert ("features are near-constant" in caplog.text) == warned


def test_classifier_is_told_by_output_values(tmp_path, caplog):
    probabilities = tiny_backbone.save_feature_vector_module(
        _ScalingModule(width=10, softmax=True), str(tmp_path / "p"))
    wide_features = tiny_backbone.save_feature_vector_module(
        _ScalingModule(width=1001), str(tmp_path / "f"))
    with caplog.at_level("WARNING"):
        HubBackbone(probabilities, block_pattern=BLOCK)
    assert "look like class probabilities" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        HubBackbone(wide_features, input_range=(0, 255), block_pattern=BLOCK)
    assert not caplog.text
    assert backbone_lib.classifier_output_kind(-np.ones((2, 1000))) == "ImageNet logits"


def test_a_passed_split_check_is_remembered(tiny_backbone_path, tmp_path, monkeypatch):
    checks = []
    original = HubBackbone._check_split

    def counted(self, split):
        checks.append(len(split.top_variable_indices))
        return original(self, split)

    monkeypatch.setattr(HubBackbone, "_check_split", counted)
    monkeypatch.setenv("TFHUB_FT_CACHE_DIR", str(tmp_path / "cache"))
    assert HubBackbone(tiny_backbone_path).split_top_blocks(2) is not None
    assert len(checks) == 1 and len(os.listdir(tmp_path / "cache" / "split_checks")) == 1
    # The same module and cut, in a new process or a new backbone: not checked again.
    assert HubBackbone(tiny_backbone_path).split_top_blocks(2) is not None
    assert len(checks) == 1
    # Another cut is checked.
    assert HubBackbone(tiny_backbone_path).split_top_blocks(1) is not None
    assert len(checks) == 2
    # Off (TFHUB_FT_CACHE_DIR=""), or a folder that cannot be written: checked every time.
    monkeypatch.setenv("TFHUB_FT_CACHE_DIR", "")
    HubBackbone(tiny_backbone_path).split_top_blocks(2)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TFHUB_FT_CACHE_DIR", str(blocked))
    HubBackbone(tiny_backbone_path).split_top_blocks(2)
    HubBackbone(tiny_backbone_path).split_top_blocks(2)
    assert len(checks) == 5


def test_split_gradients_tolerate_a_flipped_clip_not_a_wrong_cut():
    want = np.random.default_rng(0).normal(size=(1, 1, 32, 192)).astype(np.float32)
    # One ReLU6 at its clip passes its gradient in one graph only: one
    # element off by 0.2% of the largest (what a fine-tuned MobileNetV2 showed).
    flipped = want.copy()
    flipped[0, 0, 3, 7] += 0.002 * np.abs(want).max()
    assert backbone_lib.gradient_difference(flipped, want) < 1e-3
    assert backbone_lib.gradient_difference(want, want) == 0.0
    for wrong in (want * 1.1, np.zeros_like(want), want[..., ::-1]):
        assert (backbone_lib.gradient_difference(wrong, want)
                > backbone_lib.SPLIT_GRADIENT_TOLERANCE)
    # Near-zero gradients compare absolutely.
    assert backbone_lib.gradient_difference(np.full(4, 1e-7), np.zeros(4)) < 1e-3


def _keras3_feature_model(image_size=None, height=None, batch_size=None, top=None,
                          pool=True):
    """A Keras 3 model with constant weights up to its pooled features."""
    inputs = keras.Input([height or image_size, image_size, 3], batch_size=batch_size)
    x = keras.layers.Conv2D(4, 3, strides=2, name="Conv1",
                            kernel_initializer=keras.initializers.Constant(0.1),
                            bias_initializer=keras.initializers.Constant(0.2))(inputs)
    x = keras.layers.BatchNormalization(name="bn_Conv1", moving_mean_initializer="ones")(x)
    x = keras.layers.ReLU()(x)
    if pool:
        x = keras.layers.GlobalAveragePooling2D()(x)
    if top:
        x = keras.layers.Dense(top, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x)


def _save_keras3(model, path, save="export"):
    if save == "export":
        model.export(str(path), verbose=False)
    else:
        tf.saved_model.save(model, str(path))
    return str(path)


def _module_copies():
    return [name for name in os.listdir(tempfile.gettempdir())
            if name.startswith(f"{hub_format.MODULE_COPY_KIND}-{os.getpid()}@")]


@pytest.mark.parametrize("save", ["export", "saved_model"])
def test_a_keras_export_is_loaded_through_its_serving_signature(tmp_path, caplog, save,
                                                                tiny_backbone_path):
    model = _keras3_feature_model(image_size=16 if save == "export" else None)
    path = _save_keras3(model, tmp_path / "keras", save)
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        backbone = HubBackbone(path)
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    expected = model(images).numpy()
    np.testing.assert_allclose(backbone(images).numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(backbone(images, training=True).numpy(), expected,
                               rtol=1e-6, atol=1e-6)
    assert backbone.image_size == (16 if save == "export" else None)
    names = [v.name.split(":")[0] for v in backbone.module.variables]
    # Keras's own order where the export keeps a variable list; the order the
    # signature reads them in where it does not.
    assert (names if save == "export" else sorted(names)) == (
        [v.path for v in model.weights] if save == "export"
        else sorted(v.path for v in model.weights))
    assert len(backbone.module.trainable_variables) == len(model.trainable_weights)
    assert hub_format.is_serving_signature_module(backbone.module)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} has no `__call__`, only a `serving_default` signature (as Keras's "
        "`model.export` writes): it is the feature vector, with batch norm and dropout "
        "in inference mode in both phases. Keras applications expect their own pixel "
        "range (MobileNetV2 `--input_range=-1,1`, EfficientNet `0,255`); ResNet50, VGG "
        "and DenseNet normalise per channel, which must be built into the exported model."]
    assert not _module_copies()
    # A range given: no advice about ranges. A hub module is no signature.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        HubBackbone(path, input_range=(-1, 1))
    assert caplog.records[0].getMessage().endswith("in inference mode in both phases.")
    assert not hub_format.is_serving_signature_module(
        backbone_lib.load_feature_vector_module(tiny_backbone_path))


def test_a_keras_export_cannot_train_its_batch_norm_or_be_frozen(tmp_path):
    model = _keras3_feature_model(image_size=16)
    path = _save_keras3(model, tmp_path / "keras")
    with pytest.raises(ValueError, match=r"Invalid value for `batch_norm_trainable`. Expected "
                                         r"False: the module .* is a serving signature traced "
                                         r"for inference.*Received: batch_norm_trainable=True"):
        HubBackbone(path, batch_norm_trainable=True)
    model.trainable = False
    frozen = _save_keras3(model, tmp_path / "frozen")
    with pytest.raises(HubModuleError, match=r"has no trainable variables.*Set "
                                             r"`model.trainable = True` before"):
        HubBackbone(frozen)
    assert not _module_copies()


def test_a_mixed_precision_keras_export_gives_float32_features(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _keras3_feature_model(image_size=16)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    backbone = HubBackbone(_save_keras3(model, tmp_path / "keras"))
    features = backbone(np.zeros([1, 16, 16, 3], np.float32))
    assert features.dtype == tf.float32 and backbone.feature_dim == 4


def test_a_keras_export_with_one_side_fixed_takes_square_images_of_that_side(tmp_path):
    backbone = HubBackbone(_save_keras3(_keras3_feature_model(image_size=None, height=16),
                                        tmp_path / "keras"))
    assert backbone.image_size == 16


@pytest.mark.parametrize("build, save, message", [
    (lambda: _keras3_feature_model(image_size=16, batch_size=1), "saved_model",
     r"takes inputs float32 \(1, 16, 16, 3\): a fixed batch of 1 \(leave `batch_size` out"),
    (lambda: _keras3_feature_model(image_size=16, pool=False), "export",
     r"returns output_0 float32 \(None, 7, 7, 4\), not \[N, D\] features \(a feature map: "
     r"pool it"),
    (lambda: _keras3_feature_model(image_size=16, height=8), "export",
     r"takes images of 8 x 16 pixels only, and tfhub_ft trains on square images"),
])
def test_a_signature_that_is_no_feature_vector_is_refused_saying_why(tmp_path, build, save,
                                                                      message):
    path = _save_keras3(build(), tmp_path / "keras", save)
    with pytest.raises(HubModuleError, match=r"is not an image feature vector: it has no "
                                             r"`__call__\(images, training\)` with `variables`, "
                                             rf"as TF Hub modules have, and its `serving_default` "
                                             rf"{message}.*model\.export\(folder\)"):
        HubBackbone(path)


def test_a_signature_of_two_inputs_is_refused(tmp_path):
    class TwoInputs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32),
                                      tf.TensorSpec([None], tf.float32)])
        def serve(self, images, scale):
            return {"output": tf.reduce_mean(images, axis=[1, 2]) * scale[:, None]}

    module = TwoInputs()
    tf.saved_model.save(module, str(tmp_path / "two"), signatures=module.serve)
    with pytest.raises(HubModuleError, match=r"its `serving_default` takes images float32 "
                                             r"\(None, 8, 8, 3\), scale float32 \(None,\), "
                                             r"not one image batch"):
        HubBackbone(str(tmp_path / "two"))


def test_the_copy_of_a_keras_export_is_removed_when_loading_it_fails(tmp_path, monkeypatch):
    path = _save_keras3(_keras3_feature_model(image_size=16), tmp_path / "keras")
    load = tf.saved_model.load

    def failing_load(folder, *args, **kwargs):
        if os.path.basename(folder).startswith(hub_format.MODULE_COPY_KIND):
            raise MemoryError("out of memory")
        return load(folder, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", failing_load)
    with pytest.raises(MemoryError):
        HubBackbone(path)
    assert not _module_copies()


@pytest.mark.parametrize("name, hint", [
    ("model.keras", "keras.saving.load_model"),
    ("model.h5", "keras.saving.load_model"),
    ("model.weights.h5", "Weights alone hold no network"),
    ("model.tflite", "A TFLite model cannot be fine-tuned"),
    ("mobilenet.tar.gz", "Extract the archive"),
    ("saved_model.pb", "Pass the SavedModel's folder")])
def test_a_file_handle_is_explained(tmp_path, name, hint):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(HubModuleError, match=rf"is a file; a module is a SavedModel folder.*{hint}"):
        backbone_lib.resolve_handle(str(tmp_path / name))


def test_a_keras_export_with_frozen_layers_names_the_blocks_it_cannot_train(tmp_path, caplog):
    model = _keras3_feature_model(image_size=16)
    model.get_layer("Conv1").trainable = False
    path = _save_keras3(model, tmp_path / "keras")
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        backbone = HubBackbone(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"1 of the 1 blocks of {path} have no trainable kernels (stem): its Keras model was "
        "exported with those layers frozen, so fine-tuning cannot train them. Set "
        "`model.trainable = True` before `model.export` to fine-tune every block."]
    assert [b.name for b in backbone.blocks] == ["stem"]


def test_a_dtype_other_than_float32_is_refused(tiny_backbone_path):
    with pytest.raises(ValueError, match=r"Invalid value for `dtype`. Expected float32: a hub "
                                         r"module computes in float32.*Received: "
                                         r"dtype='mixed_float16'"):
        HubBackbone(tiny_backbone_path, dtype="mixed_float16")
    assert HubBackbone(tiny_backbone_path, dtype="float32").compute_dtype == "float32"


def test_a_mixed_precision_keras_export_is_split_at_every_depth(tmp_path, caplog):
    from tests import module_shapes
    path, blocks = module_shapes.keras_exported(tmp_path / "keras", package="keras",
                                                save="export", image_size=32,
                                                policy="mixed_float16")
    backbone = HubBackbone(path)
    with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
        # The check inside compares each split's features and gradients with
        # the whole module's; the boundaries are float16 inside the module.
        splits = [backbone.split_top_blocks(count) for count in range(1, len(blocks) + 1)]
    assert all(split is not None for split in splits) and not caplog.records
    boundary = splits[1].bottom(np.zeros([1, 32, 32, 3], np.float32))
    assert {t.dtype for t in boundary} == {tf.float32}
    assert backbone.reduced_precision() == "float16"
    assert HubBackbone(module_shapes.keras_exported(tmp_path / "float32", package="keras",
                                                    save="export")[0]).reduced_precision() is None


def test_the_config_rebuilds_the_same_layer(tiny_backbone_path):
    pattern = r"^(\w+?)_(?:conv|bn)/"  # "head" where the built-in rules say "top"
    backbone = HubBackbone(tiny_backbone_path, block_pattern=pattern, input_range=(-1, 1),
                           name="bb")
    again = HubBackbone.from_config(backbone.get_config())
    assert [b.name for b in again.blocks] == [b.name for b in backbone.blocks] == [
        "stem", "block_1", "block_2", "block_3", "head"]
    assert (again.block_pattern, again.input_range, again.name, again.compute_dtype) == (
        pattern, (-1.0, 1.0), "bb", "float32")

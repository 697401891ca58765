import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuneConfig, FineTuner, export, tflite

SIZE = 32
CLASSES = ["blue", "green", "red"]


def colour_images(count_per_class, seed):
    """A separable task: noisy images whose dominant channel is the class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, channel in enumerate((2, 1, 0)):
        batch = rng.integers(0, 60, (count_per_class, SIZE, SIZE, 3))
        batch[..., channel] += 190
        images.append(batch)
        labels += [label] * count_per_class
    return np.concatenate(images).astype(np.uint8), np.array(labels, np.int32)


@pytest.fixture(scope="module")
def trained(tiny_backbone_path):
    train = tf.data.Dataset.from_tensor_slices(colour_images(20, seed=0))
    validation = tf.data.Dataset.from_tensor_slices(colour_images(12, seed=1))
    tuner = FineTuner(tiny_backbone_path, config=FineTuneConfig(
        image_size=SIZE, batch_size=8, head_epochs=12, fine_tune_epochs=1,
        unfreeze_blocks=2, head_learning_rate=3e-2, fine_tune_learning_rate=1e-3))
    tuner.fit(train, validation, class_names=CLASSES, verbose=0)
    assert tuner.validation_metrics["accuracy"] == 1.0  # the task is separable
    return tuner


# Largest allowed difference of any probability, TFLite vs SavedModel.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "dynamic": 5e-2, "int8": 0.1}


@pytest.mark.slow
@pytest.mark.parametrize("mode", tflite.TFLITE_MODES)
def test_round_trip_per_mode(trained, tmp_path, mode, capfd):
    capfd.readouterr()
    path = trained.export(str(tmp_path / "model"), tflite=mode)
    # The converter's and LiteRT's native lines went to DEBUG, not stderr.
    printed = capfd.readouterr().err
    assert "fully_quantize" not in printed and "XNNPACK" not in printed
    assert "decorate the function" not in printed
    assert "Ignored output_format" not in printed and "runtime version metadata" not in printed
    assert "Estimated count of arithmetic ops" not in printed
    assert "Starting new session" not in printed and "eligible GPUs" not in printed
    assert sorted(os.listdir(tmp_path)) == ["model"]  # written in the same staging folder
    assert {"saved_model.pb", "labels.txt", "model.tflite", "tflite_parity.json"} <= set(
        os.listdir(path))
    images, labels = colour_images(12, seed=1)
    classifier = tflite.TFLiteClassifier(os.path.join(path, "model.tflite"))
    assert (classifier.image_size, classifier.num_classes) == (SIZE, 3)
    got = classifier.predict(images)
    # The signature LiteRT's runner calls by name.
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=os.path.join(path, "model.tflite"))
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["image"], "outputs": ["probabilities"]}}
    runner = interpreter.get_signature_runner()
    np.testing.assert_array_equal(runner(image=images[:1])["probabilities"], got[:1])
    served = tf.saved_model.load(path).signatures["serving_images"](
        images=tf.constant(images, tf.float32) / 255.0)["probabilities"].numpy()
    np.testing.assert_allclose(got, served, atol=TOLERANCE[mode])
    agreement = np.mean(got.argmax(-1) == served.argmax(-1))
    assert agreement >= (0.97 if mode == "int8" else 1.0)

    with open(os.path.join(path, "tflite_parity.json")) as f:
        report = json.load(f)
    assert set(report) == {"mode", "images", "top1_agreement", "tflite_accuracy",
                           "saved_model_accuracy", "max_probability_difference",
                           "tflite_bytes", "tflite_latency_ms", "changed_images",
                           "changed_near_ties", "near_tie_margin"}
    assert report["mode"] == mode and report["images"] == 36
    assert report["top1_agreement"] == agreement
    assert report["saved_model_accuracy"] == 1.0
    assert report["tflite_accuracy"] == np.mean(got.argmax(-1) == labels)
    assert report["max_probability_difference"] == pytest.approx(
        np.abs(got - served).max(), abs=1e-6)
    assert report["tflite_bytes"] == os.path.getsize(os.path.join(path, "model.tflite"))
    assert report["tflite_latency_ms"] > 0
    assert report["changed_images"] == np.sum(got.argmax(-1) != served.argmax(-1))


def test_compare_predictions_counts_changes_and_near_ties():
    saved = np.array([[0.50, 0.45, 0.05],   # near tie (margin 0.05), flips
                      [0.90, 0.05, 0.05],   # sure, flips
                      [0.20, 0.70, 0.10],   # sure, kept
                      [0.40, 0.35, 0.25]])  # near tie, kept
    converted = np.array([[0.46, 0.49, 0.05],
                          [0.30, 0.60, 0.10],
                          [0.20, 0.70, 0.10],
                          [0.41, 0.34, 0.25]])
    assert tflite.compare_predictions(converted, saved, np.array([0, 0, 1, 2])) == {
        "top1_agreement": 0.5, "tflite_accuracy": 0.25, "saved_model_accuracy": 0.75,
        "max_probability_difference": pytest.approx(0.6), "changed_images": 2,
        "changed_near_ties": 1, "near_tie_margin": 0.1}


def test_input_and_output_of_every_mode(trained):
    for mode in tflite.TFLITE_MODES:
        contents = tflite.convert(trained.model, SIZE, mode, trained._representative_images)
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_content=contents)
        (given,), (returned,) = interpreter.get_input_details(), interpreter.get_output_details()
        assert list(given["shape"]) == [1, SIZE, SIZE, 3] and given["dtype"] == np.uint8
        assert list(returned["shape"]) == [1, 3] and returned["dtype"] == np.float32


def test_representative_images_are_a_seeded_training_sample(trained):
    assert trained._representative_images.shape == (60, SIZE, SIZE, 3)  # all 60 < 300
    rows = tflite.sample_rows(1000, 300, seed=0)
    assert len(rows) == 300 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, tflite.sample_rows(1000, 300, seed=0))
    assert not np.array_equal(rows, tflite.sample_rows(1000, 300, seed=1))


@pytest.mark.slow
def test_int8_under_the_threshold_warns(trained, tmp_path, caplog):
    path = export.export_saved_model(trained.model, trained.class_names,
                                     str(tmp_path / "model"), SIZE)
    images, labels = colour_images(4, seed=2)
    with caplog.at_level(logging.WARNING, logger="tfhub_ft.tflite"):
        report = tflite.export_tflite(trained.model, SIZE, path, "int8",
                                      trained._representative_images, images, labels,
                                      int8_agreement_threshold=1.01)
    assert report["images"] == 12
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "int8 TFLite model agrees with the SavedModel on only" in record.getMessage()
    assert "tflite='dynamic' or tflite='float16'" in record.getMessage()
    assert (f"{report['changed_images']} change class, {report['changed_near_ties']} of "
            "them near ties") in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfhub_ft.tflite"):
        tflite.export_tflite(trained.model, SIZE, path, "dynamic", None, images, labels,
                             int8_agreement_threshold=1.01)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_without_validation_images_no_report(trained, tmp_path):
    path = export.export_saved_model(trained.model, trained.class_names,
                                     str(tmp_path / "model"), SIZE)
    assert tflite.export_tflite(trained.model, SIZE, path, "float16") is None
    assert "model.tflite" in os.listdir(path) and "tflite_parity.json" not in os.listdir(path)


def test_invalid_mode_and_missing_calibration_images_are_explained(trained, tmp_path):
    with pytest.raises(ValueError, match=r"Invalid value for `tflite`. Expected one of "
                                         r"\('float32', 'float16', 'dynamic', 'int8'\).*tflite='int4'"):
        trained.export(str(tmp_path / "model"), tflite="int4")
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match=r"Invalid value for `representative_images`.*"
                                         r"uint8 \[N, 32, 32, 3\].*use tflite='dynamic'"):
        tflite.convert(trained.model, SIZE, "int8", np.zeros((4, 16, 16, 3), np.uint8))


@pytest.mark.slow
def test_failed_conversion_keeps_the_earlier_export(trained, tmp_path, monkeypatch):
    path = trained.export(str(tmp_path / "model"))
    before = sorted(os.listdir(path))

    def broken_convert(*args, **kwargs):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(tflite, "convert", broken_convert)
    with pytest.raises(RuntimeError, match="converter failed"):
        trained.export(path, tflite="float32")
    assert sorted(os.listdir(path)) == before
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_foreign_tflite_model_is_refused(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def double(x):
        return x * 2.0

    contents = tf.lite.TFLiteConverter.from_concrete_functions(
        [double.get_concrete_function()], double).convert()
    with pytest.raises(ValueError, match=r"not uint8 \[1, S, S, 3\]: it was not written by tfhub_ft"):
        tflite.TFLiteClassifier(contents)


@pytest.mark.slow
def test_flowers_flags_write_the_tflite_model_and_the_backbone(
        tiny_backbone_path, image_folders, tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train, validation, _, _ = image_folders
    command = [
        sys.executable, os.path.join(root, "examples", "flowers.py"),
        f"--hub_url={tiny_backbone_path}", f"--image_dir={train}",
        f"--validation_dir={validation}", "--image_size=32", "--batch_size=8",
        "--head_epochs=1", "--fine_tune_epochs=0", f"--export_dir={tmp_path}/model",
        "--tflite=dynamic", f"--export_backbone_dir={tmp_path}/backbone"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "model" / "tflite_parity.json") as f:
        assert json.load(f)["mode"] == "dynamic"
    assert tf.saved_model.contains_saved_model(str(tmp_path / "backbone"))


def test_int8_rounded_is_symmetric_per_output_channel():
    kernel = np.array([[1.0, -0.5, 0.0], [0.3, 0.25, 0.0], [-2.0, 0.1, 0.0]], np.float32)
    got = tflite.int8_rounded(kernel, (1,))
    scales = np.array([2.0, 0.5, 1.0]) / 127  # max |w| / 127 per column
    scales[2] = 1.0
    np.testing.assert_allclose(got, np.round(kernel / scales) * scales, rtol=0, atol=1e-7)
    assert got[2, 0] == -2.0 and got[0, 1] == -0.5 and not got[:, 2].any()
    assert got.dtype == np.float32
    # Halves round away from zero, as TFLite does (numpy's round: to even).
    np.testing.assert_array_equal(
        tflite.int8_rounded(np.array([[127.0], [2.5], [-2.5], [1.5]]), (1,))[:, 0],
        [127.0, 3.0, -3.0, 2.0])


def test_bias_correction_takes_the_mean_rounding_error_out(trained):
    images = trained._representative_images
    model = trained.model
    correction = tflite.bias_correction(model, "int8", images)
    ops = model.backbone.kernel_ops()
    assert (correction.corrected_ops, correction.images) == (len(ops), len(images)) == (5, 60)
    assert correction.head_corrected
    assert set(correction.output_offsets) == {op.name for op in ops}
    # The first convolution sees the images as the module scales them.
    first = ops[0]
    x = tf.constant(images, tf.float32) / 255.0 * 2.0 - 1.0
    kernel = model.backbone.kernel_value(first)
    rounded = tflite.int8_rounded(kernel, first.channel_axes)
    np.testing.assert_allclose(
        tf.reduce_mean(first.apply(x, rounded), [0, 1, 2]).numpy()
        - correction.output_offsets[first.name],
        tf.reduce_mean(first.apply(x, kernel), [0, 1, 2]).numpy(), rtol=0, atol=1e-5)
    features = model.backbone.inference_features(tf.constant(images, tf.float32) / 255.0)
    head = model.head.kernel.numpy()
    np.testing.assert_allclose(
        np.mean(features.numpy() @ tflite.int8_rounded(head, (1,)), 0)
        - correction.logit_offset, np.mean(features.numpy() @ head, 0), rtol=0, atol=1e-5)
    # Dynamic-range quantization keeps kernels under 1,024 values in float:
    # all but the 3x3x8x16 one here.
    dynamic = tflite.bias_correction(model, "dynamic", images)
    assert [op.name for op in ops if op.name in dynamic.output_offsets] == [
        op.name for op in ops if model.backbone.kernel_value(op).size >= 1024] == [ops[3].name]
    # ... and this 16 x 3 head too: its logits are left as they are.
    assert not dynamic.head_corrected and not dynamic.logit_offset.any()


def test_bias_correction_does_not_depend_on_its_batches(trained, monkeypatch):
    images = trained._representative_images
    whole = tflite.bias_correction(trained.model, "int8", images)
    monkeypatch.setattr(tflite, "_CORRECTION_BATCH", 1)
    single = tflite.bias_correction(trained.model, "int8", images)
    for name, offset in whole.output_offsets.items():
        np.testing.assert_allclose(single.output_offsets[name], offset, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(single.logit_offset, whole.logit_offset, rtol=1e-4, atol=1e-7)


def test_repeated_bias_corrections_are_not_a_retracing_warning(trained, caplog):
    images = trained._representative_images
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for mode in ("int8", "dynamic") * 3:
            tflite.bias_correction(trained.model, mode, images[:40])  # 32 + a last 8
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_quantized_modes_are_bias_corrected_and_say_so(trained, caplog):
    images = trained._representative_images
    with caplog.at_level(logging.INFO, logger="tfhub_ft.tflite"):
        corrected = tflite.convert(trained.model, SIZE, "int8", images)
        plain = tflite.convert(trained.model, SIZE, "int8", images, correct_bias=False)
        tflite.convert(trained.model, SIZE, "dynamic", images)
        tflite.convert(trained.model, SIZE, "dynamic")
    assert [r.getMessage() for r in caplog.records] == [
        "Bias correction of the int8 weights (Nagel et al. 2019): the mean rounding error "
        "of 5 backbone layers and the head, over 60 training images, taken back out of "
        "their outputs.",
        "Bias correction of the int8 weights (Nagel et al. 2019): the mean rounding error "
        "of 1 backbone layer, over 60 training images, taken back out of their outputs."]
    from ai_edge_litert.interpreter import Interpreter

    def op_names(contents):
        return sorted(op["op_name"] for op in Interpreter(model_content=contents)._get_ops_details())

    assert op_names(corrected) == op_names(plain)  # the offsets are folded into biases
    probabilities = [tflite.TFLiteClassifier(c).predict(images) for c in (corrected, plain)]
    assert np.abs(probabilities[0] - probabilities[1]).max() > 0
    with pytest.raises(ValueError, match=r"Invalid value for `representative_images`.*"
                                         r"for the bias correction of dynamic-range.*"
                                         r"or None \(no bias correction\)"):
        tflite.convert(trained.model, SIZE, "dynamic", np.zeros((4, 16, 16, 3), np.uint8))


def test_a_backbone_that_computes_in_float16_is_refused_before_training(tmp_path):
    from tests import module_shapes
    path, _ = module_shapes.keras_exported(tmp_path / "keras", package="keras", save="export",
                                           image_size=32, policy="mixed_float16")
    with pytest.raises(ValueError, match=r"Invalid value for `tflite`. Expected None: the module "
                                         r".* computes in float16 \(a Keras model built under a "
                                         r"mixed-precision policy\).*Received: tflite='int8'"):
        tflite.check_backbone(FineTuner(path).backbone, "int8")

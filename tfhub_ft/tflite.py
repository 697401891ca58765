"""TFLite export of a trained classifier, with quantization and a parity check.

The exported SavedModel decodes and resizes inside its graph, with ops
TFLite does not have (`DecodeImage`; the antialiased resize is
`ScaleAndTranslate`, neither a TFLite builtin nor a flex op). The TFLite
model therefore takes images the caller has already resized, as TFLite
image classifiers do, and only normalises them inside:

    input:  uint8 [1, S, S, 3] RGB in [0, 255] (S: the training image size)
    output: float32 [1, C] class probabilities, in labels.txt order

Modes (`TFLITE_MODES`):
    float32: no quantization.
    float16: weights stored as float16, computed in float32 on CPU.
    dynamic: dynamic-range quantization, int8 weights, float activations.
    int8: full integer quantization, calibrated on a seeded sample of the
        training images; uint8 input and float32 output as above (the
        quantize and dequantize steps are inside the model).

With the training images at hand, `dynamic` and `int8` are bias-corrected
(`bias_correction`): rounding the weights to int8 shifts each layer's
output mean, and the converted model has that shift taken back out.

The interpreter is LiteRT's (`ai_edge_litert`), the runtime that
`tf.lite.Interpreter` became; `tf.lite.Interpreter` itself is deprecated in
TensorFlow 2.21 and warns on every use.
"""

import dataclasses
import json
import logging
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import native_stderr, preprocessing, scratch

logger = logging.getLogger(__name__)

TFLITE_MODES = ("float32", "float16", "dynamic", "int8")
TFLITE_FILE = "model.tflite"
PARITY_FILE = "tflite_parity.json"
# The prefix of the folder a conversion's temporary files go to
# (`scratch.temporary_folder_for_libraries`).
CONVERSION_KIND = "tfhub_ft_tflite"
# Training images the int8 calibration sees: a few hundred is what the TFLite
# post-training quantization guide recommends.
REPRESENTATIVE_IMAGE_COUNT = 300
# Under this top-1 agreement with the SavedModel an int8 model gets a warning.
INT8_AGREEMENT_THRESHOLD = 0.97
# The parity check runs the TFLite model one image at a time: at most this
# many validation images (a seeded sample), so a large validation set does
# not make every export slow.
PARITY_IMAGE_COUNT = 1000
# A changed image whose SavedModel probabilities for its top two classes are
# closer than this is a near tie: any rounding can flip it, and flipping it
# costs little (on the shared clothing photos float16 changed near ties
# only, dynamic range mostly; BUILD_NOTES.md, Deployment).
NEAR_TIE_MARGIN = 0.1
# Dynamic-range quantization keeps weight tensors under this many values in
# float32 (the converter's `weights_min_num_elements` default); full integer
# quantization rounds them all.
DYNAMIC_RANGE_MIN_ELEMENTS = 1024
# Images per batch of bias correction's pass (`HubBackbone.kernel_op_sums`,
# one graph that reduces each op's output as it goes).
_CORRECTION_BATCH = 32


@dataclasses.dataclass(frozen=True)
class BiasCorrection:
    """What `bias_correction` subtracts from a converted model's outputs.

    Attributes:
        output_offsets: {`module_graph.KernelOp` name: float32 [channels]},
            for `HubBackbone.inference_features`.
        logit_offset: float32 [C], subtracted from the head's logits (0 where
            the head is not corrected).
        corrected_ops: How many of the backbone's kernel ops were corrected.
        head_corrected: Whether the head was (`dynamic` keeps a head of
            under `DYNAMIC_RANGE_MIN_ELEMENTS` weights in float).
        images: How many images the expectations were taken over.
        backbone_graph: False where the backbone converts through its own
            call: it has no graph to correct.
    """

    output_offsets: dict
    logit_offset: np.ndarray
    corrected_ops: int
    head_corrected: bool
    images: int
    backbone_graph: bool

    def description(self):
        """What was corrected, for the log: "52 backbone layers and the head"."""
        parts = []
        if self.corrected_ops:
            parts.append(f"{self.corrected_ops} backbone layer"
                         f"{'' if self.corrected_ops == 1 else 's'}")
        if self.head_corrected:
            parts.append("the head")
        if not self.backbone_graph:
            why = "the backbone converts through its own call: no graph to correct"
        elif not self.corrected_ops:
            why = "no backbone kernel is large enough to be quantized"
        else:
            why = None
        return (" and ".join(parts) or "no layer") + (f" ({why})" if why else "")


def int8_rounded(kernel, channel_axes):
    """The kernel as symmetric per-channel int8 quantization stores it.

    Each output channel (the entries along `channel_axes`) gets the scale
    max|w| / 127 and its weights round to the nearest multiple, as TFLite's
    per-channel weight quantization does in both `dynamic` and `int8`.

    Args:
        kernel: float numpy array.
        channel_axes: The axes that index output channels.

    Returns:
        float32 numpy array, `kernel`'s shape, on the int8 grid.
    """
    kernel = np.asarray(kernel, np.float32)
    reduce = tuple(a for a in range(kernel.ndim) if a not in channel_axes)
    scale = np.abs(kernel).max(axis=reduce, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    # Halves away from zero, as TFLite rounds (numpy's np.round goes to even).
    steps = np.sign(kernel) * np.floor(np.abs(kernel) / scale + 0.5)
    return (np.clip(steps, -127, 127) * scale).astype(np.float32)


def bias_correction(model, mode, images):
    """Empirical bias correction of int8 weight rounding.

    Rounding a layer's weights to int8 (W + dW) shifts its output by
    dW * x, whose mean over images is a systematic per-channel error that
    the following layers carry and amplify. Bias correction (Nagel et al.
    2019, "Data-Free Quantization Through Weight Equalization and Bias
    Correction", section 4.2, here with the expectation taken over real
    images, as their empirical variant) subtracts E[dW * x] from each
    output. Measured on the shared MobileNetV2 (BUILD_NOTES.md,
    Deployment), top-1 agreement with the SavedModel: dynamic 98.8% -> 99.4%
    and int8 97.7% -> 98.8% on the clothing photos; dynamic 93.6% -> 97.4%
    and int8 76.6% -> 86.8% on CIFAR-10.

    Each of the backbone's `kernel_ops()` and the head the mode quantizes
    (`dynamic`: kernels of `DYNAMIC_RANGE_MIN_ELEMENTS` values or more;
    `int8`: all) is corrected from its float input (E taken over `images`;
    a convolution's mean also over positions).

    Args:
        model: The trained `ImageClassifier`.
        mode: "dynamic" or "int8".
        images: uint8 [N, S, S, 3] training images (N > 0).

    Returns:
        A `BiasCorrection`.
    """
    backbone = model.backbone
    all_ops = backbone.kernel_ops()
    quantized = [(op, kernel) for op, kernel in ((op, backbone.kernel_value(op))
                                                 for op in all_ops)
                 if mode == "int8" or kernel.size >= DYNAMIC_RANGE_MIN_ELEMENTS]
    ops = [op for op, _ in quantized]
    deltas = [tf.constant(int8_rounded(kernel, op.channel_axes) - kernel)
              for op, kernel in quantized]
    # Per op: the sum of dW * x over its output rows (images times
    # positions), and how many rows.
    sums, rows = [0.0] * len(ops), [0] * len(ops)
    feature_sum = 0.0
    for start in range(0, len(images), _CORRECTION_BATCH):
        batch = preprocessing.to_unit_range(
            tf.constant(images[start:start + _CORRECTION_BATCH]))
        if ops:
            batch_sums, batch_rows, features = backbone.kernel_op_sums(batch, ops, deltas)
        else:
            batch_sums, batch_rows = [], []
            features = tf.reduce_sum(backbone.inference_features(batch), 0).numpy()
        sums = [total + s for total, s in zip(sums, batch_sums)]
        rows = [total + r for total, r in zip(rows, batch_rows)]
        feature_sum += features
    count = len(images)
    # A model without a Dense `head` (one that only has `classify_features`)
    # keeps its logits as they are.
    head = getattr(getattr(model, "head", None), "kernel", None)
    head = None if head is None else head.numpy()
    head_corrected = head is not None and (
        mode == "int8" or head.size >= DYNAMIC_RANGE_MIN_ELEMENTS)
    logit_offset = ((feature_sum / count) @ (int8_rounded(head, (1,)) - head)
                    if head_corrected else 0.0)
    return BiasCorrection(
        output_offsets={op.name: (total / n).astype(np.float32)
                        for op, total, n in zip(ops, sums, rows)},
        logit_offset=np.asarray(logit_offset, np.float32),
        corrected_ops=len(ops), head_corrected=head_corrected, images=count,
        backbone_graph=bool(all_ops))


def check_mode(mode):
    """Returns `mode` if it is one of `TFLITE_MODES`, else raises ValueError."""
    if mode not in TFLITE_MODES:
        raise ValueError(
            f"Invalid value for `tflite`. Expected one of {TFLITE_MODES} (or "
            f"None for no TFLite model). Received: tflite={mode!r}")
    return mode


def check_backbone(backbone, mode):
    """Refuses a TFLite export of a backbone that computes in float16 or
    bfloat16, which TFLite's built-in ops do not run (the converter fails
    on its Conv2D), before anything is trained or written.

    Raises:
        ValueError: naming the precision and the way to a float32 module.
    """
    precision = backbone.reduced_precision()
    if precision:
        raise ValueError(
            f"Invalid value for `tflite`. Expected None: the module {backbone.hub_handle!r} "
            f"computes in {precision} (a Keras model built under a mixed-precision policy), "
            f"which TFLite's built-in ops cannot run. Received: tflite={mode!r}. Leave "
            "tflite out, or build the Keras model again under the float32 policy, copy "
            "the weights into it (`set_weights`) and `model.export` that.")


def sample_rows(length, count, seed=0):
    """Seeded sorted row indices: `count` of range(length), or all of them.

    Used to draw the int8 calibration images from the training images
    (`REPRESENTATIVE_IMAGE_COUNT`) and to cap the parity check's validation
    images (`PARITY_IMAGE_COUNT`).

    Returns:
        int64 numpy [min(length, count)], ascending.
    """
    return np.sort(np.random.default_rng(seed).permutation(length)[:count])


class _TFLiteModule(tf.Module):
    """The classifier behind a fixed-size uint8 input, for the converter."""

    def __init__(self, model, image_size, correction=None):
        super().__init__(name="tflite_classifier")
        self.model = model
        self.correction = correction
        # No autograph: the function has no Python control flow to convert.
        self.classify = tf.function(
            self._classify, autograph=False, input_signature=[
                tf.TensorSpec([1, image_size, image_size, 3], tf.uint8, name="image")])

    def _classify(self, image):
        # The model's own preprocessing would add the resize (a tf.cond with
        # ScaleAndTranslate in one branch); the input is already at size.
        images = preprocessing.to_unit_range(image)
        correction = self.correction
        features = self.model.backbone.inference_features(
            images, correction.output_offsets if correction else None)
        if correction is None or not correction.head_corrected:
            logits = self.model.classify_features(features, training=False)
        elif (head := self.model.head).activation is keras.activations.linear:
            # The head (dropout is the identity here) with the offset in its
            # bias, which the converter folds: a subtraction after it stays
            # an op of its own.
            logits = tf.matmul(features, head.kernel) + (head.bias - correction.logit_offset)
        else:
            raise TypeError(f"Bias correction needs a linear head. Received: "
                            f"activation={head.activation.__name__}")
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}


def convert(model, image_size, mode, representative_images=None, correct_bias=True):
    """Converts an `ImageClassifier` to a TFLite flatbuffer.

    Args:
        model: A trained `model.ImageClassifier` (or a model with a
            `backbone` that has `inference_features`, and `classify_features`).
        image_size: int, the side S of the uint8 [1, S, S, 3] input.
        mode: One of `TFLITE_MODES`.
        representative_images: uint8 [N, S, S, 3] training images, needed
            for "int8" (a few hundred: see `REPRESENTATIVE_IMAGE_COUNT`);
            for "dynamic" optional, and used for its bias correction;
            ignored by "float32" and "float16".
        correct_bias: With `representative_images`, "dynamic" and "int8"
            are bias-corrected (`bias_correction`; logged). False converts
            the weights as they are (the benchmarks' comparison).

    Returns:
        The .tflite file contents, bytes.

    Raises:
        ValueError: for an unknown mode, int8 without representative
            images of the right shape, or dynamic with images of another
            shape.
    """
    check_mode(mode)
    corrects = correct_bias and mode in ("dynamic", "int8") and (
        representative_images is not None)
    if mode == "int8" or corrects:
        representative_images = _check_representative_images(representative_images,
                                                              image_size, mode)
    correction = None
    if corrects:
        correction = bias_correction(model, mode, representative_images)
        logger.info(
            "Bias correction of the int8 weights (Nagel et al. 2019): the mean rounding "
            "error of %s, over %d training images, taken back out of their outputs.",
            correction.description(), correction.images)
    module = _TFLiteModule(model, image_size, correction)
    # The converter's per-conversion INFO and WARNING lines go through absl;
    # TensorFlow's "Assets written to" as it saves the frozen function.
    with native_stderr.quiet_saving_logs(absl_level=logging.ERROR), native_stderr.filtered(
            _NATIVE_NOISE, logger.debug), scratch.temporary_folder_for_libraries(
                CONVERSION_KIND, "the temporary folder of a TFLite conversion"):
        converter = _signature_converter(module.classify.get_concrete_function())
        if mode in ("float16", "dynamic", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            def representative_dataset():
                for image in representative_images:
                    yield [image[np.newaxis]]

            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_output_type = tf.float32
        return converter.convert()


def _signature_converter(function):
    """A converter of `function` whose model has a signature.

    The variables are frozen into constants first, and the frozen function
    is converted with a `trackable_obj`: that path (through a SavedModel)
    writes the signature "serving_default" (input "image", output
    "probabilities") that `Interpreter.get_signature_runner()` needs. Given
    `function` itself, that path keeps the variables as resource variables
    initialised from a saved copy, and the hub module's restored variables
    came out unset (the float32 model agreed with the SavedModel on 23% of
    images); the path without `trackable_obj` freezes them but writes no
    signature. tests/test_tflite.py checks float32 parity to 1e-5 and the
    signature.
    """
    # The converter's own freezing (TensorFlow has no public one for a
    # TF2 function).
    from tensorflow.python.framework import convert_to_constants
    frozen = convert_to_constants.convert_variables_to_constants_v2(function)
    holder = tf.Module()
    (spec,) = function.structured_input_signature[0]
    holder.classify = tf.function(
        lambda image: {"probabilities": frozen(image)[0]}, autograph=False,
        input_signature=[spec])
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [holder.classify.get_concrete_function()], trackable_obj=holder)


def _check_representative_images(images, image_size, mode):
    expected = (image_size, image_size, 3)
    if (images is None or not hasattr(images, "shape") or len(images) == 0
            or tuple(images.shape[1:]) != expected or images.dtype != np.uint8):
        received = None if images is None else (
            f"{getattr(images, 'dtype', type(images).__name__)} "
            f"{tuple(getattr(images, 'shape', ()))}")
        raise ValueError(
            "Invalid value for `representative_images`. Expected uint8 "
            f"[N, {image_size}, {image_size}, 3] training images (N > 0) "
            + ("to calibrate int8 quantization" if mode == "int8" else
               "for the bias correction of dynamic-range quantization")
            + f". Received: {received}. Pass a sample of the training images"
            + (", or use tflite='dynamic'." if mode == "int8" else
               " at that size, or None (no bias correction)."))
    return np.asarray(images)


# What the converter's calibrator prints on a quantized conversion
# (tensorflow/tensorflow#58119) and LiteRT on a process's first interpreter
# (its XNNPACK delegate), straight to stderr: to DEBUG.
_NATIVE_NOISE = re.compile(
    r"^(fully_quantize: \d+, inference_type: |INFO: Created TensorFlow Lite XNNPACK delegate"
    # The converter's own glog lines on every conversion: options its
    # SavedModel path ignores, metadata the exporter adds later, the
    # model's operation count, and Grappler's session for the freezing.
    r"|" + native_stderr.glog_line(
        r"(tf_tfl_flatbuffer_helpers|flatbuffer_export)",
        r"(Ignored (output_format|drop_control_dependency)\.|Skipping runtime version metadata"
        r"|Estimated count of arithmetic ops: )")
    + r"|" + native_stderr.glog_line(*native_stderr.GRAPPLER_SESSION)
    # The SavedModel path `_signature_converter` takes: the converter loads
    # the frozen function back from a temporary SavedModel.
    + r"|" + native_stderr.glog_line(
        r"(reader|loader|mlir_graph_optimization_pass|dump_mlir_util)",
        r"(Reading (SavedModel from|meta graph with tags|SavedModel debug info)"
        r"|Restoring SavedModel bundle|Running initialization op on SavedModel bundle"
        r"|SavedModel load for tags|MLIR V1 optimization pass is not enabled"
        r"|disabling MLIR crash reproducer)") + ")")


class TFLiteClassifier:
    """Runs a classifier .tflite file written by `convert`.

    Args:
        model: Path of a .tflite file, or its contents (bytes).
        num_threads: Interpreter threads; None lets LiteRT choose.

    Attributes:
        image_size: S of the uint8 [1, S, S, 3] input.
        num_classes: C of the float32 [1, C] output.
    """

    def __init__(self, model, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter
        with native_stderr.filtered(_NATIVE_NOISE, logger.debug):
            if isinstance(model, (bytes, bytearray)):
                self._interpreter = Interpreter(model_content=bytes(model),
                                                num_threads=num_threads)
            else:
                self._interpreter = Interpreter(model_path=os.fspath(model),
                                                num_threads=num_threads)
            self._interpreter.allocate_tensors()
        (self._input,) = self._interpreter.get_input_details()
        (self._output,) = self._interpreter.get_output_details()
        shape = self._input["shape"]
        if (len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3
                or self._input["dtype"] != np.uint8):
            raise ValueError(
                f"The TFLite model takes {self._input['dtype'].__name__} "
                f"{list(shape)}, not uint8 [1, S, S, 3]: it was not written by "
                "tfhub_ft. Export it with `FineTuner.export(..., tflite=...)`.")
        self.image_size = int(shape[1])
        self.num_classes = int(self._output["shape"][-1])

    def predict(self, images):
        """Class probabilities, one image at a time.

        Args:
            images: uint8 [N, S, S, 3] RGB in [0, 255], already resized to
                `image_size` (see `preprocessing.resize_images`).

        Returns:
            float32 numpy [N, C].
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"Invalid value for `images`. Expected uint8 [N, {self.image_size}, "
                f"{self.image_size}, 3]. Received: {images.dtype} {images.shape}. "
                "Resize them with `preprocessing.resize_images` first.")
        outputs = np.empty((len(images), self.num_classes), np.float32)
        for row, image in enumerate(images):
            self._interpreter.set_tensor(self._input["index"], image[np.newaxis])
            self._interpreter.invoke()
            outputs[row] = self._dequantized_output()
        return outputs

    def _dequantized_output(self):
        output = self._interpreter.get_tensor(self._output["index"])[0]
        if self._output["dtype"] == np.float32:
            return output
        scale, zero_point = self._output["quantization"]
        return (output.astype(np.float32) - zero_point) * scale


def parity_report(tflite_model, saved_model_dir, images, labels, mode=None):
    """Compares a .tflite model with the SavedModel it came from.

    Both run on the same already-resized images: the TFLite model on the
    uint8 pixels, the SavedModel's `serving_images` signature on the same
    pixels / 255 (its resize is skipped at the training size).

    Args:
        tflite_model: Path of the .tflite file, or its contents.
        saved_model_dir: The export folder (`export.export_saved_model`).
        images: uint8 [N, S, S, 3] validation images.
        labels: int [N] class indices.
        mode: The conversion mode, recorded in the report.

    Returns:
        A dict: mode, images (N), the keys of `compare_predictions`,
        tflite_bytes (file size), tflite_latency_ms (median milliseconds
        per image, one image per call, on this machine's CPU).
    """
    classifier = TFLiteClassifier(tflite_model)
    images = np.asarray(images)
    labels = np.asarray(labels)
    latencies = []
    tflite_probabilities = np.empty((len(images), classifier.num_classes), np.float32)
    for row in range(len(images)):
        start = time.perf_counter()
        tflite_probabilities[row] = classifier.predict(images[row:row + 1])[0]
        latencies.append(time.perf_counter() - start)
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_images"]
    saved_probabilities = np.concatenate([
        serve(images=tf.constant(images[start:start + 64], tf.float32) / 255.0)[
            "probabilities"].numpy()
        for start in range(0, len(images), 64)])
    size = (len(tflite_model) if isinstance(tflite_model, (bytes, bytearray))
            else os.path.getsize(tflite_model))
    return {
        "mode": mode,
        "images": int(len(images)),
        **compare_predictions(tflite_probabilities, saved_probabilities, labels),
        "tflite_bytes": int(size),
        "tflite_latency_ms": float(np.median(latencies) * 1000.0),
    }


def compare_predictions(tflite_probabilities, saved_probabilities, labels):
    """How a converted model's predictions differ from the original's.

    Args:
        tflite_probabilities, saved_probabilities: float [N, C] class
            probabilities of the same N images.
        labels: int [N] class indices.

    Returns:
        A dict: top1_agreement (fraction of images where both pick the
        same class), tflite_accuracy and saved_model_accuracy (top-1, in
        [0, 1]), max_probability_difference (largest absolute difference
        of any class probability), changed_images (images whose top-1
        class differs), changed_near_ties (of those, the ones whose
        SavedModel top-2 probability margin is under near_tie_margin),
        near_tie_margin (`NEAR_TIE_MARGIN`).
    """
    tflite_top1 = tflite_probabilities.argmax(-1)
    saved_top1 = saved_probabilities.argmax(-1)
    changed = tflite_top1 != saved_top1
    top_two = np.sort(saved_probabilities, axis=-1)[:, -2:]
    near_tie = top_two[:, 1] - top_two[:, 0] < NEAR_TIE_MARGIN
    return {
        "top1_agreement": float(np.mean(~changed)),
        "tflite_accuracy": float(np.mean(tflite_top1 == labels)),
        "saved_model_accuracy": float(np.mean(saved_top1 == labels)),
        "max_probability_difference": float(
            np.max(np.abs(tflite_probabilities - saved_probabilities))),
        "changed_images": int(np.sum(changed)),
        "changed_near_ties": int(np.sum(changed & near_tie)),
        "near_tie_margin": NEAR_TIE_MARGIN,
    }


def export_tflite(model, image_size, export_dir, mode, representative_images=None,
                  validation_images=None, validation_labels=None,
                  int8_agreement_threshold=INT8_AGREEMENT_THRESHOLD):
    """Writes `export_dir/model.tflite` and, with validation data, its parity report.

    Called by `FineTuner.export(export_dir, tflite=mode)` on the staging
    folder, after the SavedModel is saved there, so both are renamed into
    place together.

    Args:
        model: The trained `ImageClassifier`.
        image_size: S, the training image size.
        export_dir: A folder holding the SavedModel of `model`.
        mode: One of `TFLITE_MODES`.
        representative_images: uint8 [N, S, S, 3] training images: int8
            calibrates on them, and dynamic and int8 are bias-corrected
            on them (`convert`).
        validation_images, validation_labels: uint8 [N, S, S, 3] and int
            [N]; when given, the parity report is logged and written to
            `export_dir/tflite_parity.json`.
        int8_agreement_threshold: Top-1 agreement under which an int8 model
            gets a WARNING.

    Returns:
        The parity report dict (see `parity_report`), or None without
        validation data.
    """
    contents = convert(model, image_size, mode, representative_images)
    path = os.path.join(export_dir, TFLITE_FILE)
    with open(path, "wb") as f:
        f.write(contents)
    if validation_images is None or len(validation_images) == 0:
        logger.info("Wrote %s (%s, %d bytes); no validation images for a parity check.",
                    TFLITE_FILE, mode, len(contents))
        return None
    report = parity_report(path, export_dir, validation_images, validation_labels, mode)
    with open(os.path.join(export_dir, PARITY_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    logger.info(
        "TFLite %s model, %s bytes: top-1 agreement with the SavedModel %.4f on %d "
        "validation images (%s), accuracy %.4f "
        "(SavedModel %.4f), largest probability difference %.4f, %.2f ms per image.",
        mode, f"{report['tflite_bytes']:,}", report["top1_agreement"], report["images"],
        "no image changed class" if not report["changed_images"] else
        f"{report['changed_images']} changed class, {report['changed_near_ties']} of them "
        "near ties", report["tflite_accuracy"],
        report["saved_model_accuracy"], report["max_probability_difference"],
        report["tflite_latency_ms"])
    if mode == "int8" and report["top1_agreement"] < int8_agreement_threshold:
        logger.warning(
            "The int8 TFLite model agrees with the SavedModel on only %.1f%% of "
            "the validation images (under %.1f%%): %d change class, %d of them "
            "near ties (top two SavedModel probabilities within %g); accuracy "
            "%.4f against the SavedModel's %.4f. Export with tflite='dynamic' or "
            "tflite='float16' for closer agreement.", 100 * report["top1_agreement"],
            100 * int8_agreement_threshold, report["changed_images"],
            report["changed_near_ties"], report["near_tie_margin"],
            report["tflite_accuracy"], report["saved_model_accuracy"])
    return report

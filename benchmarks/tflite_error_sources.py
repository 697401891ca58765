"""Where the quantized TFLite models' disagreements and bytes come from.

    python benchmarks/tflite_error_sources.py [--hub_url=DIR --train_dir=DIR --validation_dir=DIR]

Trains the default recipe once (as `benchmarks/tflite_modes.py`), then on
the validation images:

1. how many images are near ties in the SavedModel (top-2 probability
   margin), and each quantized mode's disagreements by that margin;
2. weight rounding alone: the float model with the weight tensors that
   dynamic-range quantization stores as int8 (those of 1,024 values or more,
   and the head) rounded to int8 per output channel, computed in float32.
   If it changes the same images as the `dynamic` model, the activations'
   run-time quantization adds nothing and no converter setting of that
   mode can remove the error;
3. the same for every conv kernel alone, one at a time: how many images
   each one flips;
4. int8 with some layers left in float (LiteRT's quantization debugger,
   selective quantization): the softmax and head; the input
   normalisation, the first conv and the four most weight-sensitive early
   ones (the "stem"): agreement, accuracy, bytes;
5. what takes the bytes of each .tflite file: tensor data by dtype and the
   quantization parameters (a float32 scale and an int64 zero point per
   channel, from the flatbuffer schema), and the same accounting for
   MobileNetV2 1.0 from its layer shapes (`keras.applications`, no
   weights downloaded).

The conversions here are not bias-corrected (`correct_bias=False`): this
measures what the converter alone does; `tflite_modes.py` prints both.
Exits with the reason when the shared data is absent.
"""

import csv
import io
import warnings

import numpy as np
from absl import app, flags, logging

import common
import tensorflow as tf
import tfhub_ft
from tfhub_ft import tflite

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")

MODES = ("float16", "dynamic", "int8")
# Dynamic-range quantization keeps weight tensors under this many values in
# float32 (TFLite's `weights_min_num_elements` default).
DYNAMIC_RANGE_MIN_ELEMENTS = 1024
# Flatbuffer bytes per quantization-parameter entry: a float32 scale and an
# int64 zero point (schema `QuantizationParameters`).
QUANTIZATION_ENTRY_BYTES = 12


def margins(probabilities):
    ranked = np.sort(probabilities, axis=-1)
    return ranked[:, -1] - ranked[:, -2]


def int8_round(array, axis):
    """Symmetric per-channel int8 rounding along `axis`, back to float."""
    reduce = tuple(i for i in range(array.ndim) if i != axis % array.ndim)
    scale = np.abs(array).max(axis=reduce, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(array / scale), -127, 127) * scale).astype(array.dtype)


def channel_axis(variable):
    # Depthwise kernels are [h, w, channels, 1]; conv kernels [h, w, in, out].
    return 2 if "depthwise" in variable.name else -1


def float_probabilities(model, images, head_kernel=None):
    """The float model's probabilities, optionally with another head kernel."""
    kernel = model.head.kernel.numpy() if head_kernel is None else head_kernel
    bias = model.head.bias.numpy()
    out = []
    for start in range(0, len(images), 64):
        batch = tf.cast(images[start:start + 64], tf.float32) / 255.0
        features = model.backbone(batch, training=False)
        out.append(tf.nn.softmax(tf.matmul(features, kernel) + bias).numpy())
    return np.concatenate(out)


# Output-tensor name parts of the layers kept in float for the "stem"
# variant (MobileNetV2's layer names): the input normalisation ops come
# first in the graph and are added by position.
STEM_LAYERS = ("/Conv1/", "/expanded_conv_depthwise/", "/expanded_conv_project/",
               "/block_2_depthwise/", "/block_2_project/")


def int8_with_float_layers(model, size, calibration_images, ops=(), stem=False):
    """Full-integer conversion except `ops` (TFLite op names) and the stem."""
    module = tflite._TFLiteModule(model, size)
    def make_debugger(nodes=None):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [module.classify.get_concrete_function()])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration_images)
        # Float kernels must be allowed for the denylisted layers.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_output_type = tf.float32
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(ops) or None, denylisted_nodes=nodes)
        return tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_options=options,
            debug_dataset=lambda: ([image[np.newaxis]] for image in calibration_images[:8]))
    with warnings.catch_warnings(), tflite._quiet_converter_logging():
        warnings.simplefilter("ignore")  # the debugger's deprecated tf.lite.Interpreter
        nodes = None
        if stem:
            debugger = make_debugger()
            debugger.run()
            dump = io.StringIO()
            debugger.layer_statistics_dump(dump)
            dump.seek(0)
            names = [row["tensor_name"] for row in csv.DictReader(dump)]
            nodes = names[:3] + [n for n in names if any(part in n for part in STEM_LAYERS)]
        return make_debugger(nodes).get_nondebug_quantized_model()


def tensor_accounting(contents):
    """Bytes of tensor data by dtype, and of quantization parameters."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=contents)
    by_dtype, entries = {}, 0
    for detail in interpreter.get_tensor_details():
        entries += len(detail["quantization_parameters"]["scales"])
        try:
            data = interpreter.get_tensor(detail["index"])
        except ValueError:  # activations: no data in the file
            continue
        name = np.dtype(detail["dtype"]).name
        by_dtype[name] = by_dtype.get(name, 0) + data.nbytes
    quantization = entries * QUANTIZATION_ENTRY_BYTES
    other = len(contents) - sum(by_dtype.values()) - quantization
    return by_dtype, quantization, other


def conv_shapes(alpha):
    """Weights, output channels, and those of tensors under 1,024 values."""
    import keras
    network = keras.applications.MobileNetV2(
        alpha=alpha, weights=None, include_top=False, input_shape=(224, 224, 3))
    weights = channels = small_weights = small_channels = 0
    for layer in network.layers:
        # Keras 3's DepthwiseConv2D is not a Conv2D subclass.
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        shape = layer.kernel.shape
        count = int(np.prod(shape))
        outputs = int(shape[2] * shape[3]) if isinstance(
            layer, keras.layers.DepthwiseConv2D) else int(shape[3])
        weights += count
        channels += outputs
        if count < DYNAMIC_RANGE_MIN_ELEMENTS:
            small_weights += count
            small_channels += outputs
    return weights, channels, small_weights, small_channels


def estimated_sizes(alpha, classes, overhead):
    """float32, dynamic and int8 file bytes from the per-tensor accounting."""
    weights, channels, small_weights, small_channels = conv_shapes(alpha)
    head = 1280 * classes
    biases = channels + classes
    float32 = 4 * (weights + head + biases) + overhead
    dynamic = ((weights - small_weights + head) + 4 * (small_weights + biases)
               + QUANTIZATION_ENTRY_BYTES * (channels - small_channels + classes) + overhead)
    # int8: per-channel parameters on both the kernel and the int32 bias.
    int8 = (weights + head + 4 * biases
            + QUANTIZATION_ENTRY_BYTES * 2 * biases + overhead)
    return weights + head + biases, float32, dynamic, int8


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    tuner = tfhub_ft.FineTuner(FLAGS.hub_url)
    tuner.fit(FLAGS.train_dir, FLAGS.validation_dir, verbose=0)
    logging.info("Validation accuracy %.4f", tuner.validation_metrics["accuracy"])
    model, size = tuner.model, tuner.image_size
    images, labels = tuner._parity_data
    reference = float_probabilities(model, images)
    chosen = reference.argmax(-1)
    margin = margins(reference)
    print(f"{len(images)} validation images; SavedModel-equivalent float accuracy "
          f"{np.mean(chosen == labels):.4f}; median top-2 margin {np.median(margin):.3f}")
    print("images with top-2 margin under 0.02 / 0.05 / 0.1 / 0.2: " + " / ".join(
        str(int(np.sum(margin < t))) for t in (0.02, 0.05, 0.1, 0.2)))

    print("\n| model | agreement | changed images | their top-2 margins in the float model "
          "| agreement where margin >= 0.2 | bytes |")
    print("|---|---|---|---|---|---|")
    files = {"float32": tflite.convert(model, size, "float32")}
    for mode in MODES:
        # Without bias correction: the error sources are measured as the
        # converter alone leaves them (what the correction is then up against).
        files[mode] = tflite.convert(model, size, mode, tuner._representative_images,
                                     correct_bias=False)
        got = tflite.TFLiteClassifier(files[mode]).predict(images).argmax(-1)
        changed = np.flatnonzero(got != chosen)
        confident = margin >= 0.2
        print(f"| TFLite {mode} | {np.mean(got == chosen):.4f} | {len(changed)} | "
              f"{', '.join(f'{m:.3f}' for m in np.sort(margin[changed]))} | "
              f"{np.mean(got[confident] == chosen[confident]):.4f} | {len(files[mode])} |")

    for label, ops, stem in (("int8, float softmax + head", ("SOFTMAX", "FULLY_CONNECTED"), False),
                             ("int8, float stem (not full integer)", (), True)):
        contents = int8_with_float_layers(model, size, tuner._representative_images, ops, stem)
        got = tflite.TFLiteClassifier(contents).predict(images).argmax(-1)
        changed = np.flatnonzero(got != chosen)
        print(f"| TFLite {label} | {np.mean(got == chosen):.4f} | {len(changed)} | "
              f"{', '.join(f'{m:.3f}' for m in np.sort(margin[changed]))} | "
              f"{np.mean(got[margin >= 0.2] == chosen[margin >= 0.2]):.4f} | {len(contents)} "
              f"(accuracy {np.mean(got == labels):.4f}) |")

    kernels = [v for v in model.backbone.module.variables if len(v.shape) == 4]
    originals = [v.numpy() for v in kernels]
    head_int8 = int8_round(model.head.kernel.numpy(), -1)
    large = [v for v in kernels if np.prod(v.shape) >= DYNAMIC_RANGE_MIN_ELEMENTS]
    try:
        for variable in large:
            variable.assign(int8_round(variable.numpy(), channel_axis(variable)))
        rounded = float_probabilities(model, images, head_int8).argmax(-1)
        print(f"| float32 compute, int8-rounded weights of the {len(large)} kernels "
              f"dynamic-range quantizes + head | {np.mean(rounded == chosen):.4f} | "
              f"{int(np.sum(rounded != chosen))} | "
              f"{', '.join(f'{m:.3f}' for m in np.sort(margin[rounded != chosen]))} | - | - |")
        for variable, original in zip(kernels, originals):
            variable.assign(original)
        for variable in kernels:
            variable.assign(int8_round(variable.numpy(), channel_axis(variable)))
        rounded = float_probabilities(model, images, head_int8).argmax(-1)
        print(f"| float32 compute, int8-rounded weights of all {len(kernels)} kernels + head "
              f"| {np.mean(rounded == chosen):.4f} | {int(np.sum(rounded != chosen))} | "
              f"{', '.join(f'{m:.3f}' for m in np.sort(margin[rounded != chosen]))} | - | - |")
        for variable, original in zip(kernels, originals):
            variable.assign(original)
        flips = []
        for variable, original in zip(kernels, originals):
            variable.assign(int8_round(original, channel_axis(variable)))
            flips.append((int(np.sum(float_probabilities(model, images).argmax(-1) != chosen)),
                          variable.name, int(original.size)))
            variable.assign(original)
    finally:
        for variable, original in zip(kernels, originals):
            variable.assign(original)
    flips.sort(key=lambda row: -row[0])
    print("\nOne kernel rounded to int8 at a time (float compute): images changed, kernel, values")
    for count, name, values in flips[:12]:
        print(f"  {count:2d}  {name}  {values}")
    print(f"  kernels that change no image alone: {sum(1 for f in flips if f[0] == 0)} "
          f"of {len(flips)}")

    print("\n| model | file | float32 data | int8 data | int32 data | quantization "
          "parameters | graph and the rest |")
    print("|---|---|---|---|---|---|---|")
    overheads = {}
    for mode in ("float32", "dynamic", "int8"):
        by_dtype, quantization, other = tensor_accounting(files[mode])
        overheads[mode] = other
        print(f"| {mode} | {len(files[mode])} | {by_dtype.get('float32', 0)} | "
              f"{by_dtype.get('int8', 0)} | {by_dtype.get('int32', 0)} | {quantization} | "
              f"{other} |")
    classes = len(tuner.class_names)
    print(f"\nEstimated from the layer shapes ({classes} classes, graph bytes as measured):")
    for alpha in (0.35, 1.0):
        params, float32, dynamic, int8 = estimated_sizes(
            alpha, classes, overheads["int8"])
        print(f"  MobileNetV2 {alpha}: {params / 1e6:.2f} M parameters; float32 "
              f"{float32 / 2**20:.2f} MB, dynamic {dynamic / 2**20:.2f} MB "
              f"({float32 / dynamic:.2f}x smaller), int8 {int8 / 2**20:.2f} MB "
              f"({float32 / int8:.2f}x smaller)")


if __name__ == "__main__":
    app.run(main)

"""The shared MobileNetV2 re-saved the way TF Hub's own Slim modules are laid
out, against the original: block order, accuracy and time of the default recipe.

The re-saved module has the same weights under TF-Slim names
(`MobilenetV2/expanded_conv_N/expand/weights`, ...), is built from raw
`tf.nn` ops in a `tf.Module`, lists its `variables` in alphabetical order
(`expanded_conv_10` before `expanded_conv_2`), and its `__call__` passes
`training` as a boolean tensor to one `tf.cond` around the whole network
(batch statistics and moving-average updates in the True branch). Batch
norm is fused, as TF-Slim exported TF Hub's MobileNets.

    python benchmarks/module_shapes.py [--repeats=1]

Prints the features' largest difference from the original, both block
lists by position, and per module the default recipe's validation accuracy
and fit seconds (decoding shared, done once), with their ratio.
"""

import os
import tempfile

from absl import app, flags, logging

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "The shared MobileNetV2 folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_integer("repeats", 1, "Fits per module, alternating.")

# Keras MobileNetV2: the blocks that halve the resolution.
_STRIDE_2_BLOCKS = {1, 3, 6, 13}
_EPSILON = 1e-3  # Keras MobileNetV2's batch-norm epsilon.
_MOMENTUM = 0.999


def _slim_name(keras_name):
    """Keras MobileNetV2 variable name -> TF-Slim name."""
    layer, variable = keras_name.split(":")[0].split("/")
    if variable in ("kernel", "depthwise_kernel"):
        variable = "weights" if variable == "kernel" else "depthwise_weights"
    scope = {"Conv1": "Conv", "bn_Conv1": "Conv/BatchNorm", "Conv_1": "Conv_1",
             "Conv_1_bn": "Conv_1/BatchNorm"}.get(layer)
    if scope is None:
        layer = layer.replace("block_", "expanded_conv_").replace(
            "expanded_conv_depthwise", "expanded_conv/depthwise").replace(
            "expanded_conv_project", "expanded_conv/project")
        for part in ("expand", "depthwise", "project"):
            layer = layer.replace(f"_{part}", f"/{part}")
        scope = layer.replace("_BN", "/BatchNorm")
    return f"MobilenetV2/{scope}/{variable}"


def build_slim_module(original, path):
    """Saves `original`'s weights as a Slim-style, tf.cond module at `path`."""
    import tensorflow as tf

    variables = {}
    for variable in original.variables:
        name = _slim_name(variable.name)
        variables[name] = tf.Variable(variable.numpy(), trainable=variable.trainable,
                                      name=name)

    def get(scope):
        return variables[f"MobilenetV2/{scope}"]

    def batch_norm(x, scope, training):
        # Fused, as TF-Slim's batch_norm(fused=True) exported TF Hub's
        # MobileNets (and as the Keras original runs it).
        gamma, beta = get(f"{scope}/gamma"), get(f"{scope}/beta")
        moving_mean, moving_variance = get(f"{scope}/moving_mean"), get(f"{scope}/moving_variance")
        if training:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=_EPSILON, is_training=True)
            moving_mean.assign(moving_mean * _MOMENTUM + mean * (1 - _MOMENTUM))
            moving_variance.assign(moving_variance * _MOMENTUM + variance * (1 - _MOMENTUM))
            return y
        return tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, moving_mean, moving_variance, epsilon=_EPSILON,
            is_training=False)[0]

    def conv(x, scope, training, relu=True, stride=1):
        x = tf.nn.conv2d(x, get(f"{scope}/weights"), stride, "SAME")
        x = batch_norm(x, f"{scope}/BatchNorm", training)
        return tf.nn.relu6(x) if relu else x

    def depthwise(x, scope, training, stride):
        x = tf.nn.depthwise_conv2d(x, get(f"{scope}/depthwise_weights"),
                                   [1, stride, stride, 1], "SAME")
        return tf.nn.relu6(batch_norm(x, f"{scope}/BatchNorm", training))

    def network(images, training):
        x = conv(images * 2.0 - 1.0, "Conv", training, stride=2)
        x = depthwise(x, "expanded_conv/depthwise", training, 1)
        x = conv(x, "expanded_conv/project", training, relu=False)
        for n in range(1, 17):
            inputs, stride = x, 2 if n in _STRIDE_2_BLOCKS else 1
            x = conv(x, f"expanded_conv_{n}/expand", training)
            x = depthwise(x, f"expanded_conv_{n}/depthwise", training, stride)
            x = conv(x, f"expanded_conv_{n}/project", training, relu=False)
            if stride == 1 and inputs.shape[-1] == x.shape[-1]:
                x = x + inputs
        x = conv(x, "Conv_1", training)
        return tf.reduce_mean(x, axis=[1, 2])

    @tf.function
    def forward(images, training):
        return tf.cond(training, lambda: network(images, True),
                       lambda: network(images, False))

    @tf.function
    def call(images, training=False):
        return forward(images, tf.constant(training))

    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (False, True):
        call.get_concrete_function(spec, training=training)
    ordered = [variables[name] for name in sorted(variables)]
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    root.variables = ordered
    root.trainable_variables = [v for v in ordered if v.trainable]
    root.regularization_losses = []
    tf.saved_model.save(root, path)
    return path


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    import numpy as np
    import tensorflow as tf

    import tfhub_ft

    slim_path = build_slim_module(tf.saved_model.load(FLAGS.hub_url),
                                  os.path.join(tempfile.mkdtemp(), "slim_mobilenet_v2"))
    images = tf.random.stateless_uniform([4, 224, 224, 3], seed=[3, 4])
    original, slim = tfhub_ft.FineTuner(FLAGS.hub_url), tfhub_ft.FineTuner(slim_path)
    difference = float(np.max(np.abs(original.backbone(images) - slim.backbone(images))))
    print(f"machine: {common.machine()}")
    print(f"features, largest difference from the original: {difference:.2e}")
    print("blocks by position (original -> Slim re-save), order from "
          f"{original.backbone.block_order_source} / {slim.backbone.block_order_source}:")
    for a, b in zip(original.backbone.blocks, slim.backbone.blocks):
        same = a.parameter_count == b.parameter_count
        print(f"  {a.name:>10} -> {b.name:<18} {'same size' if same else 'DIFFERENT'}")
    train, validation = original.load_data(FLAGS.train_dir, FLAGS.validation_dir)
    results = {"original": [], "slim + tf.cond": []}
    for _ in range(FLAGS.repeats):
        for name, path in (("original", FLAGS.hub_url), ("slim + tf.cond", slim_path)):
            tuner = tfhub_ft.FineTuner(path)
            with common.Timer() as timer:
                tuner.fit(train, validation, verbose=0)
            results[name].append((tuner.validation_metrics["accuracy"], timer.seconds))
            print(f"{name:16s} val_accuracy={results[name][-1][0]:.4f} "
                  f"fit_seconds={timer.seconds:.1f}", flush=True)
    print("\n| module | validation accuracy | fit seconds |\n|---|---|---|")
    for name, runs in results.items():
        accuracy = np.mean([a for a, _ in runs])
        seconds = np.mean([s for _, s in runs])
        print(f"| {name} | {accuracy:.4f} | {seconds:.1f} |")
    ratio = np.mean([s for _, s in results["slim + tf.cond"]]) / np.mean(
        [s for _, s in results["original"]])
    print(f"\ntime ratio (slim / original): {ratio:.2f}")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)

"""Tiny hub modules in the shapes real hubs publish, for the block tests.

Each builder saves a TF2 SavedModel in the TF Hub image feature-vector
convention (`__call__(images, training)`, `variables`, `trainable_variables`,
`regularization_losses`) with random weights and a few blocks, named and
built the way that family of hub modules is:

- `slim_mobilenet`: TF-Slim names (`MobilenetV2/expanded_conv_N/...`), raw
  `tf.nn` ops in a `tf.Module`, `variables` saved in alphabetical order
  (`expanded_conv_10` before `expanded_conv_2`), and `training` passed on as
  a boolean tensor to `tf.cond` (around the whole network, around each batch
  norm, or, with `cond=None`, a Python bool and no control flow).
- `bit_resnet`: BiT / ResNet v2 (`resnet/root_block`, `resnet/blockB/unitUU`,
  group norm and weight standardisation, a final `resnet/group_norm`).
- `efficientnet`: TF Hub EfficientNet (`efficientnet-b0/stem`, `blocks_N`,
  `head`), blocks numbered past 10.
- `vit`: a ViT encoder (patch and position embedding, a class token,
  `Transformer/encoderblock_N/...`, `Transformer/encoder_norm`).
- `nested_functions`: a call that goes through two levels of nested
  `tf.function`s (stage, then layer).
- `captured_constants`: normalises the images with tensors made outside the
  call, which the saved function captures by value (a Keras `Normalization`
  layer's statistics).
- `keras_exported`: a tf_keras model saved with `tf.saved_model.save`, whose
  restored call runs one function per layer.
- `keras3_export`, `keras3_signature`: the same model in Keras 3, written by
  `model.export` (a fixed 32-px input) and by `tf.saved_model.save`: no
  `__call__`, only a `serving_default` signature (and `variables` after
  `export` only).

Every builder in `BUILDERS` returns (path, expected block names bottom to
top). Two more shapes are not in it, for their own tests:
`xla_compiled_layers` (convolutions in XLA-compiled functions, which cannot
be cut; returns the path) and `generic_layer_names` (Keras's default layer
names, which no rule knows).
"""

import numpy as np
import tensorflow as tf

from tfhub_ft.demo import tiny_backbone

_EPSILON = 1e-3
_MOMENTUM = 0.99


class _Variables:
    """Creates named variables from one seeded generator."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.all = []

    def add(self, name, shape, kind="weight", trainable=True):
        if kind == "weight":
            fan_in = int(np.prod(shape[:-1])) or 1
            value = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif kind == "ones":
            value = np.ones(shape)
        elif kind == "small":
            value = self.rng.standard_normal(shape) * 0.1
        else:
            value = np.zeros(shape)
        variable = tf.Variable(value.astype(np.float32), trainable=trainable, name=name)
        self.all.append(variable)
        return variable

    def batch_norm(self, scope, channels):
        return [self.add(f"{scope}/gamma", [channels], "ones"),
                self.add(f"{scope}/beta", [channels], "small"),
                self.add(f"{scope}/moving_mean", [channels], "small", trainable=False),
                self.add(f"{scope}/moving_variance", [channels], "ones", trainable=False)]


def _batch_norm_inference(x, gamma, beta, mean, variance):
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, _EPSILON)


def _batch_norm_training(x, gamma, beta, moving_mean, moving_variance):
    mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
    moving_mean.assign(moving_mean * _MOMENTUM + mean * (1 - _MOMENTUM))
    moving_variance.assign(moving_variance * _MOMENTUM + variance * (1 - _MOMENTUM))
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, _EPSILON)


def _save(path, call, variables, trainable_variables, image_size=None):
    """Saves `call(images, training)` as a hub feature vector at `path`."""
    return tiny_backbone.save_feature_vector_function(call, variables, trainable_variables,
                                                      path, image_size)


def slim_mobilenet(path, cond="network", blocks=11, width=4, seed=0):
    """MobileNetV2 with TF-Slim names; `cond` in {"network", "layer", None}."""
    v = _Variables(seed)
    scope = "MobilenetV2"

    def conv(name, shape):
        weights = v.add(f"{scope}/{name}/weights", shape)
        return weights, v.batch_norm(f"{scope}/{name}/BatchNorm", shape[-1])

    stem = conv("Conv", [3, 3, 3, width])
    first = {"depthwise": (v.add(f"{scope}/expanded_conv/depthwise/depthwise_weights",
                                 [3, 3, width, 1]),
                           v.batch_norm(f"{scope}/expanded_conv/depthwise/BatchNorm", width)),
             "project": conv("expanded_conv/project", [1, 1, width, width])}
    units = [first]
    for n in range(1, blocks + 1):
        units.append({
            "expand": conv(f"expanded_conv_{n}/expand", [1, 1, width, 2 * width]),
            "depthwise": (v.add(f"{scope}/expanded_conv_{n}/depthwise/depthwise_weights",
                                [3, 3, 2 * width, 1]),
                          v.batch_norm(f"{scope}/expanded_conv_{n}/depthwise/BatchNorm",
                                       2 * width)),
            "project": conv(f"expanded_conv_{n}/project", [1, 1, 2 * width, width]),
        })
    top = conv("Conv_1", [1, 1, width, 4 * width])
    strides = {0: 1, 1: 2, 3: 2}

    def batch_norm(x, params, training):
        if cond == "layer":
            return tf.cond(training,
                           lambda: _batch_norm_training(x, *params),
                           lambda: _batch_norm_inference(x, *params))
        if training is True:
            return _batch_norm_training(x, *params)
        return _batch_norm_inference(x, *params)

    def network(images, training):
        x = images * 2.0 - 1.0
        weights, bn = stem
        x = tf.nn.relu6(batch_norm(tf.nn.conv2d(x, weights, 2, "SAME"), bn, training))
        for index, unit in enumerate(units):
            inputs = x
            if "expand" in unit:
                weights, bn = unit["expand"]
                x = tf.nn.relu6(batch_norm(tf.nn.conv2d(x, weights, 1, "SAME"), bn, training))
            weights, bn = unit["depthwise"]
            stride = strides.get(index, 1)
            x = tf.nn.depthwise_conv2d(x, weights, [1, stride, stride, 1], "SAME")
            x = tf.nn.relu6(batch_norm(x, bn, training))
            weights, bn = unit["project"]
            x = batch_norm(tf.nn.conv2d(x, weights, 1, "SAME"), bn, training)
            if stride == 1 and "expand" in unit:
                x = x + inputs
        weights, bn = top
        x = tf.nn.relu6(batch_norm(tf.nn.conv2d(x, weights, 1, "SAME"), bn, training))
        return tf.reduce_mean(x, axis=[1, 2])

    if cond is None:
        @tf.function
        def call(images, training=False):
            return network(images, training)
    else:
        # As TF Hub's Slim exports do: the Python flag becomes a boolean
        # tensor, and one traced function serves both modes.
        @tf.function
        def forward(images, training):
            if cond == "network":
                return tf.cond(training, lambda: network(images, True),
                               lambda: network(images, False))
            return network(images, training)

        @tf.function
        def call(images, training=False):
            return forward(images, tf.constant(training))

    ordered = sorted(v.all, key=lambda variable: variable.name)
    expected = (["stem", "expanded_conv"]
                + [f"expanded_conv_{n}" for n in range(1, blocks + 1)] + ["top"])
    return _save(path, call, ordered, [x for x in ordered if x.trainable]), expected


def _standardize(kernel):
    mean, variance = tf.nn.moments(kernel, axes=[0, 1, 2], keepdims=True)
    return (kernel - mean) / tf.sqrt(variance + 1e-10)


def _group_norm(x, gamma, beta, groups=2):
    shape = tf.shape(x)
    channels = x.shape[-1]
    grouped = tf.reshape(x, tf.concat([shape[:3], [groups, channels // groups]], 0))
    mean, variance = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
    grouped = (grouped - mean) * tf.math.rsqrt(variance + 1e-5)
    return tf.reshape(grouped, shape) * gamma + beta


def bit_resnet(path, seed=0, width=4):
    """BiT-style ResNet v2: root block, 2 blocks of 2 units, final group norm."""
    v = _Variables(seed)
    root = v.add("resnet/root_block/standardized_conv2d/kernel", [3, 3, 3, width])
    units, names = [], []
    for block in (1, 2):
        for unit in (1, 2):
            scope = f"resnet/block{block}/unit{unit:02d}"
            names.append(f"block{block}/unit{unit:02d}")
            units.append([(v.add(f"{scope}/{part}/group_norm/gamma", [width], "ones"),
                           v.add(f"{scope}/{part}/group_norm/beta", [width], "small"),
                           v.add(f"{scope}/{part}/standardized_conv2d/kernel",
                                 [3 if part == "b" else 1] * 2 + [width, width]))
                          for part in "abc"])
    final = (v.add("resnet/group_norm/gamma", [width], "ones"),
             v.add("resnet/group_norm/beta", [width], "small"))

    @tf.function
    def call(images, training=False):
        del training  # No batch norm: both modes compute the same.
        x = tf.nn.conv2d(images, _standardize(root), 2, "SAME")
        for unit in units:
            shortcut = x
            for gamma, beta, kernel in unit:
                x = tf.nn.relu(_group_norm(x, gamma, beta))
                x = tf.nn.conv2d(x, _standardize(kernel), 1, "SAME")
            x = x + shortcut
        x = tf.nn.relu(_group_norm(x, *final))
        return tf.reduce_mean(x, axis=[1, 2])

    return (_save(path, call, v.all, v.all), ["stem"] + names + ["top"])


def efficientnet(path, blocks=11, seed=0, width=4):
    """TF Hub EfficientNet names: stem, blocks_0..blocks_<n-1>, head."""
    v = _Variables(seed)
    scope = "efficientnet-b0"

    def conv_bn(name, shape, depthwise=False):
        kernel = v.add(f"{scope}/{name}/{'depthwise_conv2d/depthwise_kernel' if depthwise else 'conv2d/kernel'}",
                       shape)
        return kernel, v.batch_norm(f"{scope}/{name}/tpu_batch_normalization", shape[-2] if depthwise else shape[-1])

    stem = conv_bn("stem", [3, 3, 3, width])
    units = [(conv_bn(f"blocks_{n}", [3, 3, width, 1], depthwise=True),
              conv_bn(f"blocks_{n}/project", [1, 1, width, width])) for n in range(blocks)]
    head = conv_bn("head", [1, 1, width, 2 * width])

    @tf.function
    def call(images, training=False):
        batch_norm = _batch_norm_training if training else _batch_norm_inference
        kernel, bn = stem
        x = tf.nn.swish(batch_norm(tf.nn.conv2d(images, kernel, 2, "SAME"), *bn))
        for (depthwise, bn1), (project, bn2) in units:
            shortcut = x
            x = tf.nn.swish(batch_norm(
                tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME"), *bn1))
            x = batch_norm(tf.nn.conv2d(x, project, 1, "SAME"), *bn2) + shortcut
        kernel, bn = head
        x = tf.nn.swish(batch_norm(tf.nn.conv2d(x, kernel, 1, "SAME"), *bn))
        return tf.reduce_mean(x, axis=[1, 2])

    ordered = sorted(v.all, key=lambda variable: variable.name)
    return (_save(path, call, ordered, [x for x in ordered if x.trainable]),
            ["stem"] + [f"blocks_{n}" for n in range(blocks)] + ["top"])


def _layer_norm(x, scale, bias):
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + 1e-6) * scale + bias


def vit(path, blocks=3, seed=0, dim=8, patch=8, image_size=32):
    """A ViT encoder: patch + position embedding, encoder blocks, final norm.

    It takes a fixed image size (its position embedding has one entry per
    patch), as ViT modules on TF Hub do.
    """
    v = _Variables(seed)
    tokens = (image_size // patch) ** 2 + 1
    embedding = (v.add("embedding/kernel", [patch, patch, 3, dim]),
                 v.add("embedding/bias", [dim], "zeros"))
    cls = v.add("cls", [1, 1, dim], "small")
    position = v.add("Transformer/posembed_input/pos_embedding", [1, tokens, dim], "small")
    layers = []
    for n in range(blocks):
        scope = f"Transformer/encoderblock_{n}"

        def dense(name, shape):
            return (v.add(f"{scope}/{name}/kernel", shape),
                    v.add(f"{scope}/{name}/bias", [shape[-1]], "zeros"))

        layers.append({
            "norm1": (v.add(f"{scope}/LayerNorm_0/scale", [dim], "ones"),
                      v.add(f"{scope}/LayerNorm_0/bias", [dim], "zeros")),
            "attention": [dense(f"MultiHeadDotProductAttention_1/{name}", [dim, dim])
                          for name in ("query", "key", "value", "out")],
            "norm2": (v.add(f"{scope}/LayerNorm_2/scale", [dim], "ones"),
                      v.add(f"{scope}/LayerNorm_2/bias", [dim], "zeros")),
            "mlp": [dense("MlpBlock_3/Dense_0", [dim, 2 * dim]),
                    dense("MlpBlock_3/Dense_1", [2 * dim, dim])],
        })
    final = (v.add("Transformer/encoder_norm/scale", [dim], "ones"),
             v.add("Transformer/encoder_norm/bias", [dim], "zeros"))

    @tf.function
    def call(images, training=False):
        del training
        x = tf.nn.conv2d(images * 2.0 - 1.0, embedding[0], patch, "VALID") + embedding[1]
        x = tf.reshape(x, [tf.shape(x)[0], -1, dim])
        x = tf.concat([tf.tile(cls, [tf.shape(x)[0], 1, 1]), x], axis=1) + position
        for layer in layers:
            y = _layer_norm(x, *layer["norm1"])
            (q, qb), (k, kb), (val, vb), (o, ob) = layer["attention"]
            weights = tf.nn.softmax(tf.matmul(y @ q + qb, y @ k + kb, transpose_b=True)
                                    / np.sqrt(dim))
            x = x + (weights @ (y @ val + vb)) @ o + ob
            y = _layer_norm(x, *layer["norm2"])
            (w1, b1), (w2, b2) = layer["mlp"]
            x = x + tf.nn.gelu(y @ w1 + b1) @ w2 + b2
        return _layer_norm(x, *final)[:, 0]

    return (_save(path, call, v.all, v.all, image_size),
            ["stem"] + [f"encoderblock_{n}" for n in range(blocks)] + ["top"])


def _keras_style_layers(v, width, blocks):
    """[(block name, conv kernel, batch norm variables)]: a stem and
    `blocks` blocks, one 3x3 convolution and batch norm each."""
    layers = [("stem", v.add("stem_conv/kernel", [3, 3, 3, width]),
               v.batch_norm("stem_bn", width))]
    for n in range(1, blocks + 1):
        layers.append((f"block_{n}", v.add(f"block_{n}_conv/kernel", [3, 3, width, width]),
                       v.batch_norm(f"block_{n}_bn", width)))
    return layers


def nested_functions(path, seed=0, width=4, blocks=3):
    """Keras-style names; the call runs stage functions that run layer functions."""
    v = _Variables(seed)
    layers = _keras_style_layers(v, width, blocks)

    @tf.function
    def layer(x, kernel, gamma, beta, mean, variance):
        return tf.nn.relu(_batch_norm_inference(
            tf.nn.conv2d(x, kernel, 1, "SAME"), gamma, beta, mean, variance))

    @tf.function
    def stage(x, group):
        for _, kernel, bn in group:
            x = layer(x, kernel, *bn)
        return x

    @tf.function
    def call(images, training=False):
        del training
        x = stage(images, layers[:2])
        x = stage(x, layers[2:])
        return tf.reduce_mean(x, axis=[1, 2])

    return _save(path, call, v.all, [x for x in v.all if x.trainable]), [name for name, *_ in layers]


def captured_constants(path, seed=0, width=4, blocks=3):
    """Keras-style names; the call normalises the images with tensors made
    outside it (as a Keras `Normalization` layer's mean and variance are),
    which the saved function captures by value."""
    v = _Variables(seed)
    layers = _keras_style_layers(v, width, blocks)
    mean = tf.constant([0.485, 0.456, 0.406])
    std = tf.constant([0.229, 0.224, 0.225])

    @tf.function
    def call(images, training=False):
        del training
        x = (images - mean) / std
        for _, kernel, bn in layers:
            x = tf.nn.relu(_batch_norm_inference(tf.nn.conv2d(x, kernel, 1, "SAME"), *bn))
        return tf.reduce_mean(x, axis=[1, 2])

    return _save(path, call, v.all, [x for x in v.all if x.trainable]), [name for name, *_ in layers]


def xla_compiled_layers(path, seed=0, width=4, blocks=3):
    """Keras-style names; each block's convolution is a function compiled
    with XLA (as Keras 3 compiles grouped convolutions on the CPU), which
    Grappler leaves as a call that reads the kernel itself. Not in
    `BUILDERS`: its blocks cannot be traced or cut."""
    v = _Variables(seed)
    layers = _keras_style_layers(v, width, blocks)

    @tf.function(jit_compile=True)
    def conv(x, kernel):
        return tf.nn.conv2d(x, kernel, 1, "SAME")

    @tf.function
    def call(images, training=False):
        del training
        x = images
        for _, kernel, bn in layers:
            x = tf.nn.relu(_batch_norm_inference(conv(x, kernel), *bn))
        return tf.reduce_mean(x, axis=[1, 2])

    return _save(path, call, v.all, [x for x in v.all if x.trainable])


def generic_layer_names(path, seed=0, width=4, layers=4, branches=False):
    """Keras's default layer names, which say nothing of blocks (Keras
    InceptionV3): conv2d/kernel, batch_normalization/gamma, conv2d_1/...,
    listed in alphabetical order. With `branches`, the layers after the
    first run in parallel on its output (an Inception module). Not in
    `BUILDERS`: no rule knows them."""
    v = _Variables(seed)
    stack, channels = [], 3
    for n in range(layers):
        suffix = f"_{n}" if n else ""
        stack.append((v.add(f"conv2d{suffix}/kernel", [3, 3, channels, width]),
                      v.batch_norm(f"batch_normalization{suffix}", width)))
        channels = width

    def conv_bn(x, kernel, bn):
        return tf.nn.relu(_batch_norm_inference(tf.nn.conv2d(x, kernel, 1, "SAME"), *bn))

    @tf.function
    def call(images, training=False):
        del training
        x = conv_bn(images, *stack[0])
        if branches:
            x = tf.concat([conv_bn(x, *layer) for layer in stack[1:]], axis=-1)
        else:
            for layer in stack[1:]:
                x = conv_bn(x, *layer)
        return tf.reduce_mean(x, axis=[1, 2])

    ordered = sorted(v.all, key=lambda variable: variable.name)
    return (_save(path, call, ordered, [x for x in ordered if x.trainable]),
            ["conv2d"] + [f"conv2d_{n}" for n in range(1, layers)])


def keras_exported(path, seed=0, width=4, blocks=3, package="tf_keras", save="saved_model",
                   image_size=None, policy=None):
    """A Keras functional model, MobileNetV2's layer names, saved as a SavedModel.

    `package` "tf_keras" (Keras 2) or "keras" (Keras 3). `save`:
    "saved_model" (`tf.saved_model.save`: a Keras 2 model restores with
    one function per layer, a Keras 3 one with a `serving_default`
    signature only) or "export" (Keras 3's `model.export`: a `serve`
    endpoint, its signature and `variables`, no `__call__`). `policy`: a
    Keras 3 dtype policy to build it under ("mixed_float16": it computes
    in float16 inside), restored to float32 after.
    """
    import importlib

    k = importlib.import_module(package)
    if policy is not None:
        k.mixed_precision.set_global_policy(policy)
        try:
            return keras_exported(path, seed, width, blocks, package, save, image_size)
        finally:
            k.mixed_precision.set_global_policy("float32")
    k.utils.set_random_seed(seed)
    inputs = k.Input([image_size, image_size, 3])
    x = k.layers.Conv2D(width, 3, 2, padding="same", name="Conv1")(inputs)
    x = k.layers.BatchNormalization(name="bn_Conv1")(x)
    x = k.layers.ReLU()(x)
    for n in range(1, blocks + 1):
        shortcut = x
        x = k.layers.Conv2D(width, 3, padding="same", name=f"block_{n}_conv")(x)
        x = k.layers.BatchNormalization(name=f"block_{n}_BN")(x)
        x = k.layers.ReLU()(x)
        x = k.layers.Add()([x, shortcut])
    x = k.layers.Conv2D(2 * width, 1, name="Conv_1")(x)
    x = k.layers.BatchNormalization(name="Conv_1_bn")(x)
    x = k.layers.GlobalAveragePooling2D()(k.layers.ReLU()(x))
    model = k.Model(inputs, x)
    if save == "export":
        model.export(str(path), verbose=False)
    else:
        tf.saved_model.save(model, str(path))
    return str(path), ["stem"] + [f"block_{n}" for n in range(1, blocks + 1)] + ["top"]


def split_and_whole_gradients(backbone, count, size):
    """Unfreezes the top `count` blocks and returns ((features, gradients)
    through the split, (features, gradients) through the whole backbone)
    for three random images of side `size`."""
    split = backbone.split_top_blocks(count)
    assert split is not None
    backbone.unfreeze_top_blocks(count)
    trainable = backbone.trainable_weights
    images = tf.random.stateless_uniform([3, size, size, 3], seed=[5, 6])

    @tf.function
    def split_gradients(images):
        boundary = split.bottom(images)
        with tf.GradientTape() as tape:
            features = split.top(boundary)
            loss = tf.reduce_sum(features ** 2)
        return features, tape.gradient(loss, trainable)

    @tf.function
    def whole_gradients(images):
        with tf.GradientTape() as tape:
            features = backbone(images)
            loss = tf.reduce_sum(features ** 2)
        return features, tape.gradient(loss, trainable)

    return split_gradients(images), whole_gradients(images)


BUILDERS = {
    "keras_exported": keras_exported,
    "keras3_export": lambda path: keras_exported(path, package="keras", save="export",
                                                 image_size=32),
    "keras3_signature": lambda path: keras_exported(path, package="keras"),
    "slim_cond_network": lambda path: slim_mobilenet(path, cond="network"),
    "slim_cond_layer": lambda path: slim_mobilenet(path, cond="layer"),
    "slim_python_bool": lambda path: slim_mobilenet(path, cond=None),
    "bit_resnet": bit_resnet,
    "efficientnet": efficientnet,
    "vit": vit,
    "nested_functions": nested_functions,
    "captured_constants": captured_constants,
}

"""A tiny CNN in the TF Hub image feature vector format, and saving it as one.

`TinyBackbone` is a small `tf.Module` following the TF2 TF Hub "image feature
vector" convention (`__call__(images, training)` returning `[batch, features]`,
plus `variables`, `trainable_variables` and `regularization_losses`);
`save_feature_vector_module` writes such a module as a SavedModel that
`tfhub_ft.HubBackbone` (and `hub.KerasLayer`) load like a real hub module.
The quickstart pretrains one; the tests use a constant-initialised one.
"""

import os

import numpy as np
import tensorflow as tf

from tfhub_ft.hub_format import feature_vector_root
from tfhub_ft.config import check_integer

# Batch-norm constants match Keras' BatchNormalization defaults.
_BATCH_NORM_MOMENTUM = 0.99
_BATCH_NORM_EPSILON = 1e-3


def _constant_pattern(shape, fan_in):
    """Deterministic, non-degenerate weights in [-1, 1], scaled like He init.

    A multiplicative hash modulo the prime 1009 instead of a short-period ramp:
    with a period that divides into the channel stride, output channels would
    get identical weights and the features would repeat.
    """
    size = int(np.prod(shape))
    ramp = ((np.arange(size) * 389) % 1009) / 504.0 - 1.0
    # The ramp is ~uniform on [-1, 1] (variance 1/3); sqrt(3) restores He
    # variance so activations keep their scale through the layers.
    return (ramp * np.sqrt(3.0 * 2.0 / fan_in)).reshape(shape).astype(np.float32)


def check_widths(widths):
    """Returns `widths` as a tuple of ints, or raises a Keras-style ValueError.

    Args:
        widths: Output channels of a `TinyBackbone`'s stem and blocks: a
            sequence of at least 2 positive integers.
    """
    try:
        values = tuple(widths)
    except TypeError:
        values = ()
    if len(values) < 2 or not all(
            isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1
            for w in values):
        raise ValueError(
            "Invalid value for `widths`. Expected a sequence of at least 2 positive "
            f"integers. Received: widths={widths!r}")
    return tuple(int(w) for w in values)


class TinyBackbone(tf.Module):
    """A few-thousand-parameter CNN in the TF Hub image feature vector convention.

    Layers: `stem` (3x3 conv, stride 2), one `block_<k>` per entry of
    `widths[1:]` (3x3 conv, stride 2), and `head` (1x1 conv to `widths[-1]`);
    each conv is followed by batch normalization and ReLU, and the result is
    averaged over height and width. Variables are named Keras-style, in this
    order per layer: `<layer>_conv/kernel`, `<layer>_bn/gamma`, `<layer>_bn/beta`,
    `<layer>_bn/moving_mean`, `<layer>_bn/moving_variance` (the moving
    statistics are not trainable), with `<layer>` in `stem, block_1, ...,
    block_<len(widths) - 1>, head`. `variables` and `trainable_variables` are
    returned in that layer order.

    Args:
        widths: Sequence of at least 2 positive integers: output channels of
            the stem, then of each block.
        constant_init: If True, kernels get a fixed deterministic pattern (so
            outputs are exactly reproducible across instances); otherwise
            seeded He-normal values.
        seed: Non-negative integer seeding the He-normal initialization.
        name: Optional module name.
    """

    def __init__(self, widths=(4, 8, 8, 16), constant_init=False, seed=0, name=None):
        super().__init__(name=name)
        self._widths = check_widths(widths)
        seed = check_integer("seed", seed, 0)
        self._pool_features = True
        rng = np.random.default_rng(seed)
        layers = [("stem", 3, 2, self._widths[0])]
        layers += [
            (f"block_{index}", 3, 2, width)
            for index, width in enumerate(self._widths[1:], start=1)
        ]
        layers += [("head", 1, 1, self._widths[-1])]
        self._layer_strides = tuple(stride for _, _, stride, _ in layers)
        # One flat list in layer order: `tf.Module.variables` would sort by
        # attribute name, and block order matters to layer-grouping rules.
        self._ordered_variables = []
        input_channels = 3
        for layer_name, kernel_size, _, output_channels in layers:
            kernel_shape = (kernel_size, kernel_size, input_channels, output_channels)
            fan_in = kernel_size * kernel_size * input_channels
            if constant_init:
                kernel = _constant_pattern(kernel_shape, fan_in)
            else:
                kernel = rng.standard_normal(kernel_shape) * np.sqrt(2.0 / fan_in)
                kernel = kernel.astype(np.float32)
            ones = np.ones((output_channels,), np.float32)
            zeros = np.zeros((output_channels,), np.float32)
            batch_norm_scope = f"{layer_name}_bn"
            self._add_variable(f"{layer_name}_conv", "kernel", kernel, trainable=True)
            self._add_variable(batch_norm_scope, "gamma", ones, trainable=True)
            self._add_variable(batch_norm_scope, "beta", zeros, trainable=True)
            self._add_variable(batch_norm_scope, "moving_mean", zeros, trainable=False)
            self._add_variable(batch_norm_scope, "moving_variance", ones, trainable=False)
            input_channels = output_channels
        # Real TF Hub modules expose this list; the library must accept it empty.
        self.regularization_losses = []

    def _add_variable(self, scope, name, initial_value, trainable):
        # The trailing "/" makes the scope absolute, so the variable names do
        # not depend on whatever name scope the caller happens to be in.
        with tf.name_scope(f"{scope}/"):
            variable = tf.Variable(initial_value, trainable=trainable, name=name)
        self._ordered_variables.append(variable)

    @property
    def variables(self):
        """All variables, in layer order, as a tuple."""
        return tuple(self._ordered_variables)

    @property
    def trainable_variables(self):
        """Trainable variables (kernels, gammas, betas), in layer order, as a tuple."""
        return tuple(variable for variable in self._ordered_variables if variable.trainable)

    @property
    def widths(self):
        """The `widths` the module was built with; features have `widths[-1]` channels."""
        return self._widths

    @tf.function(reduce_retracing=True)
    def __call__(self, images, training=False):
        """Computes image features.

        Args:
            images: float32 `[N, H, W, 3]`, RGB in `[0, 1]`.
            training: Python bool. If True, batch normalization uses batch
                statistics and updates the moving statistics (momentum 0.99);
                if False, it uses the moving statistics.

        Returns:
            float32 `[N, widths[-1]]` features (non-negative, post-ReLU).
        """
        # TF Hub image modules take [0, 1] inputs and rescale internally.
        outputs = tf.convert_to_tensor(images, dtype=tf.float32) * 2.0 - 1.0
        for layer_index, stride in enumerate(self._layer_strides):
            kernel, gamma, beta, moving_mean, moving_variance = self._ordered_variables[
                5 * layer_index : 5 * layer_index + 5
            ]
            outputs = tf.nn.conv2d(outputs, kernel, strides=stride, padding="SAME")
            if training:
                mean, variance = tf.nn.moments(outputs, axes=[0, 1, 2])
                momentum = _BATCH_NORM_MOMENTUM
                moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
                moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
            else:
                mean, variance = moving_mean, moving_variance
            outputs = tf.nn.batch_normalization(
                outputs, mean, variance, beta, gamma, _BATCH_NORM_EPSILON
            )
            outputs = tf.nn.relu(outputs)
        if self._pool_features:
            outputs = tf.reduce_mean(outputs, axis=[1, 2])
        return outputs



def save_feature_vector_module(module, path):
    """Saves a module as a TF2 TF Hub style SavedModel.

    The saved root object has `__call__(images, training=False)` traced for
    `images` float32 `[None, None, None, 3]` and both `training=True` and
    `training=False`, plus `variables`, `trainable_variables` (lists, in the
    module's order) and `regularization_losses` (an empty list), matching what
    `tf.saved_model.load` returns for a real TF Hub image feature vector model.

    Args:
        module: A `tf.Module` whose `__call__` is a `tf.function` taking
            `(images, training)`, e.g. a `TinyBackbone`.
        path: Directory to write the SavedModel to.

    Returns:
        `path` as a str.

    Raises:
        TypeError: If `module` is not a `tf.Module`.
    """
    if not isinstance(module, tf.Module):
        raise TypeError(
            "Invalid type for `module`. Expected a `tf.Module`. "
            f"Received: module of type {type(module).__name__}"
        )
    module_call = module.__call__

    # A fresh function traced only for any image shape: the module's own may
    # hold traces for fixed shapes (from training), and a restored SavedModel
    # runs the first saved trace an input is compatible with.
    @tf.function
    def call(images, training=False):
        return module_call(images, training=training)

    return save_feature_vector_function(call, module.variables, module.trainable_variables,
                                        path)


def save_feature_vector_function(call, variables, trainable_variables, path,
                                 image_size=None):
    """Saves `call(images, training)` as a TF Hub image feature vector.

    Args:
        call: A `tf.function` of float32 images `[N, S, S, 3]` and a Python
            bool `training`; traced here for both values of `training`.
        variables, trainable_variables: What the module exposes, in order.
        path: Directory to write the SavedModel to.
        image_size: The fixed side the module takes, or None for any size.

    Returns:
        `path` as a str.
    """
    path = os.fspath(path)
    tf.saved_model.save(feature_vector_root(call, variables, trainable_variables, image_size),
                        path)
    return path


def build_tiny_backbone(path, **kwargs):
    """Creates a `TinyBackbone(**kwargs)` and saves it with `save_feature_vector_module`.

    Returns:
        `path` as a str.
    """
    return save_feature_vector_module(TinyBackbone(**kwargs), path)


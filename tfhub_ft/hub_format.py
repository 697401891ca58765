"""The TF Hub image feature-vector format: writing it, and reading a Keras
export as one.

A TF Hub image feature vector is a TF2 SavedModel whose root has
`__call__(images, training)` (float32 `[N, H, W, 3]` RGB in [0, 1] ->
float32 `[N, D]`), `variables`, `trainable_variables` and
`regularization_losses`. `feature_vector_root` builds such a root to save.

Keras 3 writes no `__call__`: `model.export(folder)` and
`tf.saved_model.save(keras_model, folder)` leave a `serving_default`
signature traced for inference. `serving_endpoint` finds one that is a
feature vector (or says what it is instead), and
`load_serving_signature_as_module` saves it as a hub module in a scratch
folder and loads that back, so that everything downstream (block tracing,
the split, TFLite, the backbone export) reads the one format it knows.
"""

from typing import List, NamedTuple, Optional

import tensorflow as tf

from tfhub_ft import native_stderr, scratch


class HubModuleError(ValueError):
    """A handle that cannot be resolved, or a module of the wrong kind."""


# How a Keras model becomes a module tfhub_ft reads, for messages.
KERAS_EXPORT_ADVICE = (
    "A Keras model works when it ends at its pooled features (no classification "
    "layer; `include_top=False, pooling=\"avg\"` for keras.applications) and is "
    "written with `model.export(folder)`.")

# Part of the name of the `__call__` that `load_serving_signature_as_module`
# traces: it survives saving and loading (in function names), so a module
# re-exported from one (`export_backbone`) is still known for one.
_SIGNATURE_CALL = "tfhub_ft_serving_signature_call"

# The prefix of the scratch folder the copy is saved in (`scratch.make_folder`).
MODULE_COPY_KIND = "tfhub_ft_module"


def feature_vector_root(call, variables, trainable_variables, image_size=None):
    """A root object to save as a TF Hub image feature vector.

    Args:
        call: A `tf.function` of float32 images `[N, S, S, 3]` and a Python
            bool `training`; traced here for both values of `training`.
        variables, trainable_variables: What the module exposes, in order.
        image_size: The fixed side S the module takes, or None for any size.

    Returns:
        An `AutoTrackable` with `__call__`, `variables`, `trainable_variables`
        and `regularization_losses` (empty), for `tf.saved_model.save`.
    """
    image_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    for training in (False, True):
        call.get_concrete_function(image_spec, training=training)
    # A bare trackable root, because `tf.Module.variables` is a read-only
    # property and hub consumers read these as plain saved attributes.
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    root.variables = list(variables)
    root.trainable_variables = list(trainable_variables)
    root.regularization_losses = []
    return root


class ServingEndpoint(NamedTuple):
    """A `serving_default` signature that is an image feature vector.

    Attributes:
        function: The signature's concrete function (keyword input, dict
            output).
        input_name, output_name: Its one input's and one output's keys.
        image_size: The side it fixes (a square, or one side with the
            other open), else None.
        variables, trainable_variables: The module's own lists where it has
            them (Keras's order), else those the signature reads; only those
            the signature reads either way (Keras's random-seed state of
            layers it does not run is left out).
    """

    function: object
    input_name: str
    output_name: str
    image_size: Optional[int]
    variables: List[tf.Variable]
    trainable_variables: List[tf.Variable]


def serving_endpoint(module):
    """A SavedModel's `serving_default` signature, if it is a feature vector.

    Args:
        module: A loaded SavedModel (`tf.saved_model.load`).

    Returns:
        (`ServingEndpoint`, None) where the signature takes one float32
        `[N, H, W, 3]` input, N open, and returns one `[N, D]` floating-point
        output; else (None, what the signature is instead, for a message).
    """
    function = getattr(module, "signatures", {}).get("serving_default")
    if function is None:
        return None, "it has no `serving_default` signature either"
    args, kwargs = function.structured_input_signature
    outputs = function.structured_outputs

    def described(specs):  # By name: TensorFlow's order of keyword inputs varies.
        return ", ".join(f"{name} {getattr(spec, 'dtype', spec).name} "
                         f"{getattr(spec, 'shape', '')}" for name, spec in sorted(specs))

    takes = described(kwargs.items())
    returns = described(outputs.items()) if isinstance(outputs, dict) else repr(outputs)
    if args or len(kwargs) != 1:
        return None, (f"its `serving_default` takes {takes or 'no keyword inputs'}, "
                      "not one image batch")
    (input_name, spec), = kwargs.items()
    if (not isinstance(spec, tf.TensorSpec) or spec.dtype != tf.float32
            or spec.shape.rank != 4 or spec.shape[3] != 3):
        return None, (f"its `serving_default` takes {takes}, not float32 RGB images "
                      "[N, H, W, 3] (build the model on `keras.Input((None, None, 3))` "
                      "or a fixed size, float32, and scale pixels inside it)")
    if spec.shape[0] is not None:
        return None, (f"its `serving_default` takes {takes}: a fixed batch of "
                      f"{spec.shape[0]} (leave `batch_size` out of `keras.Input`)")
    if not isinstance(outputs, dict) or len(outputs) != 1:
        return None, (f"its `serving_default` returns {returns}, not one feature vector "
                      "(build the model with the one output to fine-tune from)")
    (output_name, output), = outputs.items()
    if (not isinstance(output, tf.TensorSpec) or not output.dtype.is_floating
            or output.shape.rank != 2):
        kind = (" (a feature map: pool it, e.g. `pooling=\"avg\"` or "
                "`GlobalAveragePooling2D`)" if output.shape.rank == 4 else "")
        return None, f"its `serving_default` returns {returns}, not [N, D] features{kind}"
    height, width = spec.shape[1], spec.shape[2]
    if height and width and height != width:
        return None, (f"its `serving_default` takes images of {height} x {width} "
                      "pixels only, and tfhub_ft trains on square images (export "
                      "it with a square input size, or None for any size)")
    read = {id(v) for v in function.variables}
    owner = module if hasattr(module, "variables") else function
    return ServingEndpoint(
        function, input_name, output_name, height or width,
        [v for v in owner.variables if id(v) in read],
        [v for v in owner.trainable_variables if id(v) in read]), None


def is_serving_signature_module(module) -> bool:
    """Whether `module` is (a re-export of) a serving signature loaded by
    `load_serving_signature_as_module`: its `training` argument changes
    nothing."""
    return any(_SIGNATURE_CALL in function.name.decode()
               for function in getattr(module.__call__, "concrete_functions", []))


def load_serving_signature_as_module(path, endpoint, options=None):
    """A `serving_default` feature vector re-saved and loaded as a hub module.

    The signature becomes `__call__(images, training=False)`, traced for both
    values of `training` (both run the signature's inference graph), with
    float32 features (a mixed-precision model may return float16). The
    copy, about the size of the module's variables, lives in a scratch
    folder of the temporary folder only while it is loaded: a restored
    SavedModel holds its variables and functions in memory. That costs a
    save and a second load: 3.9 s against 3.3 s for the hub module, for the
    shared MobileNetV2 0.35 exported from Keras; 17 s against 4 s for
    EfficientNetV2S (78 MB).

    Args:
        path: The SavedModel's folder, for messages.
        endpoint: Its `ServingEndpoint`.
        options: The `tf.saved_model.LoadOptions` it was loaded with, or
            None; the copy is saved and loaded through the same I/O device.

    Returns:
        The loaded copy.

    Raises:
        HubModuleError: if no variable the signature reads is trainable (a
            Keras model exported with `trainable = False`).
    """
    if endpoint.variables and not endpoint.trainable_variables:
        raise HubModuleError(
            f"The SavedModel at {path!r} has no trainable variables, so no block "
            "of it could be fine-tuned (for a Keras model: it was exported with "
            "`trainable = False`). Set `model.trainable = True` before "
            "`model.export(folder)`: tfhub_ft freezes and unfreezes its blocks "
            "itself (batch norm statistics stay frozen).")
    function, input_name, output_name = (endpoint.function, endpoint.input_name,
                                         endpoint.output_name)

    def call(images, training=False):
        del training  # The signature was traced for inference only.
        return tf.cast(function(**{input_name: images})[output_name], tf.float32)

    call.__name__ = _SIGNATURE_CALL
    root = feature_vector_root(tf.function(call), endpoint.variables,
                               endpoint.trainable_variables, endpoint.image_size)
    save_options = (None if options is None else tf.saved_model.SaveOptions(
        experimental_io_device=options.experimental_io_device))
    with scratch.scratch_folder(MODULE_COPY_KIND, "the copy of a Keras export") as folder:
        with native_stderr.quiet_saving_logs():
            tf.saved_model.save(root, folder, options=save_options)
        return tf.saved_model.load(folder, options=options)

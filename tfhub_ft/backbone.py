"""A Keras 3 layer over a TF Hub image feature-vector SavedModel.

`hub.KerasLayer` is a Keras 2 (tf_keras) layer and trains a module all or
nothing. `HubBackbone` is a Keras 3 layer: the module's own variables are its
weights (wrapped, not copied), grouped into blocks that are frozen or trained
one by one.
"""

import functools
import hashlib
import logging
import os
import re
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import blocks as blocks_lib
from tfhub_ft import hub_format, module_graph
from tfhub_ft.checks import is_url
from tfhub_ft.config import DEFAULT_IMAGE_SIZE, cache_dir, check_input_range
from tfhub_ft.hub_format import HubModuleError

logger = logging.getLogger(__name__)

# Kaggle Models handles: owner/model/framework/variation[/version].
_KAGGLE_HANDLE = re.compile(
    r"^[\w.-]+/[\w.-]+/(?:tensorflow2|tensorFlow2|TensorFlow2|tfjs|tflite)/"
    r"[\w.-]+(?:/\d+)?$",
    re.IGNORECASE,
)


def resolve_handle(handle: str) -> str:
    """Returns a local SavedModel folder for a hub handle.

    Local folders are used as they are. tfhub.dev and Kaggle Models URLs,
    and Kaggle handles ("google/mobilenet-v2/tensorFlow2/100-224-feature-
    vector/2"), go through `tensorflow_hub`'s resolvers, so its cache
    (TFHUB_CACHE_DIR) and its download format settings apply.

    Raises:
        TypeError: if `handle` is not a string or path.
        HubModuleError: if it cannot be resolved (the message names the
            handle and says how to work offline), or if it names a file (a
            Keras model file: the message says how to export it).
    """
    if isinstance(handle, os.PathLike):
        handle = os.fspath(handle)
    if not isinstance(handle, str) or not handle:
        raise TypeError(
            "Invalid value for `hub_handle`. Expected a TF Hub or Kaggle "
            "Models URL or handle, or a local SavedModel folder. Received: "
            f"hub_handle={handle!r}"
        )
    if os.path.isdir(handle):
        return handle
    is_remote = is_url(handle) or _KAGGLE_HANDLE.match(handle)
    if not is_remote and os.path.isfile(handle):
        raise HubModuleError(
            f"The hub handle {handle!r} is a file; a module is a SavedModel "
            f"folder (saved_model.pb and variables/). {_file_handle_advice(handle)}")
    if not is_remote:
        raise HubModuleError(
            f"The hub handle {handle!r} is neither a local folder nor a TF Hub "
            "or Kaggle Models URL. Pass the folder of a TF2 SavedModel, a URL "
            "such as https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/"
            "feature_vector/5, or a Kaggle handle such as "
            "google/mobilenet-v2/tensorFlow2/100-224-feature-vector/2."
        )
    if _KAGGLE_HANDLE.match(handle):
        handle = "https://www.kaggle.com/models/" + handle
    import tensorflow_hub  # Slow to import and needs tf_keras: only here.

    try:
        return tensorflow_hub.resolve(handle)
    except Exception as error:  # urllib, HTTP and file errors all land here
        cache = os.environ.get("TFHUB_CACHE_DIR", "the default cache folder")
        raise HubModuleError(
            f"Could not resolve the hub handle {handle!r}: {error}. To work "
            "offline, download the module on a machine with network access "
            "and pass its SavedModel folder as the handle, or copy the "
            f"TF Hub cache there and set TFHUB_CACHE_DIR (now: {cache})."
        ) from error


def _file_handle_advice(path):
    """What to do with a file given as a hub handle, by its kind."""
    name = os.path.basename(path).lower()
    if name.endswith((".weights.h5", ".ckpt", ".index")) or ".data-" in name:
        return ("Weights alone hold no network: build the model in Keras, load "
                "them, take the model up to its pooled features and write it with "
                "`model.export(folder)`.")
    if name.endswith((".keras", ".h5", ".hdf5")):
        return ("To start from a Keras model file, load it with "
                "`keras.saving.load_model`, take the model up to its pooled "
                "features (without the classification layer) and write it with "
                "`model.export(folder)`; then pass that folder.")
    if name.endswith(".tflite"):
        return ("A TFLite model cannot be fine-tuned: start from the SavedModel "
                "or Keras model it was converted from.")
    if name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        return ("Extract the archive (tfhub.dev and Kaggle Models downloads are "
                ".tar.gz) and pass the folder that holds saved_model.pb.")
    return "Pass the SavedModel's folder (the one that holds saved_model.pb)."


def load_feature_vector_module(path: str):
    """Loads a TF2 SavedModel in the hub image feature-vector convention.

    A SavedModel without `__call__` whose `serving_default` signature maps
    one float32 `[N, H, W, 3]` batch to `[N, D]` features (Keras 3's
    `model.export`, `tf.saved_model.save` of a Keras 3 model) is loaded as
    one (`hub_format.load_serving_signature_as_module`): its batch norm and
    dropout then run in inference mode in both phases (`HubBackbone`
    refuses `batch_norm_trainable=True` for it), and it takes the pixel
    range its model was built for (`input_range`).

    Under a `TPUStrategy` the variables are read through the local host
    (`experimental_io_device="/job:localhost"`): the TPU workers cannot see
    a module cached on the VM's local disk. (Only there: in a multi-worker
    cluster the local job is not "localhost", and elsewhere the files are
    read locally anyway.) For a remote module on TPU without a local copy,
    set TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED so that `tensorflow_hub`
    resolves the handle to its gs:// SavedModel, which the TPU workers read
    directly.

    Raises:
        HubModuleError: for a TF1 hub module, a folder without a SavedModel,
            a module with neither `__call__(images, training)` nor a
            feature-vector `serving_default` signature (the message says
            what the signature takes and returns instead), or such a
            signature none of whose variables is trainable.
    """
    if tf.io.gfile.exists(os.path.join(path, "tfhub_module.pb")):
        raise HubModuleError(
            f"The hub module at {path!r} is in the TF1 hub format "
            "(tfhub_module.pb), which TF2 and Keras 3 cannot fine-tune. Use "
            "the TF2 SavedModel version of the model (on tfhub.dev and Kaggle "
            "Models these are the 'TF2' feature_vector handles)."
        )
    if not tf.saved_model.contains_saved_model(path):
        raise HubModuleError(
            f"No SavedModel in {path!r} (no saved_model.pb). Pass the folder "
            "that holds saved_model.pb and variables/."
        )
    options = None
    if isinstance(tf.distribute.get_strategy(),
                  (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        options = tf.saved_model.LoadOptions(experimental_io_device="/job:localhost")
    module = tf.saved_model.load(path, options=options)
    if callable(module) and hasattr(module, "variables"):
        return module
    endpoint, problem = hub_format.serving_endpoint(module)
    if endpoint is None:
        raise HubModuleError(
            f"The SavedModel at {path!r} is not an image feature vector: it has "
            "no `__call__(images, training)` with `variables`, as TF Hub modules "
            f"have, and {problem}. {hub_format.KERAS_EXPORT_ADVICE}"
        )
    return hub_format.load_serving_signature_as_module(path, endpoint, options)


def declared_image_size(module) -> Optional[int]:
    """Returns the square input size a module's call signature fixes, if any."""
    for function in getattr(module.__call__, "concrete_functions", []):
        args = function.structured_input_signature[0]
        if args and isinstance(args[0], tf.TensorSpec):
            shape = args[0].shape
            if shape.rank == 4 and shape[1] and shape[1] == shape[2]:
                return int(shape[1])
    return None


def classifier_output_kind(outputs) -> Optional[str]:
    """Whether a module's outputs look like a classifier's, by their values.

    Args:
        outputs: float numpy [N, D], the module's outputs for N probe images.

    Returns:
        "class probabilities" (every row in [0, 1] and summing to 1),
        "ImageNet logits" (1000 or 1001 values with negatives: feature
        vectors of ImageNet models end with a ReLU or average pooling of
        non-negative maps far more often than not), or None.
    """
    outputs = np.asarray(outputs, np.float64)
    if outputs.shape[1] >= 2 and outputs.min() >= 0 and outputs.max() <= 1 \
            and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return "class probabilities"
    if outputs.shape[1] in (1000, 1001) and outputs.min() < 0:
        return "ImageNet logits"
    return None


def feature_problems(features, input_range=(0.0, 1.0)) -> list:
    """Signs that a module gets pixels in a range it does not expect.

    Args:
        features: float numpy [N, D], N >= 2 images' features.
        input_range: The range the module was fed, named in the messages.

    Returns:
        A list of messages (empty when the features look healthy):
        near-constant (the spread across images is under 1% of the
        features' magnitude, as when a module that expects [0, 255] gets
        [0, 1]), or saturated (more than half of the values sit at the
        largest magnitude, as when pixels are much larger than expected).
    """
    features = np.asarray(features, np.float64)
    if features.shape[0] < 2:
        return []
    problems = []
    magnitude = np.abs(features).mean()
    spread = features.std(axis=0).mean()
    hint = (f"the module may expect another pixel range than input_range="
            f"{tuple(input_range)}: try (0, 255) or (-1, 1) (`input_range`)")
    if magnitude > 0 and spread < 0.01 * magnitude:
        problems.append(
            f"features are near-constant across {features.shape[0]} training "
            f"images (spread {spread:.3g} against magnitude {magnitude:.3g}); {hint}")
    peak = np.abs(features).max()
    if peak > 0 and np.mean(np.abs(features) >= peak * (1 - 1e-6)) > 0.5:
        problems.append(
            f"over half of the feature values sit at the largest magnitude "
            f"{peak:.3g} (saturated); {hint}")
    return problems


class HubBackbone(keras.layers.Layer):
    """Keras 3 layer running a hub image feature-vector module.

    Call arguments:
        images: float32 [N, H, W, 3], RGB in [0, 1] (H, W as the module
            expects, usually `image_size`).
        training: Python bool. Batch norm runs in training mode only when
            both `training` and `batch_norm_trainable` are True.

    Returns:
        float32 [N, feature_dim] features.

    Args:
        hub_handle: tfhub.dev or Kaggle Models URL, Kaggle handle, or local
            SavedModel folder (see `resolve_handle`).
        batch_norm_trainable: Run batch norm in training mode when training.
        block_pattern: Overrides the block rules (see `blocks.block_of`).
        module: An already loaded module (then `hub_handle` only names it).
        input_range: (low, high), the pixel range the module expects: the
            layer maps its [0, 1] input linearly onto it. (0, 1) is the TF
            Hub convention; some modules scale inside and expect (0, 255)
            or (-1, 1).
        **kwargs: Keras layer arguments. `dtype` is float32 whatever Keras's
            global dtype policy.

    Raises:
        HubModuleError: for a handle or module `resolve_handle` and
            `load_feature_vector_module` refuse.
        ValueError: for `dtype` other than float32, and for
            `batch_norm_trainable=True` on a Keras export's serving signature
            (traced for inference: its batch norm cannot train).
    """

    def __init__(self, hub_handle, batch_norm_trainable=False,
                 block_pattern=None, module=None, input_range=(0.0, 1.0), **kwargs):
        kwargs.setdefault("name", "hub_backbone")
        # The module computes in float32 whatever Keras's global dtype policy
        # says; under a mixed one the layer would hand it (and the split's
        # graph, which then fails to import) float16 copies of its weights.
        dtype = kwargs.setdefault("dtype", "float32")
        if keras.dtype_policies.get(dtype).name != "float32":
            raise ValueError(
                "Invalid value for `dtype`. Expected float32: a hub module computes in "
                f"float32, and its weights are float32. Received: dtype={dtype!r}")
        super().__init__(**kwargs)
        self.hub_handle = os.fspath(hub_handle) if isinstance(hub_handle, os.PathLike) else hub_handle
        self.batch_norm_trainable = bool(batch_norm_trainable)
        self.block_pattern = block_pattern
        self.input_range = check_input_range(input_range)
        # The local folder of the module (None for a module object), which
        # keys the cache of split checks.
        self._module_path = None if module is not None else resolve_handle(hub_handle)
        self._module = module if module is not None else load_feature_vector_module(
            self._module_path)
        self._from_serving_signature = hub_format.is_serving_signature_module(self._module)
        if self._from_serving_signature:
            self._note_serving_signature()
        # Tracked, the restored module's own functions (every signature it
        # was saved with) would be re-saved in each export beside the
        # classifier's traced ones, never called: 0.55 s and 1.9 MB of the
        # 7.3 MB export on the shared MobileNetV2. Its variables are saved
        # through the Keras variables wrapping them.
        untrack = getattr(self, "_delete_tracking", None)
        if untrack is not None:
            untrack("_module")
        # The list of its tf.Variables neither: Keras tracks a list set as an
        # attribute and saved each value a second time (3.3 MB of variables
        # instead of 1.7 MB), so it bypasses the layer's __setattr__.
        object.__setattr__(self, "_module_variables", list(self._module.variables))
        trainable_ids = {id(v) for v in self._module.trainable_variables}
        # A Keras 3 (TensorFlow backend) Variable built from a tf.Variable
        # wraps it: the optimizer's updates land in the variables the
        # module's restored functions read.
        self._wrapped = [
            keras.Variable(v, trainable=id(v) in trainable_ids,
                           name=v.name.split(":")[0].replace("/", "_"))
            for v in self._module_variables
        ]
        for variable in self._wrapped:
            self._track_variable(variable)
        self._module_trainable = [v.trainable for v in self._wrapped]
        self._split_warnings = set()
        self.image_size = declared_image_size(self._module)
        self.feature_dim = self._probe_feature_dim()
        names = [v.name for v in self._module_variables]
        self._graph, trace_error = None, None
        self._inference_graph = None
        self._kernel_ops, self._kernel_sums = None, None
        try:
            self._graph = module_graph.ModuleGraph(self._module, self._module_variables)
            positions = self._graph.trace_positions(len(names))
        except Exception as error:  # Any module TensorFlow can load must still train.
            trace_error = f"{type(error).__name__}: {error}"
            positions = [float("inf")] * len(names)
        self.blocks = blocks_lib.group_into_blocks(
            names, positions,
            [int(np.prod(v.shape)) if v.dtype.is_floating else 0
             for v in self._module_variables],
            rule=self._block_rule(names, block_pattern),
        )
        self._warn_about_block_order(trace_error)
        if self._from_serving_signature:
            self._warn_about_frozen_blocks()
        self.built = True

    def _note_serving_signature(self):
        """Refuses trainable batch norm, and logs what a serving signature
        used as the module means (`hub_format.is_serving_signature_module`)."""
        if self.batch_norm_trainable:
            raise ValueError(
                "Invalid value for `batch_norm_trainable`. Expected False: the module "
                f"{self.hub_handle!r} is a serving signature traced for inference, so its "
                "batch norm cannot use batch statistics or update its own. Received: "
                "batch_norm_trainable=True. Leave it False (the default), which keeps "
                "batch norm in inference mode as fine-tuning on a small dataset wants.")
        hint = ("" if self.input_range != (0.0, 1.0) else
                " Keras applications expect their own pixel range (MobileNetV2 "
                "`--input_range=-1,1`, EfficientNet `0,255`); ResNet50, VGG and "
                "DenseNet normalise per channel, which must be built into the "
                "exported model.")
        logger.info(
            "%s has no `__call__`, only a `serving_default` signature (as Keras's "
            "`model.export` writes): it is the feature vector, with batch norm and "
            "dropout in inference mode in both phases.%s", self.hub_handle, hint)

    def reduced_precision(self) -> Optional[str]:
        """"float16" or "bfloat16" where the module's traced inference graph
        computes in it (a Keras model built under a mixed-precision policy),
        else None (also where the graph could not be traced)."""
        reduced = {tf.float16.as_datatype_enum, tf.bfloat16.as_datatype_enum}
        for node in [] if self._graph is None else self._graph.graph_def.node:
            for key in ("T", "DstT", "dtype"):
                if key in node.attr and node.attr[key].type in reduced:
                    return tf.as_dtype(node.attr[key].type).name
        return None

    def _warn_about_frozen_blocks(self):
        """Names the blocks of a Keras export whose kernels no fine-tuning can
        train: layers frozen (`layer.trainable = False`) when it was exported."""
        frozen = []
        for block in self.blocks:
            kernels = [i for i in block.variable_indices
                       if self._module_variables[i].dtype.is_floating
                       and self._module_variables[i].shape.rank >= 2]
            if kernels and not any(self._module_trainable[i] for i in kernels):
                frozen.append(block.name)
        if frozen:
            logger.warning(
                "%d of the %d blocks of %s have no trainable kernels (%s): its Keras "
                "model was exported with those layers frozen, so fine-tuning cannot "
                "train them. Set `model.trainable = True` before `model.export` to "
                "fine-tune every block.", len(frozen), len(self.blocks), self.hub_handle,
                ", ".join(frozen))

    def _block_rule(self, names, block_pattern):
        """`block_pattern`, or where the built-in rules know under half of the
        module's kernels (a Keras model with default layer names), one block
        per layer with a kernel (`blocks.layer_rule`), with a WARNING."""
        if block_pattern is not None:
            return block_pattern
        share = blocks_lib.known_kernel_share(names)
        if share >= 0.5:
            return None
        unknown = next(name for name in names if blocks_lib.block_of(name, blocks_lib.LAYER_RULE)
                       and not blocks_lib.block_of(name))
        logger.warning(
            "The block rules know %d%% of the kernels of %s (not %r, for one): each layer "
            "with a kernel is a block here, with its batch norm, so unfreeze_blocks counts "
            "layers. Pass block_pattern (--block_pattern in the command), a regular "
            "expression whose first group names the block, to group them into the "
            "network's own blocks.", round(100 * share), self.hub_handle, unknown)
        return blocks_lib.layer_rule(names)

    @property
    def block_order_source(self) -> str:
        """Where the block order came from: "trace" (the module's call graph),
        "names" (variable names: the graph could not be traced), or "trace
        and names" (some blocks' variables were not found in the graph)."""
        sources = {block.order_source for block in self.blocks}
        return "trace and names" if len(sources) > 1 else sources.pop()

    def _warn_about_block_order(self, trace_error):
        by_name = [block.name for block in self.blocks if block.order_source == "names"]
        if not by_name:
            return
        if len(by_name) == len(self.blocks):
            what = (f"its call graph could not be traced ({trace_error})" if trace_error
                    else "no variable read was found in its call graph")
            logger.warning(
                "Block order of %s: %s, so the blocks are ordered by name (stem "
                "first, numbers in natural order, top last), which may not be "
                "the order the module runs them in; check block_summary() and "
                "pass block_pattern if it is wrong. The split backbone is off: "
                "fine-tuning runs the whole module each step, about 3-5x "
                "slower.", self.hub_handle, what)
        else:
            logger.warning(
                "Block order of %s: the call graph does not read the variables "
                "of %s, so those are placed by name; check block_summary().",
                self.hub_handle, ", ".join(by_name))

    def _probe_feature_dim(self) -> int:
        size = self.image_size or DEFAULT_IMAGE_SIZE
        strategy = tf.distribute.get_strategy()
        # Black and mid-gray: two images whose outputs show what they are.
        probe = self.to_input_range(tf.stack([tf.zeros([size, size, 3]),
                                              tf.fill([size, size, 3], 0.5)]))
        try:
            output = strategy.experimental_local_results(strategy.run(
                lambda: self._module(probe, training=False)))[0]
        except Exception as error:
            raise HubModuleError(
                f"The module {self.hub_handle!r} failed on a float32 image "
                f"batch [2, {size}, {size}, 3]: {error}. An image feature "
                "vector takes float32 [N, H, W, 3] RGB in [0, 1]."
            ) from error
        if not isinstance(output, tf.Tensor) or output.shape.rank != 2 or not output.dtype.is_floating:
            shape = getattr(output, "shape", type(output).__name__)
            raise HubModuleError(
                f"The module {self.hub_handle!r} is not an image feature "
                f"vector: it returned {shape} for one image, where a feature "
                "vector returns float [N, D]. Use the module's "
                "'feature_vector' version (not 'classification' or a "
                "feature map)."
            )
        dim = int(output.shape[1])
        looks_like = classifier_output_kind(output.numpy())
        if looks_like:
            instead = ("export the Keras model without its classification layer "
                       "(`include_top=False, pooling=\"avg\"` for keras.applications)"
                       if self._from_serving_signature
                       else "prefer its 'feature_vector' version")
            logger.warning(
                "The module %r returns %d values per image that look like %s: "
                "it is probably a classifier, not a feature vector. "
                "Fine-tuning on its outputs works poorly; %s.",
                self.hub_handle, dim, looks_like, instead)
        return dim

    def resolve_image_size(self, image_size=None) -> int:
        """Returns the square image side to feed this backbone, in pixels.

        Args:
            image_size: The side asked for, or None for the one the module
                declares in its call signature, else `DEFAULT_IMAGE_SIZE`.

        Raises:
            ValueError: if `image_size` contradicts a size the module fixes.
        """
        if image_size is None:
            return self.image_size or DEFAULT_IMAGE_SIZE
        if self.image_size and image_size != self.image_size:
            raise ValueError(
                f"Invalid value for `image_size`. Expected {self.image_size}: the "
                f"module {self.hub_handle!r} takes only {self.image_size}x"
                f"{self.image_size} images. Received: image_size={image_size}. "
                "Leave image_size unset to use the module's size.")
        return image_size

    def to_input_range(self, images):
        """Maps float32 images in [0, 1] onto `input_range`."""
        low, high = self.input_range
        images = tf.cast(images, tf.float32)
        if (low, high) == (0.0, 1.0):
            return images
        return images * (high - low) + low

    def call(self, images, training=False):
        images = self.to_input_range(images)
        run_training = bool(training) and self.batch_norm_trainable
        return self._module(images, training=run_training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim)

    def inference_features(self, images, output_offsets=None):
        """The features of `call(images, training=False)`, computed by the
        module's inlined inference graph, for converters.

        The traced graph has the module's nested functions flattened and its
        `training` conditionals resolved. TFLite's converter cannot freeze
        variables that a restored `If` captures (TF Hub's Slim modules put
        one around the network or around each batch norm): it fails with
        "input resource[0] expected type resource != float"
        (tensorflow/tensorflow#60416, #43042). The inlined graph is checked
        once against the module's call; a module whose graph could not be
        traced, made whole (functions left as calls that read variables)
        or run, or whose features differ, runs its own call.

        Args:
            images: float32 [N, H, W, 3] RGB in [0, 1].
            output_offsets: None, or {`module_graph.KernelOp` name: float
                [channels]} subtracted from those ops' outputs (bias
                correction); only where `kernel_ops()` found them.

        Returns:
            float32 [N, feature_dim].

        Raises:
            ValueError: for `output_offsets` where the module runs its own
                call (`kernel_ops()` is empty then).
        """
        if not output_offsets:
            return self._inference_call()(images)
        if not self.kernel_ops():
            raise ValueError(
                "Invalid value for `output_offsets`. Expected None: offsets need the "
                f"module's inlined inference graph, which {self.hub_handle} does not run "
                f"through. Received: output_offsets with {len(output_offsets)} entries")
        whole = self._graph.whole(output_offsets)
        return whole(self.to_input_range(images), self._wrapped)

    def kernel_ops(self):
        """The inference graph's convolutions and matrix products whose
        kernel is a module variable (`module_graph.KernelOp`s, in graph
        order); empty where conversion runs the module's own call."""
        if self._graph is None or not getattr(self._inference_call(), "inlined", False):
            return []
        if self._kernel_ops is None:
            self._kernel_ops = self._graph.kernel_ops()
        return self._kernel_ops

    def kernel_value(self, op):
        """The current value of a `kernel_ops()` entry's kernel: float32
        numpy, [h, w, in, out] (depthwise [h, w, in, multiplier]) or
        [in, out]."""
        return self._wrapped[op.kernel_index].numpy()

    def kernel_op_sums(self, images, ops, kernels):
        """Each of `ops` (`kernel_ops()` entries) applied to its own input
        with another kernel, summed over its output rows, in one graph (no
        op's input is held past its use), and the features' sum.

        Args:
            images: float32 [N, H, W, 3] in [0, 1]; inference mode.
            ops: `module_graph.KernelOp`s.
            kernels: One float32 tensor per op, its kernel's shape.

        Returns:
            (float32 [channels] per op: the sum over output rows, images
            times positions; int rows per op; float32 [feature_dim]).
        """
        key = tuple(op.name for op in ops)
        if self._kernel_sums is None or self._kernel_sums[0] != key:
            names = [op.input_tensor for op in ops] + [self._graph.output_tensor]
            # A partial with a signature: one trace per set of ops, and not
            # a closure (TensorFlow's retracing warning counts the traces of
            # every function sharing a code object; see module_graph).
            self._kernel_sums = (key, tf.function(
                functools.partial(_kernel_op_sums, self._graph.tensors(names), tuple(ops),
                                  self.to_input_range, self._wrapped),
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                 [tf.TensorSpec(k.shape, tf.float32) for k in kernels]],
                autograph=False))
        totals, rows, features = self._kernel_sums[1](
            tf.convert_to_tensor(images, tf.float32), [tf.convert_to_tensor(k) for k in kernels])
        return ([t.numpy() for t in totals], [int(r) for r in rows], features.numpy())

    def _inference_call(self):
        """The call `inference_features` runs, chosen once
        (`_inlined_inference_call`)."""
        if self._inference_graph is None:
            self._inference_graph = self._inlined_inference_call()
        return self._inference_graph

    def _inlined_inference_call(self):
        """The inlined graph as a call, checked once against the module's own
        call on two random images (within 1e-4 of the scale); the module's
        call where the graph is missing, fails or differs."""
        def module_call(images):
            return self.call(images, training=False)

        if self._graph is None:
            return module_call
        try:
            whole = self._graph.whole()

            def inlined_call(images):
                return whole(self.to_input_range(images), self._wrapped)

            size = self.image_size or DEFAULT_IMAGE_SIZE
            # Eagerly, also when first called while a converter's function traces.
            with tf.init_scope():
                images = tf.random.stateless_uniform([2, size, size, 3], seed=[7, 8])
                got, want = inlined_call(images), module_call(images)
                error = float(tf.reduce_max(tf.abs(got - want)))
                scale = float(tf.reduce_max(tf.abs(want)))
            if not error <= 1e-4 * scale + 1e-5:
                raise ValueError(f"its features differ from the module's by up to {error:.3g}")
            inlined_call.inlined = True
            return inlined_call
        except Exception as error:  # The module's own call still converts most modules.
            logger.warning(
                "Converting %s through its own call, not its inlined graph (%s: %s); a "
                "module with `tf.cond` on `training` inside may not convert.",
                self.hub_handle, type(error).__name__, error)
            return module_call

    @property
    def module(self):
        """The loaded hub module (its variables are this layer's weights)."""
        return self._module

    def block_summary(self):
        """Returns [(block name, parameter count, trainable)] bottom to top."""
        return [
            (block.name, block.parameter_count,
             any(self._wrapped[i].trainable for i in block.variable_indices))
            for block in self.blocks
        ]

    def block_variables(self, block):
        """Returns the Keras variables of one block (a `Block` or its name)."""
        if isinstance(block, str):
            matches = [b for b in self.blocks if b.name == block]
            if not matches:
                raise ValueError(
                    f"Invalid value for `block`. Expected one of "
                    f"{[b.name for b in self.blocks]}. Received: block={block!r}"
                )
            block = matches[0]
        return [self._wrapped[i] for i in block.variable_indices]

    def freeze_all(self):
        """Makes every backbone variable non-trainable."""
        for variable in self._wrapped:
            variable.trainable = False

    def unfreeze_top_blocks(self, count: int):
        """Trains the top `count` blocks; every other block is frozen.

        Moving statistics of batch norm stay non-trainable whatever the block:
        they change only through batch norm in training mode.

        Returns:
            The list of unfrozen `Block`s, bottom to top.
        """
        chosen = blocks_lib.top_blocks(self.blocks, count)
        self.freeze_all()
        for block in chosen:
            for i in block.variable_indices:
                self._wrapped[i].trainable = self._module_trainable[i]
        return chosen

    def plan_split(self, count: int):
        """Cuts the module's graph below its top `count` blocks.

        Below the cut nothing trains, so (with batch norm in inference mode)
        its output is computed once per image and the top trains from it.

        The split is run once on two random images before it is returned;
        if it fails to build or run, or its features differ from the whole
        module's, the whole module is used instead. A check that passed is
        remembered in the cache folder (`config.cache_dir`), keyed by the
        module's graph, the cut, and the code and TensorFlow version that
        build it, and not run again: about 1.2 s of each run on the shared
        MobileNetV2.

        Returns:
            (`BackboneSplit`, None), or (None, the reason) where the module
            cannot be split: `count` is 0 (not logged), batch norm
            trains (training mode changes every block's output), the call
            graph could not be traced, or the split failed (each logged
            once as a WARNING with the reason and the cost).
        """
        chosen = blocks_lib.top_blocks(self.blocks, count)
        if not chosen:
            # Nothing to split: phase 2 trains the head on cached features
            # (`recipe.fine_tune_trainee`), which the caller says.
            return None, "no block is unfrozen"
        if self.batch_norm_trainable:
            # Asked for: said at INFO, with what it costs.
            return self._no_split(
                logging.INFO, "batch norm trains (batch_norm_trainable=True), "
                "so every block's output changes", cost=True)
        if self._graph is None:
            return self._no_split(logging.WARNING, "its call graph could not be traced")
        indices = [i for block in chosen for i in block.variable_indices
                   if self._module_trainable[i]]
        try:
            split = BackboneSplit(self, self._graph.split(indices))
            passed = _split_check_marker(self._module_path, indices,
                                         self.image_size or DEFAULT_IMAGE_SIZE)
            if passed is None or not os.path.exists(passed):
                self._check_split(split)
                _record(passed)
        except Exception as error:  # Fall back to the whole module, never fail the run.
            return self._no_split(
                logging.WARNING, f"the split graph could not be built or run "
                f"({type(error).__name__}: {error})")
        return split, None

    def split_top_blocks(self, count: int):
        """`plan_split(count)`'s split: a `BackboneSplit`, or None."""
        return self.plan_split(count)[0]

    def _check_split(self, split):
        """Runs the split once on two random images at the module's size.

        Its features must equal the whole module's, and the gradients of
        every variable the top reads must equal those of the uncut traced
        graph (`ModuleGraph.whole`): differentiating the restored module
        itself costs a one-off ~25 s on modules with `tf.cond` inside,
        which the flat traced graph does not.

        Raises:
            ValueError: if the split's features or gradients differ.
        """
        size = self.image_size or DEFAULT_IMAGE_SIZE
        images = tf.random.stateless_uniform([2, size, size, 3], seed=[1, 2])
        # The underlying tf.Variables, watched explicitly: the check must not
        # depend on which blocks are unfrozen at the time.
        top_variables = [self._wrapped[i].value for i in split.top_variable_indices]
        whole = self._graph.whole()

        def features_and_gradients(compute):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(top_variables)
                features = compute()
                loss = tf.reduce_sum(tf.square(features))
            return features, tape.gradient(loss, top_variables)

        # Eager: a new tf.function per check would retrace each time.
        def compare():
            boundary = split.bottom(images)
            features, split_gradients = features_and_gradients(lambda: split.top(boundary))
            got = [features] + split_gradients
            # The bottom maps the images onto `input_range` itself.
            module_images = self.to_input_range(images)
            _, traced_gradients = features_and_gradients(
                lambda: whole(module_images, self._wrapped))
            want = [self._module(module_images, training=False)] + traced_gradients
            if [g is None for g in got] != [w is None for w in want]:
                raise ValueError("it leaves out gradients the whole module has")
            return [(g, w) for g, w in zip(got, want) if w is not None]

        strategy = tf.distribute.get_strategy()
        results = strategy.experimental_local_results(strategy.run(compare))[0]
        features, want = (np.asarray(value) for value in results[0])
        error = float(np.max(np.abs(features - want)))
        if not error <= 1e-3 * float(np.max(np.abs(want))) + 1e-5:
            raise ValueError(f"its features differ from the whole module's by up to {error:.3g}")
        for got, want in results[1:]:
            error = gradient_difference(np.asarray(got), np.asarray(want))
            if not error <= SPLIT_GRADIENT_TOLERANCE:
                raise ValueError(f"its gradients differ from the whole module's by "
                                 f"{error:.3g} of their norm")

    def _no_split(self, level, reason, cost=None):
        """Logs (once per reason) why there is no split, with its cost when
        `cost` (default: at WARNING and above); returns (None, reason)."""
        if reason not in self._split_warnings:
            self._split_warnings.add(reason)
            say_cost = level >= logging.WARNING if cost is None else cost
            logger.log(level, "Not splitting %s: %s; fine-tuning runs the whole "
                       "module forward each step%s.", self.hub_handle, reason,
                       " (about 3-5x slower per fine-tuning step)" if say_cost else "")
        return None, reason

    def get_config(self):
        config = super().get_config()
        # block_pattern too: without it a layer rebuilt from its config
        # groups the variables into other blocks. (A function given as the
        # rule cannot be serialised; its config falls back to the rules.)
        config.update(hub_handle=self.hub_handle,
                      batch_norm_trainable=self.batch_norm_trainable,
                      block_pattern=(None if callable(self.block_pattern)
                                     else self.block_pattern),
                      input_range=list(self.input_range))
        return config


# Relative L2 difference (`gradient_difference`) the split's gradients may
# have from the whole graph's. A ReLU6 whose input lies within rounding of 0
# or 6 passes its gradient in one graph and not the other: a fine-tuned
# MobileNetV2 exported and loaded again showed three such tensors of 110,
# at 0.0005-0.0015 (largest element 0.2% of the tensor's largest), which a
# bound of 1e-3 of the largest element refused. A split cut in the wrong
# place misses whole paths: differences of order 1.
SPLIT_GRADIENT_TOLERANCE = 1e-2


def gradient_difference(got, want):
    """||got - want|| / ||want||, L2 over all elements: how far a split's
    gradient of one variable (float array) is from the whole graph's
    (same shape), as a fraction of its norm; a norm under 1e-3 counts as
    1e-3, so that gradients near zero compare absolutely."""
    return float(np.linalg.norm(got - want)) / max(float(np.linalg.norm(want)), 1e-3)


def _kernel_op_sums(tensors, ops, to_input_range, variables, images, kernels):
    """`HubBackbone.kernel_op_sums`'s graph: each op's output with its other
    kernel, reduced over rows as soon as it is computed."""
    values = tensors(to_input_range(images), variables)
    outputs = [op.apply(x, kernel) for op, x, kernel in zip(ops, values[:-1], kernels)]
    return ([tf.reduce_sum(tf.reshape(y, [-1, tf.shape(y)[-1]]), 0) for y in outputs],
            [tf.size(y) // tf.shape(y)[-1] for y in outputs],
            tf.reduce_sum(values[-1], 0))


def _split_check_marker(module_path, cut_variable_indices, image_size):
    """The file saying that this split of this module passed its check, or
    None when checks are not remembered (a module object, a remote folder,
    no cache folder, or a file of the key that cannot be read).

    The key is what the check's outcome depends on: the module's graph
    (saved_model.pb; its weights change the numbers, not whether the cut
    is right), the cut, the image size, where it runs (the strategy, its
    replicas, the device types) and the code that builds and runs the
    split (this file, module_graph.py, TensorFlow's and Keras's versions).
    """
    root = cache_dir()
    if root is None or module_path is None or not os.path.isdir(module_path):
        return None
    strategy = tf.distribute.get_strategy()
    digest = hashlib.sha256()
    try:
        for path in (os.path.join(module_path, "saved_model.pb"), __file__,
                     module_graph.__file__):
            with open(path, "rb") as f:
                digest.update(f.read())
    except OSError:
        return None
    digest.update(repr((
        sorted(cut_variable_indices), image_size, type(strategy).__name__,
        strategy.num_replicas_in_sync,
        sorted({device.device_type for device in tf.config.list_logical_devices()}),
        tf.__version__, keras.__version__)).encode())
    return os.path.join(root, "split_checks", digest.hexdigest())


def _record(marker):
    """Writes a split-check marker (nothing when it is None or the cache
    folder is not writable: the check then runs again next time)."""
    if marker is None:
        return
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        partial = f"{marker}.{os.getpid()}.tmp"
        with open(partial, "w") as f:
            f.write("passed\n")
        os.replace(partial, marker)
    except OSError as error:
        logger.debug("Could not record the split check in %s: %s", marker, error)


class BackboneSplit:
    """A hub backbone cut into a frozen bottom and a trainable top.

    Attributes:
        top: `BackboneTop`, a Keras layer from the boundary tensors to the
            features, whose weights are the backbone's own top variables.
    """

    def __init__(self, backbone, split_graph):
        self._backbone = backbone
        self._graph = split_graph
        self.top = BackboneTop(backbone, split_graph)
        # Indices into the backbone's variables of those the top computes with.
        self.top_variable_indices = split_graph.top_variable_indices

    def bottom(self, images):
        """float32 images [N, H, W, 3] in [0, 1] -> tuple of boundary tensors."""
        return tuple(self._graph.run_bottom(self._backbone.to_input_range(images),
                                            self._backbone._wrapped))


class BackboneTop(keras.layers.Layer):
    """The trainable top of a split `HubBackbone`.

    Call arguments:
        boundary: tuple of float32 tensors, `BackboneSplit.bottom`'s output.

    Returns:
        float32 features [N, feature_dim], the same as the whole backbone.
    """

    def __init__(self, backbone, split_graph, **kwargs):
        kwargs.setdefault("name", "hub_backbone_top")
        kwargs.setdefault("dtype", "float32")  # as HubBackbone's
        super().__init__(**kwargs)
        self._graph = split_graph
        self._variables_in_order = backbone._wrapped
        for index in split_graph.top_variable_indices:
            self._track_variable(backbone._wrapped[index])
        self.feature_dim = backbone.feature_dim
        self.built = True

    def call(self, boundary):
        return self._graph.run_top(tuple(boundary), self._variables_in_order)

    def compute_output_shape(self, input_shape):
        return (None, self.feature_dim)

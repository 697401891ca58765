"""A Keras 3 layer over a TF Hub image feature-vector SavedModel.

`hub.KerasLayer` is a Keras 2 (tf_keras) layer and trains a module all or
nothing. `HubBackbone` is a Keras 3 layer: the module's own variables are its
weights (wrapped, not copied), grouped into blocks that are frozen or trained
one by one.
"""

import logging
import os
import re
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfhub_ft import blocks as blocks_lib
from tfhub_ft import module_graph
from tfhub_ft.config import check_input_range

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224

# Kaggle Models handles: owner/model/framework/variation[/version].
_KAGGLE_HANDLE = re.compile(
    r"^[\w.-]+/[\w.-]+/(?:tensorflow2|tensorFlow2|TensorFlow2|tfjs|tflite)/"
    r"[\w.-]+(?:/\d+)?$",
    re.IGNORECASE,
)


class HubModuleError(ValueError):
    """A handle that cannot be resolved, or a module of the wrong kind."""


def resolve_handle(handle: str) -> str:
    """Returns a local SavedModel folder for a hub handle.

    Local folders are used as they are. tfhub.dev and Kaggle Models URLs,
    and Kaggle handles ("google/mobilenet-v2/tensorFlow2/100-224-feature-
    vector/2"), go through `tensorflow_hub`'s resolvers, so its cache
    (TFHUB_CACHE_DIR) and its download format settings apply.

    Raises:
        TypeError: if `handle` is not a string or path.
        HubModuleError: if it cannot be resolved; the message names the
            handle and says how to work offline.
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
    is_remote = "://" in handle or _KAGGLE_HANDLE.match(handle)
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


def load_feature_vector_module(path: str):
    """Loads a TF2 SavedModel in the hub image feature-vector convention.

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
            or a module without `__call__(images, training)`.
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
    if not callable(module) or not hasattr(module, "variables"):
        raise HubModuleError(
            f"The SavedModel at {path!r} has no `__call__` and `variables`: "
            "it is not in the TF Hub reusable SavedModel format. Image "
            "feature vectors from tfhub.dev and Kaggle Models have both."
        )
    return module


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
    """

    def __init__(self, hub_handle, batch_norm_trainable=False,
                 block_pattern=None, module=None, input_range=(0.0, 1.0), **kwargs):
        kwargs.setdefault("name", "hub_backbone")
        super().__init__(**kwargs)
        self.hub_handle = os.fspath(hub_handle) if isinstance(hub_handle, os.PathLike) else hub_handle
        self.batch_norm_trainable = bool(batch_norm_trainable)
        self.block_pattern = block_pattern
        self.input_range = check_input_range(input_range)
        self._module = module if module is not None else load_feature_vector_module(
            resolve_handle(hub_handle))
        self._module_variables = list(self._module.variables)
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
        self._graph = module_graph.ModuleGraph(self._module, self._module_variables)
        self.blocks = blocks_lib.group_into_blocks(
            names,
            self._graph.trace_positions(len(names)),
            [int(np.prod(v.shape)) for v in self._module_variables],
            rule=block_pattern,
        )
        self.built = True

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
            logger.warning(
                "The module %r returns %d values per image that look like %s: "
                "it is probably a classifier, not a feature vector. "
                "Fine-tuning on its outputs works poorly; prefer its "
                "'feature_vector' version.", self.hub_handle, dim, looks_like)
        return dim

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

    def split_top_blocks(self, count: int):
        """Cuts the module's graph below its top `count` blocks.

        Below the cut nothing trains, so (with batch norm in inference mode)
        its output is computed once per image and the top trains from it.

        Returns:
            A `BackboneSplit`, or None (logged once, with the reason) where
            the module cannot be split: `count` is 0, batch norm trains
            (training mode changes every block's output), or the graph has
            no clean cut.
        """
        chosen = blocks_lib.top_blocks(self.blocks, count)
        reason = None
        if not chosen:
            reason = "no block is unfrozen"
        elif self.batch_norm_trainable:
            reason = "batch norm trains, so every block's output changes"
        else:
            indices = [i for block in chosen for i in block.variable_indices
                       if self._module_trainable[i]]
            try:
                return BackboneSplit(self, self._graph.split(indices))
            except (ValueError, KeyError) as error:
                reason = f"the graph has no clean cut ({error})"
        if reason not in self._split_warnings:
            self._split_warnings.add(reason)
            logger.info("Not splitting %s: %s; fine-tuning runs the whole "
                        "module forward each step.", self.hub_handle, reason)
        return None

    def get_config(self):
        config = super().get_config()
        config.update(hub_handle=self.hub_handle,
                      batch_norm_trainable=self.batch_norm_trainable,
                      input_range=list(self.input_range))
        return config


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

"""Workaround for Keras 3 `fit` under `tf.distribute` strategies.

Upstream bugs: keras-team/keras#20585 and tensorflow/tensorflow#72388
(Keras 3's TensorFlow trainer under `MultiWorkerMirroredStrategy`), plus
Keras's habit of drawing a batch to build the model under any strategy.
Verified on Keras 3.15 (`VERIFIED_KERAS`); the patch replaces one method of
the model and one function of Keras's TensorFlow trainer for the duration
of a phase's `fit`, and raises an error naming the Keras version and the
upstream issue when either is missing (a Keras release that renamed them
needs this module checked against tests/test_distribution.py).
"""

import contextlib
import logging

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

# Keras minor versions this workaround was verified on.
VERIFIED_KERAS = ("3.15",)
_UPSTREAM = "keras-team/keras#20585"
_warned_versions = set()


def _missing(what):
    return RuntimeError(
        f"tfhub_ft's workaround for Keras fit under tf.distribute strategies "
        f"({_UPSTREAM}) patches {what}, which Keras {keras.__version__} does not "
        f"have (verified on Keras {', '.join(VERIFIED_KERAS)}). Install a "
        f"verified Keras (pip install 'keras>=3.15,<3.16') or report it.")


@contextlib.contextmanager
def keras_fit_under_strategy(model, element_spec):
    """Makes Keras 3 `fit` under a strategy start as it does without one.

    Under a `tf.distribute` strategy, Keras 3's TensorFlow trainer builds
    the model before training from a batch it draws from the training data.
    Drawing it starts a pass over the data, which for data drawn per epoch
    (`arrays.BatchSource`) used up epoch 0's order, so a run under a
    strategy saw other batches than the same run without one, and whether
    a resumed run continues the right epochs would rest on that detail.
    While this context is open the model is built from `element_spec`
    instead, which reads no data.

    Under `MultiWorkerMirroredStrategy` it also works around two Keras 3
    bugs (keras-team/keras#20585, tensorflow/tensorflow#72388) in averaging
    over replicas: that first batch's (inputs, labels) structure went
    through one `strategy.reduce`, which that strategy rejects (the spec
    needs none), and each step averages the scalar losses and metrics over
    the workers with `strategy.reduce("MEAN", value, axis=0)`, which fails
    on a scalar: they are averaged with `axis=None`, the all-reduce Keras
    intends.

    Without a strategy this does nothing.

    Args:
        model: A compiled `keras.Model` about to be fitted in the strategy's
            scope.
        element_spec: The training dataset's `element_spec` (batch first).
    """
    if not tf.distribute.has_strategy():
        yield
        return
    version = ".".join(keras.__version__.split(".")[:2])
    if version not in VERIFIED_KERAS and version not in _warned_versions:
        _warned_versions.add(version)
        logger.warning("The Keras fit workaround (%s) was verified on Keras %s; "
                       "this is Keras %s.", _UPSTREAM, ", ".join(VERIFIED_KERAS),
                       keras.__version__)
    keras_build = getattr(model, "_maybe_symbolic_build", None)
    if keras_build is None:
        raise _missing("keras.Model._maybe_symbolic_build")
    strategy = tf.distribute.get_strategy()
    patch_reduce = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if patch_reduce:
        try:
            from keras.src.backend.tensorflow import trainer as keras_trainer
            keras_reduce = keras_trainer.reduce_per_replica
        except (ImportError, AttributeError):
            raise _missing("keras.src.backend.tensorflow.trainer.reduce_per_replica") from None

    def build_from_the_spec(iterator=None, data_batch=None):
        del iterator
        return keras_build(iterator=None, data_batch=data_batch or element_spec)

    def reduce_per_replica(values, reduce_strategy, reduction):
        if reduction in ("auto", "mean"):
            return tf.nest.map_structure(
                lambda value: reduce_strategy.reduce("MEAN", value, axis=None), values)
        return keras_reduce(values, reduce_strategy, reduction)

    model._maybe_symbolic_build = build_from_the_spec
    if patch_reduce:
        keras_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        if patch_reduce:
            keras_trainer.reduce_per_replica = keras_reduce
        del model._maybe_symbolic_build

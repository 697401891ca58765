"""Choosing a `tf.distribute.Strategy` by name."""

import contextlib
import functools

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", tpu=None):
    """Returns the strategy named `name`.

    Args:
        name: "default" (one device), "mirrored" (all local GPUs, or the
            CPU), "multi_worker" (cluster from the TF_CONFIG environment
            variable) or "tpu".
        tpu: TPU name or address for "tpu" ("" or None: the local TPU).

    Raises:
        ValueError: for an unknown name, or "tpu" where no TPU is found.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as error:
            raise ValueError(
                f"No TPU found (tpu={tpu!r}): {error}. Run on a TPU VM, pass "
                "its name or address with `tpu`, or choose another "
                "`distribution_strategy`.") from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Invalid value for `distribution_strategy`. Expected one of "
        f"{STRATEGIES}. Received: distribution_strategy={name!r}")


def is_chief(strategy=None):
    """Whether this process is the one that writes files (exports, checkpoints).

    Every process is, except the non-chief workers of a
    `MultiWorkerMirroredStrategy` cluster: there the "chief" task writes, or
    worker 0 where the cluster has no chief.

    Args:
        strategy: A `tf.distribute.Strategy`; defaults to the current one.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


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
    keras_build = getattr(model, "_maybe_symbolic_build", None)
    if not tf.distribute.has_strategy() or keras_build is None:
        yield
        return
    from keras.src.backend.tensorflow import trainer as keras_trainer

    strategy = tf.distribute.get_strategy()
    keras_reduce = getattr(keras_trainer, "reduce_per_replica", None)
    patch_reduce = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                    and keras_reduce is not None)

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


def map_batches(function, dataset):
    """Runs `function` on each batch under the current strategy's replicas.

    Works inside or outside a strategy scope (a hub module's restored
    function cannot read mirrored variables from the cross-replica context).

    Args:
        function: maps a batch (a tensor or tuple of tensors) to a tensor
            or tuple of tensors, batch first.
        dataset: a batched tf.data.Dataset.

    Yields:
        For each replica's share of each batch, in order, the outputs as
        numpy arrays (a tuple of them where `function` returns a tuple).
    """
    strategy = tf.distribute.get_strategy()
    options = tf.data.Options()
    # Every worker of a multi-worker cluster maps every batch: the outputs
    # are this process's own (cached activations, predictions), not its
    # shard of a global result. Single-worker strategies never shard.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    batches = strategy.experimental_distribute_dataset(dataset.with_options(options))
    # Traced once: the signature's batch dimension is None, so the last,
    # smaller batch reuses the trace. A partial (not a closure) makes each
    # call's function its own for TensorFlow's retracing counter, which keys
    # on the Python code object: the functions of different calls (bottom,
    # top, classifier) are different computations, not one retraced.
    step = tf.function(functools.partial(_run_on_replicas, strategy, function),
                       input_signature=[_relax_batch_dimension(batches.element_spec)])
    for batch in batches:
        for replica_output in strategy.experimental_local_results(step(batch)):
            yield tf.nest.map_structure(lambda t: t.numpy(), replica_output)


def _run_on_replicas(strategy, function, batch):
    return strategy.run(function, args=(batch,))


def _relax_batch_dimension(spec):
    """`spec` with an unknown batch size (tf.TensorSpec or per-replica spec)."""
    def relax(tensor_spec):
        if isinstance(tensor_spec, tf.TensorSpec) and tensor_spec.shape.rank:
            return tf.TensorSpec([None] + tensor_spec.shape.as_list()[1:],
                                 tensor_spec.dtype, tensor_spec.name)
        return tensor_spec
    return tf.nest.map_structure(relax, spec)

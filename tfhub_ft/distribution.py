"""Choosing a `tf.distribute.Strategy` by name."""

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


def map_batches(function, dataset, traces=None):
    """Runs `function` on each batch under the current strategy's replicas.

    Works inside or outside a strategy scope (a hub module's restored
    function cannot read mirrored variables from the cross-replica context).

    Args:
        function: maps a batch (a tensor or tuple of tensors) to a tensor
            or tuple of tensors, batch first.
        dataset: a batched tf.data.Dataset.
        traces: None (each call traces `function` anew), or a dict the
            caller keeps: a later call with the same dict, function and
            batch structure reuses the trace (the validation images after
            the training images: about 0.6 s for a backbone).

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
    step = _traced_step(strategy, function, _relax_batch_dimension(batches.element_spec),
                        traces)
    for batch in batches:
        for replica_output in strategy.experimental_local_results(step(batch)):
            yield tf.nest.map_structure(lambda t: t.numpy(), replica_output)


def _traced_step(strategy, function, signature, traces):
    """`function` under `strategy` as a tf.function with `signature`, kept
    in `traces` (when given) for the next call with the same function,
    strategy and signature."""
    key = (function, strategy, tuple(tf.nest.flatten(signature)))
    if traces is not None and key in traces:
        return traces[key]
    # The signature's batch dimension is None, so the last, smaller batch
    # reuses the trace. A partial (not a closure) makes each function's step
    # its own for TensorFlow's retracing counter, which keys on the Python
    # code object: the functions of different calls (bottom, top,
    # classifier) are different computations, not one retraced.
    step = tf.function(functools.partial(_run_on_replicas, strategy, function),
                       input_signature=[signature], autograph=False)
    if traces is not None:
        traces[key] = step
    return step


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

"""Choosing a `tf.distribute.Strategy` by name."""

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

    @tf.function
    def step(batch):
        return strategy.run(function, args=(batch,))

    options = tf.data.Options()
    # Every worker of a multi-worker cluster maps every batch: the outputs
    # are this process's own (cached activations, predictions), not its
    # shard of a global result. Single-worker strategies never shard.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    for batch in strategy.experimental_distribute_dataset(dataset.with_options(options)):
        for replica_output in strategy.experimental_local_results(step(batch)):
            yield tf.nest.map_structure(lambda t: t.numpy(), replica_output)

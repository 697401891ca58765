"""Runs the whole recipe under a strategy, in a process of its own (for the tests).

    python tests/distributed_run.py BACKBONE TRAIN_DIR VALIDATION_DIR OUTPUT_DIR \
        STRATEGY [LOGICAL_CPUS] [--work_dir=DIR] [--deterministic]

STRATEGY is "default", "mirrored" (over LOGICAL_CPUS logical CPU devices) or
"multi_worker" (cluster from TF_CONFIG). Writes OUTPUT_DIR/weights.npz (the
classifier's weights), OUTPUT_DIR/result.json (histories, validation
metrics, replicas, whether the backbone was split) and, on the chief,
OUTPUT_DIR/export. With --work_dir every epoch is checkpointed there and
rerunning the same command resumes (`FineTuner.fit(work_dir=...)`);
--deterministic turns on `FineTuneConfig.deterministic`. Logical devices
must be configured before TensorFlow initialises its devices, hence a
process per configuration.
"""

import argparse
import json
import logging
import os

# The whole recipe (both phases, split backbone, flip variants, early
# stopping that keeps the best epoch's weights), small. Phase 2 has enough
# short epochs that a test can kill a run in the middle of it. Patience
# above the epochs, so that every run trains them all. No dropout: under R
# replicas Keras draws each replica's dropout mask from the same seed
# state, so a run with dropout under a strategy is not the same
# computation as on one device (see BUILD_NOTES.md).
CONFIG = dict(image_size=32, batch_size=8, head_epochs=2, fine_tune_epochs=6,
              unfreeze_blocks=2, head_learning_rate=1e-2, fine_tune_learning_rate=1e-2,
              early_stopping_patience=10, dropout_rate=0.0)


def main(backbone, train, validation, output_dir, strategy_name, logical_cpus=1,
         work_dir=None, deterministic=False):
    import numpy as np
    import tensorflow as tf

    logical_cpus = int(logical_cpus)
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)

    from tfhub_ft import FineTuneConfig, FineTuner, distribution

    if strategy_name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{index}" for index in range(logical_cpus)])
    else:
        strategy = distribution.get_strategy(strategy_name)
    config = FineTuneConfig(**CONFIG, deterministic=deterministic)
    tuner = FineTuner(backbone, config=config, strategy=strategy)
    split = tuner.backbone.split_top_blocks(config.unfreeze_blocks) is not None
    history = tuner.fit(train, validation, verbose=0, work_dir=work_dir)
    exported = tuner.export(os.path.join(output_dir, "export"))
    os.makedirs(output_dir, exist_ok=True)
    np.savez(os.path.join(output_dir, "weights.npz"),
             *[weight for weight in tuner.model.get_weights()])
    with open(os.path.join(output_dir, "result.json"), "w") as file:
        json.dump({"history": history, "validation_metrics": tuner.validation_metrics,
                   "replicas": strategy.num_replicas_in_sync, "split": split,
                   "exported": exported, "chief": strategy.extended.should_checkpoint}, file)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("backbone", "train", "validation", "output_dir", "strategy_name"):
        parser.add_argument(name)
    parser.add_argument("logical_cpus", nargs="?", type=int, default=1)
    parser.add_argument("--work_dir")
    parser.add_argument("--deterministic", action="store_true")
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(**parse_arguments())

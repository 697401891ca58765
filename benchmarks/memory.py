"""Peak memory with the cache in memory vs spilled to files, side by side.

    python benchmarks/memory.py [--budget_mb=40]

Runs the same short fine-tune twice, each in a fresh process (peak resident
memory is a per-process high-water mark): once with every decoded image and
cached activation in memory, once with a memory budget ten or more times
smaller than the data, which spills the rest to files. Prints each run's peak
resident memory, the bytes spilled, and the validation accuracy (which must
not change).
"""

import json
import resource
import subprocess
import sys

from absl import app, flags, logging

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", common.TRAIN_DIR, "Training image folder.")
flags.DEFINE_string("validation_dir", common.VALIDATION_DIR, "Validation image folder.")
flags.DEFINE_integer("budget_mb", 40, "The small memory budget, in MB.")
flags.DEFINE_integer("child_budget_mb", None, "Internal: run one measurement with this budget.")


def child(budget_mb):
    import tfhub_ft

    tuner = tfhub_ft.FineTuner(FLAGS.hub_url, cache_memory_mb=budget_mb, head_epochs=2,
                               fine_tune_epochs=1)
    tuner.fit(FLAGS.train_dir, FLAGS.validation_dir, verbose=0)
    print(json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "in_memory_mb": tuner.cache_usage["memory_bytes"] / 2**20,
        "spilled_mb": tuner.cache_usage["spilled_bytes"] / 2**20,
        "accuracy": tuner.validation_metrics["accuracy"],
    }))


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    if FLAGS.child_budget_mb is not None:
        return child(FLAGS.child_budget_mb)
    print(f"machine: {common.machine()}")
    rows = {}
    for name, budget in (("all in memory", 1 << 20), (f"{FLAGS.budget_mb} MB budget", FLAGS.budget_mb)):
        output = subprocess.run(
            [sys.executable, __file__, f"--child_budget_mb={budget}",
             f"--hub_url={FLAGS.hub_url}", f"--train_dir={FLAGS.train_dir}",
             f"--validation_dir={FLAGS.validation_dir}"],
            check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(output.strip().splitlines()[-1])
    print("\n## Peak memory, cache in memory vs spilled (2 head epochs + 1 fine-tune epoch)\n")
    print("| cache | data in memory (MB) | spilled to files (MB) | peak RSS (MB) | "
          "validation accuracy |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['in_memory_mb']:.0f} | {row['spilled_mb']:.0f} | "
              f"{row['peak_rss_mb']:.0f} | {row['accuracy']:.4f} |")
    data_mb = rows["all in memory"]["in_memory_mb"]
    print(f"\ndata / small budget: {data_mb / FLAGS.budget_mb:.0f}x; peak RSS saved: "
          f"{rows['all in memory']['peak_rss_mb'] - rows[f'{FLAGS.budget_mb} MB budget']['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)

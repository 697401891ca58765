"""Peak memory with the cache in memory vs spilled to files, side by side.

    python benchmarks/memory.py [--budget_mb=40] [--cpu_memory=pooled,unpooled]

Runs the same short fine-tune twice, each in a fresh process (peak resident
memory is a per-process high-water mark): once with every decoded image and
cached activation in memory, once with a memory budget ten or more times
smaller than the data, which spills the rest to files. Prints each run's peak
resident memory, the bytes spilled, and the validation accuracy (which must
not change). With `--cpu_memory=pooled,unpooled`, both runs again under
TensorFlow's default CPU allocator (the library pools TensorFlow's CPU
memory: tfhub_ft/cpu_memory.py).
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
common.define_cpu_memory_flag()
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
    for cpu_memory in FLAGS.cpu_memory:
        for name, budget in (("all in memory", 1 << 20),
                             (f"{FLAGS.budget_mb} MB budget", FLAGS.budget_mb)):
            output = subprocess.run(
                [sys.executable, __file__, f"--child_budget_mb={budget}",
                 f"--hub_url={FLAGS.hub_url}", f"--train_dir={FLAGS.train_dir}",
                 f"--validation_dir={FLAGS.validation_dir}"],
                env=common.cpu_memory_environment(cpu_memory),
                check=True, capture_output=True, text=True).stdout
            rows[name, cpu_memory] = json.loads(output.strip().splitlines()[-1])
    print("\n## Peak memory, cache in memory vs spilled (2 head epochs + 1 fine-tune epoch)\n")
    print("| cache | CPU memory | data in memory (MB) | spilled to files (MB) | "
          "peak RSS (MB) | validation accuracy |\n|---|---|---|---|---|---|")
    for (name, cpu_memory), row in rows.items():
        print(f"| {name} | {cpu_memory} | {row['in_memory_mb']:.0f} | "
              f"{row['spilled_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['accuracy']:.4f} |")
    small = f"{FLAGS.budget_mb} MB budget"
    for cpu_memory in FLAGS.cpu_memory:
        data_mb = rows["all in memory", cpu_memory]["in_memory_mb"]
        saved = (rows["all in memory", cpu_memory]["peak_rss_mb"]
                 - rows[small, cpu_memory]["peak_rss_mb"])
        print(f"\n{cpu_memory}: data / small budget: {data_mb / FLAGS.budget_mb:.0f}x; "
              f"peak RSS saved: {saved:.0f} MB")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)

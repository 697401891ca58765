"""The accuracy-time frontier: whole commands, beside the old tool's recipe.

Every variant is one `tfhub_ft train` command (a fresh process: Python and
TensorFlow start-up, decoding, both phases, validation and the SavedModel
export all count), run on each dataset's training folder and scored on its
real validation folder; `old_tool` is TF Hub's make_image_classifier recipe
(benchmarks/old_tool.py). One run prints every row, so the ratios compare
runs made minutes apart on the same machine.

    python benchmarks/frontier.py                      # the variants below
    python benchmarks/frontier.py --variants='old_tool;default;small:--image_size=160'

What the recipe's levers cost was measured with it and with in-process
sweeps; the tables are in BUILD_NOTES.md ("The accuracy-time frontier").

A variant is `name:flags` (flags of `tfhub_ft train`, space-separated);
`old_tool` and `default` need no flags. A word `NAME=value` in upper case
is an environment variable of the variant's process, e.g.
`unpooled:TF_CPU_ALLOCATOR_USE_BFC=false` (TensorFlow's own CPU allocator,
which the library replaces; see tfhub_ft/cpu_memory.py). `old_tool` runs with
TensorFlow's own allocator, as its users ran it. Each row also gives the
command's peak resident memory.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_list("datasets", ["clothing-small", "cifar10-small"],
                  "Folders under shared/data with train/ and validation/.")
flags.DEFINE_string(
    "variants",
    "old_tool;default;thorough:--preset=thorough;"
    "thorough_balanced:--preset=thorough --class_weight=balanced;image224:--image_size=224",
    "Semicolon-separated `name:flags` variants.")
flags.DEFINE_integer("repeats", 1, "Runs of each variant (rows alternate between variants).")

ENVIRONMENT_WORD = re.compile(r"^[A-Z][A-Z0-9_]*=")


def command(name, variant_flags, train_dir, validation_dir, export_dir):
    if name == "old_tool":
        return [*common.old_tool_command(FLAGS.hub_url, train_dir, validation_dir, export_dir),
                *variant_flags]
    return [sys.executable, "-m", "tfhub_ft", "train", f"--hub_url={FLAGS.hub_url}",
            f"--image_dir={train_dir}", f"--validation_dir={validation_dir}",
            f"--export_dir={export_dir}", "--verbosity=-1", *variant_flags]


def run(argv, environment):
    """Runs one command; returns (wall seconds, validation accuracy, peak
    resident memory in MB)."""
    # Files, not pipes: nothing reads a pipe while os.wait4 waits, and a
    # full pipe would stop the child.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr,
                                   env=dict(os.environ, **environment))
        try:
            # os.wait4, not Popen.wait: the child's own peak memory comes with it.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()  # Ctrl-C: no training left behind on the cores
            process.wait()
            raise
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
    found = common.ACCURACY.findall(output)
    if process.returncode or not found:
        sys.exit(f"{' '.join(argv)} failed ({process.returncode}):\n"
                 f"{output[-2000:]}\n{errors[-4000:]}")
    return seconds, float(found[-1]), usage.ru_maxrss / 1024


def main(argv):
    del argv
    variants = []
    for text in filter(None, (v.strip() for v in FLAGS.variants.split(";"))):
        name, _, rest = text.partition(":")
        words = rest.split()
        environment = dict(w.split("=", 1) for w in words if ENVIRONMENT_WORD.match(w))
        if name == "old_tool":
            # As its users ran it: TensorFlow's own CPU allocator, whatever
            # this shell says (an environment word still wins).
            environment = {"TF_CPU_ALLOCATOR_USE_BFC": "false", **environment}
        variants.append((name, [w for w in words if not ENVIRONMENT_WORD.match(w)],
                         environment))
    folders = {d: os.path.join(common.SHARED, "data", d) for d in FLAGS.datasets}
    common.require(FLAGS.hub_url, *folders.values())
    print(f"Machine: {common.machine()}; TF_CPU_ALLOCATOR_USE_BFC="
          f"{os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', 'unset')} unless a variant sets it "
          f"(old_tool: false)",
          flush=True)
    results = {}
    for dataset, folder in folders.items():
        for _ in range(FLAGS.repeats):
            for name, variant_flags, environment in variants:
                export_dir = tempfile.mkdtemp(prefix="frontier-")
                try:
                    seconds, accuracy, peak_mb = run(command(
                        name, variant_flags, os.path.join(folder, "train"),
                        os.path.join(folder, "validation"), os.path.join(export_dir, "m")),
                        environment)
                finally:
                    shutil.rmtree(export_dir, ignore_errors=True)
                results.setdefault((dataset, name), []).append((seconds, accuracy, peak_mb))
                print(f"{dataset:16s} {name:24s} {seconds:6.1f} s  accuracy {accuracy:.4f}  "
                      f"peak RSS {peak_mb:,.0f} MB", flush=True)

    def mean(rows, i):
        return sum(r[i] for r in rows) / len(rows)

    header = " | ".join(f"{d}: wall, accuracy, vs old tool, peak RSS" for d in folders)
    print(f"\n| variant | {header} |\n|---|" + "---|" * len(folders))
    for name, _, _ in variants:
        cells = []
        for dataset in folders:
            rows = results[(dataset, name)]
            seconds, accuracy = mean(rows, 0), mean(rows, 1)
            old = results.get((dataset, "old_tool"))
            versus = (f"{seconds / mean(old, 0):.2f}x time, "
                      f"{100 * (accuracy - mean(old, 1)):+.1f} pts") if old else ""
            cells.append(f"{seconds:.0f} s, {accuracy:.4f}, {versus}, {mean(rows, 2):,.0f} MB")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)

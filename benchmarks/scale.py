"""Time and peak memory from thousands to tens of thousands of images.

    python benchmarks/scale.py [--sizes=5000,20000,50000] [--image_sizes=96,224]
        [--cpu_memory=pooled,unpooled]

Fine-tunes the shared backbone (head_epochs=3, fine_tune_epochs=1,
cache_memory_mb=1024) on N images of the CIFAR-10 training folder: the first
N/10 files of each class in sorted order, through a temporary folder of
links, so the library reads a class folder as a user's would. The files of
the validation folder (cifar10-small/validation, a fixed held-out slice of
the same split: files 0200-0249 of each class) are left out of training, so
at most 49,500 images train. Then the largest size again as a
tf.data.Dataset of decoded images (the 32 x 32 JPEGs, decoded by tf.data;
the library resizes them) with a smaller budget (--stream_memory_mb=512),
to show a tf.data source streaming into the budget like a folder.

Every measurement runs in a fresh process with its own temporary folder
(TMPDIR): peak resident memory is a per-process high-water mark, and the
spill files a run leaves behind (there should be none: the library removes
its spill folder at exit) are counted after the process ends. Prints one
table: source, images, image size, memory budget, seconds (the `fit` call,
decoding included), ms per image, peak RSS, bytes spilled, spill files left
and validation accuracy.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags, logging

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("hub_url", common.BACKBONE, "Backbone folder.")
flags.DEFINE_string("train_dir", os.path.join(common.SHARED, "data", "cifar10-train-50k"),
                    "Class folders the training images are taken from.")
flags.DEFINE_string("validation_dir",
                    os.path.join(common.SHARED, "data", "cifar10-small", "validation"),
                    "Held-out class folders; files with the same names are left out of "
                    "training.")
flags.DEFINE_list("sizes", ["5000", "20000", "50000"], "Training image counts.")
flags.DEFINE_list("image_sizes", ["96", "224"],
                  "Square sides the backbone sees (224 is the library's default).")
flags.DEFINE_integer("head_epochs", 3, "Phase-1 epochs.")
flags.DEFINE_integer("fine_tune_epochs", 1, "Phase-2 epochs.")
flags.DEFINE_integer("cache_memory_mb", 1024, "Memory budget of the folder runs.")
flags.DEFINE_integer("stream_memory_mb", 512, "Memory budget of the tf.data runs.")
flags.DEFINE_list("stream_image_sizes", None,
                  "Image sizes of the tf.data runs (the largest count); default: "
                  "--image_sizes. Pass an empty value for none.")
common.define_cpu_memory_flag()
flags.DEFINE_string("child", None, "Internal: one measurement, as JSON.")


def training_files(count):
    """[(class, path)] of the first count/10 files of each class, sorted,
    leaving out the validation folder's file names."""
    classes = sorted(name for name in os.listdir(FLAGS.train_dir)
                     if os.path.isdir(os.path.join(FLAGS.train_dir, name)))
    chosen = []
    for name in classes:
        held_out = set(os.listdir(os.path.join(FLAGS.validation_dir, name)))
        files = [f for f in sorted(os.listdir(os.path.join(FLAGS.train_dir, name)))
                 if f not in held_out]
        chosen += [(name, os.path.join(FLAGS.train_dir, name, f))
                   for f in files[:count // len(classes)]]
    return chosen


def link_folder(files, root):
    """A class folder of links to `files`; returns its path."""
    for name, path in files:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        os.symlink(os.path.abspath(path), os.path.join(root, name, os.path.basename(path)))
    return root


def child(spec):
    import time

    import tfhub_ft

    tuner = tfhub_ft.FineTuner(
        FLAGS.hub_url, image_size=spec["image_size"], head_epochs=FLAGS.head_epochs,
        fine_tune_epochs=FLAGS.fine_tune_epochs, cache_memory_mb=spec["memory_mb"])
    classes = sorted(os.listdir(spec["train"]))
    paths = [os.path.join(spec["train"], name, f) for name in classes
             for f in sorted(os.listdir(os.path.join(spec["train"], name)))]
    if spec["source"] == "tf.data":
        import tensorflow as tf

        labels = [classes.index(os.path.basename(os.path.dirname(p))) for p in paths]
        train = tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            lambda path, label: (tf.io.decode_jpeg(tf.io.read_file(path), channels=3), label),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        train = spec["train"]
    start = time.perf_counter()
    tuner.fit(train, FLAGS.validation_dir, class_names=classes, verbose=0)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "images": len(paths),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "spilled_gb": tuner.cache_usage["spilled_bytes"] / 2**30,
        "accuracy": tuner.validation_metrics["accuracy"],
    }))


def spill_files_left(temporary):
    """The files left in the library's spill folders (tfhub_ft_cache_*)
    under `temporary`, as text ("0" when there is no such folder)."""
    folders = [os.path.join(temporary, name) for name in os.listdir(temporary)
               if name.startswith("tfhub_ft_cache_")]
    files = sum(len(names) for folder in folders for _, _, names in os.walk(folder))
    return f"{files}" + (f" (in {len(folders)} folder(s))" if folders else "")


def measure(spec):
    """Runs one measurement in a fresh process; its row, with the spill
    files left in its temporary folder after it ended."""
    temporary = tempfile.mkdtemp(prefix="scale_tmp_")
    try:
        result = subprocess.run(
            [sys.executable, __file__, f"--child={json.dumps(spec)}",
             f"--hub_url={FLAGS.hub_url}", f"--validation_dir={FLAGS.validation_dir}",
             f"--head_epochs={FLAGS.head_epochs}",
             f"--fine_tune_epochs={FLAGS.fine_tune_epochs}"],
            env=dict(common.cpu_memory_environment(spec["cpu_memory"]), TMPDIR=temporary),
            capture_output=True, text=True)
        left = spill_files_left(temporary)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if result.returncode != 0:
        print(f"{spec}: failed with status {result.returncode}:\n{result.stderr[-2000:]}",
              file=sys.stderr)
        return dict(spec, failed=result.returncode, spill_left=left)
    return dict(spec, **json.loads(result.stdout.strip().splitlines()[-1]), spill_left=left)


def main(argv):
    del argv
    common.require(FLAGS.hub_url, FLAGS.train_dir, FLAGS.validation_dir)
    if FLAGS.child:
        return child(json.loads(FLAGS.child))
    sizes = [int(s) for s in FLAGS.sizes]
    image_sizes = [int(s) for s in FLAGS.image_sizes]
    stream_sizes = [int(s) for s in (FLAGS.image_sizes if FLAGS.stream_image_sizes is None
                                     else FLAGS.stream_image_sizes)]
    print(f"machine: {common.machine()}")
    links = tempfile.mkdtemp(prefix="scale_links_")
    rows = []
    try:
        for count in sizes:
            train = link_folder(training_files(count), os.path.join(links, str(count)))
            plan = [("folder", size, FLAGS.cache_memory_mb) for size in image_sizes]
            if count == max(sizes):
                plan += [("tf.data", size, FLAGS.stream_memory_mb) for size in stream_sizes]
            for source, size, memory_mb in plan:
                for cpu_memory in FLAGS.cpu_memory:
                    rows.append(measure({"source": source, "train": train, "image_size": size,
                                         "memory_mb": memory_mb, "count": count,
                                         "cpu_memory": cpu_memory}))
                    print(f"done: {source} {count} images at {size} px, {cpu_memory}",
                          flush=True)
    finally:
        shutil.rmtree(links, ignore_errors=True)
    print(f"\n## Fine-tuning time and memory by data size (head_epochs={FLAGS.head_epochs}, "
          f"fine_tune_epochs={FLAGS.fine_tune_epochs}, validation: "
          f"{os.path.basename(os.path.dirname(FLAGS.validation_dir))}/"
          f"{os.path.basename(FLAGS.validation_dir)})\n")
    print("| source | images | image size | memory budget (MB) | CPU memory | seconds | "
          "ms per image | peak RSS (GB) | spilled (GB) | spill files left | "
          "validation accuracy |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "failed" in row:
            print(f"| {row['source']} | {row['count']} | {row['image_size']} | "
                  f"{row['memory_mb']} | {row['cpu_memory']} | failed (status "
                  f"{row['failed']}) | | | | "
                  f"{row['spill_left']} | |")
            continue
        print(f"| {row['source']} | {row['images']:,} | {row['image_size']} | "
              f"{row['memory_mb']} | {row['cpu_memory']} | {row['seconds']:.1f} | "
              f"{1000 * row['seconds'] / row['images']:.2f} | {row['peak_rss_gb']:.2f} | "
              f"{row['spilled_gb']:.2f} | {row['spill_left']} | {row['accuracy']:.4f} |")


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)

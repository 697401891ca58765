"""Shared helpers of the benchmark scripts: where the shared data lives."""

import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("TFHUB_FT_SHARED",
                        os.path.join(HERE, os.pardir, os.pardir, "shared"))
BACKBONE = os.path.join(SHARED, "models", "mobilenet_v2_035_feature_vector")
TRAIN_DIR = os.path.join(SHARED, "data", "clothing-small", "train")
VALIDATION_DIR = os.path.join(SHARED, "data", "clothing-small", "validation")
# What old_tool.py and `tfhub_ft train --verbosity=-1` print last.
ACCURACY = re.compile(r"validation_accuracy=([0-9.]+)")


def require(*paths):
    """Exits with a clear reason when the shared data is absent."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise SystemExit(
            f"Benchmark data not found: {missing}. Pass the paths as flags or "
            "set TFHUB_FT_SHARED to the shared/ folder.")


def old_tool_command(hub_url, train_dir, validation_dir, export_dir):
    """The command line of old_tool.py: make_image_classifier's recipe."""
    return [sys.executable, os.path.join(HERE, "old_tool.py"), f"--hub_url={hub_url}",
            f"--image_dir={train_dir}", f"--validation_dir={validation_dir}",
            f"--export_dir={export_dir}"]


class Timer:
    """Context manager measuring wall seconds."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine():
    """A one-line description of this machine, for the results tables."""
    import platform
    cores = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{cores} cores, {model or platform.processor()}, Python {platform.python_version()}"


def define_cpu_memory_flag():
    """`--cpu_memory`: TensorFlow's CPU allocator per measurement, checked."""
    from absl import flags
    flags.DEFINE_list("cpu_memory", ["pooled"],
                      "TensorFlow's CPU allocator per measurement: `pooled` (the library's, "
                      "tfhub_ft/cpu_memory.py), `unpooled` (TensorFlow's default) or both, "
                      "one after the other.")
    flags.register_validator(
        "cpu_memory", lambda values: bool(values) and set(values) <= {"pooled", "unpooled"},
        message="--cpu_memory takes `pooled`, `unpooled` or both, comma-separated.")


def cpu_memory_environment(cpu_memory):
    """The environment of a child process measured with `cpu_memory`
    ("pooled" or "unpooled"): os.environ with TF_CPU_ALLOCATOR_USE_BFC set."""
    return dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC=str(cpu_memory == "pooled").lower())

"""Shared helpers of the benchmark scripts: where the shared data lives."""

import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("TFHUB_FT_SHARED",
                        os.path.join(HERE, os.pardir, os.pardir, "shared"))
BACKBONE = os.path.join(SHARED, "models", "mobilenet_v2_035_feature_vector")
TRAIN_DIR = os.path.join(SHARED, "data", "clothing-small", "train")
VALIDATION_DIR = os.path.join(SHARED, "data", "clothing-small", "validation")


def require(*paths):
    """Exits with a clear reason when the shared data is absent."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise SystemExit(
            f"Benchmark data not found: {missing}. Pass the paths as flags or "
            "set TFHUB_FT_SHARED to the shared/ folder.")


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

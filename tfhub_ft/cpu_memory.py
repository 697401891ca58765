"""TensorFlow's CPU memory, pooled: requested before TensorFlow sets up its
devices.

TensorFlow's default CPU allocator hands every buffer back to the C
library when a tensor is freed, and glibc returns large blocks (above its
mmap threshold, at most 32 MiB) to the kernel at once. So every batch of
the frozen pass and of fine-tuning maps its activations anew, and the
kernel zero-fills them page by page: the shared backbone's forward pass
over 3,400 images at 224 px took 12.4 million page faults, and as much
system time as compute. TensorFlow's BFC allocator, used for GPUs, keeps
freed blocks in a pool instead; `TF_CPU_ALLOCATOR_USE_BFC=true` gives the
CPU one. TensorFlow reads the variable once, when it sets up its devices
(its first tensor or op, or a call such as `tf.config.list_logical_devices()`;
`ProcessState::GetCPUAllocator` in
tensorflow/core/common_runtime/process_state.cc). Measured on a 2-core AMD
EPYC VM, one run each (`benchmarks/frontier.py`, `benchmarks/memory.py`):
the default command 1.8x faster on the shared clothing photos and 1.4x on
CIFAR-10, the same accuracy to the last digit, and a peak resident memory
43-266 MB higher (the pool keeps what the largest batches needed, and
gives nothing back to the system until the process ends; BUILD_NOTES.md,
"TensorFlow's CPU memory, pooled").

Importing `tfhub_ft` requests the pool (`request_pooling`) unless the
variable is already set: `TF_CPU_ALLOCATOR_USE_BFC=false` keeps TensorFlow's
default. No TensorFlow is imported here but in `is_pooled`.
"""

import os

POOLING_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"

# One note per process: every `fit` would repeat it.
_noted = False


def request_pooling():
    """Sets `TF_CPU_ALLOCATOR_USE_BFC=true` unless the variable is set.

    It takes effect if TensorFlow has not yet set up its devices in this
    process (importing TensorFlow does not); it holds for the whole process,
    other TensorFlow code in it included, and child processes inherit it.
    """
    os.environ.setdefault(POOLING_VARIABLE, "true")


def pooling_requested():
    """Whether the environment asks for the pool: "1" or "true" in any
    case, as TensorFlow's `ReadBoolFromEnvVar` reads it (no spaces)."""
    return os.environ.get(POOLING_VARIABLE, "").lower() in ("1", "true")


def is_pooled():
    """Whether TensorFlow's CPU allocator is its BFC allocator.

    Reads `tf.config.experimental.get_memory_info("CPU:0")`: the BFC
    allocator reports its statistics, TensorFlow's default CPU allocator
    raises ValueError ("Allocator stats not available"). Sets up
    TensorFlow's devices if it has none yet, so call it only after that
    (after that, device settings such as `tf.config.set_visible_devices`
    raise).

    Raises:
        ValueError: what `get_memory_info` raises for another reason.
    """
    import tensorflow as tf
    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError as error:
        if "Allocator stats not available" not in str(error):
            raise
        return False
    return True


def note_if_unpooled(log):
    """Calls `log` (e.g. a logger's `warning`) once per process with a line
    saying how to pool, when the pool was requested but TensorFlow had set
    up its devices before `tfhub_ft` was imported. Nothing when the
    variable says "false", or on a machine with a GPU (where the CPU's
    allocator matters less than the line says)."""
    global _noted
    if _noted or not pooling_requested():
        return
    import tensorflow as tf
    try:
        if is_pooled() or tf.config.list_logical_devices("GPU"):
            return
    except ValueError:
        return  # no CPU device to ask: an advice line is not worth failing for
    _noted = True
    log(f"TensorFlow's CPU memory is not pooled: TensorFlow set up its devices (a tensor, "
        f"an op or a device query) before tfhub_ft was imported, so {POOLING_VARIABLE}=true "
        f"came too late. Import tfhub_ft before using TensorFlow, or set "
        f"{POOLING_VARIABLE}=true in the environment (training was 1.4-1.8x faster with it "
        f"on a 2-core VM); {POOLING_VARIABLE}=false silences this.")

"""Arrays that live in memory up to a budget and spill to files beyond it.

Decoded images and cached activations are written once and read in batches
many times. `ArrayBudget.allocate` gives a numpy array while the budget
lasts and a `FileArray` after it; both are read with `take(array, rows)`, so
the pipeline never needs the whole dataset in memory. `RowWriter` fills such
an array batch by batch from a stream whose length may not be known.
"""

import atexit
import logging
import os
import re
import shutil
from typing import Optional, Sequence

import numpy as np

from tfhub_ft import native_stderr, scratch
from tfhub_ft.checks import check_integer

logger = logging.getLogger(__name__)

# The prefix of spill folders in the temporary folder (`scratch.make_folder`).
SPILL_KIND = "tfhub_ft_cache"


def remove_abandoned_spill():
    """Removes the spill folders in the temporary folder that killed runs
    left (SIGKILL: no exit handler ran).

    Returns:
        The paths removed (see `scratch.remove_abandoned`).
    """
    return scratch.remove_abandoned(SPILL_KIND, what="the spill files of a run")


class FileArray:
    """A [N, ...] array whose rows are stored in a file.

    Rows are read with `os.pread` into fresh buffers rather than through a
    memory map, so reading does not grow the process's resident memory with
    page-cache pages.

    Args:
        path: The file (created, or truncated, with room for `shape`).
        shape: Full shape, rows first.
        dtype: numpy dtype.
    """

    def __init__(self, path, shape, dtype, rows: Optional[np.ndarray] = None,
                 _file=None):
        self.path = path
        self.dtype = np.dtype(dtype)
        self._row_shape = tuple(int(d) for d in shape[1:])
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        if _file is None:
            _file = open(path, "w+b")
            _file.truncate(int(shape[0]) * self._row_bytes)
        self._file = _file
        self._rows = rows
        self._stored_rows = int(shape[0])

    @property
    def shape(self):
        count = self._stored_rows if self._rows is None else len(self._rows)
        return (count,) + self._row_shape

    @property
    def nbytes(self):
        return self.shape[0] * self._row_bytes

    def __len__(self):
        return self.shape[0]

    def write(self, start, values):
        """Writes `values` [M, ...] to rows start .. start + M - 1."""
        if self._rows is not None:
            raise ValueError("A FileArray subset is read-only.")
        data = memoryview(np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)).cast("B")
        offset = start * self._row_bytes
        try:
            while data:  # pwrite may write less than asked
                written = os.pwrite(self._file.fileno(), data, offset)
                data, offset = data[written:], offset + written
        except OSError as error:
            # Named: os.pwrite's error says "No space left on device", not where.
            raise OSError(error.errno, error.strerror, self._file.name) from error

    def append(self, values):
        """Writes `values` [M, ...] after the last row, growing the file by M rows."""
        self.write(self._stored_rows, values)
        self._stored_rows += len(values)

    def remove(self):
        """Closes and deletes the file; the array (and any subset) is unusable after."""
        self._file.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def read(self, rows):
        """Returns the given rows (int array) as a numpy array [len(rows), ...]."""
        rows = np.asarray(rows, np.int64)
        if self._rows is not None:
            rows = self._rows[rows]
        out = np.empty((len(rows),) + self._row_shape, self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        descriptor = self._file.fileno()
        # Runs of consecutive rows are read in one call.
        for start, end in _runs(rows):
            data = os.pread(descriptor, (end - start) * self._row_bytes,
                            int(rows[start]) * self._row_bytes)
            flat[start:end] = np.frombuffer(data, np.uint8).reshape(end - start, -1)
        return out

    def subset(self, rows):
        """A read-only view of some rows, sharing the file."""
        rows = np.asarray(rows, np.int64)
        base = rows if self._rows is None else self._rows[rows]
        return FileArray(self.path, (self._stored_rows,) + self._row_shape, self.dtype,
                         rows=base, _file=self._file)


def take(array, rows):
    """Rows of a numpy array or `FileArray`, as a numpy array."""
    if isinstance(array, FileArray):
        return array.read(rows)
    return array[np.asarray(rows, np.int64)]


def subset(array, rows):
    """The given rows of an array: a copy for numpy, a view for a FileArray."""
    if isinstance(array, FileArray):
        return array.subset(rows)
    return array[np.asarray(rows, np.int64)]


def write(array, start, values):
    """Writes rows start .. start + len(values) - 1 of a numpy array or `FileArray`."""
    if isinstance(array, FileArray):
        array.write(start, values)
    else:
        array[start:start + len(values)] = values


def write_rows(array, rows, values):
    """Writes values[i] to row rows[i] (rows ascending)."""
    rows = np.asarray(rows, np.int64)
    if not isinstance(array, FileArray):
        array[rows] = values
        return
    for start, end in _runs(rows):
        array.write(int(rows[start]), values[start:end])


def _runs(rows):
    """Yields (start, end) of each run of consecutive values in `rows`."""
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and rows[end] == rows[end - 1] + 1:
            end += 1
        yield start, end
        start = end


class ArrayBudget:
    """Hands out arrays in memory until `memory_bytes` are used, then files.

    Args:
        memory_bytes: Bytes of arrays kept in memory; 0 puts every array in
            a file, None keeps every array in memory.
        directory: Where spilled arrays go; when None, a folder in the
            temporary folder named after this process (`scratch`), removed
            at exit or by `close`, and spill folders of ended processes are
            removed there first.
    """

    def __init__(self, memory_bytes: Optional[int] = None, directory: Optional[str] = None):
        memory_bytes = check_integer("memory_bytes", memory_bytes, 0, optional=True)
        self.memory_bytes = float("inf") if memory_bytes is None else memory_bytes
        self.used_bytes = 0
        self.spilled_bytes = 0
        self._directory = directory
        self._owned = False
        self._count = 0
        if directory is None:
            remove_abandoned_spill()

    def _spill_directory(self):
        if self._directory is None:
            self._directory = scratch.make_folder(SPILL_KIND)
            self._owned = True
            atexit.register(shutil.rmtree, self._directory, True)
        os.makedirs(self._directory, exist_ok=True)
        return self._directory

    def close(self):
        """Removes the spill folder this budget made, and every file in it.

        Arrays it allocated past the memory budget (`FileArray`s) cannot be
        read afterwards. Called when a run's arrays are no longer needed
        (`FineTuner.fit` closes its budget as it ends): without it they stay
        on disk until the process exits. A folder passed in as `directory`
        is left alone; closing twice is harmless.
        """
        if self._owned:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory, self._owned = None, False

    def _new_path(self, name):
        self._count += 1
        return os.path.join(self._spill_directory(), f"{self._count:03d}-{name}.bin")

    def fits(self, nbytes) -> bool:
        """Whether `nbytes` more can be kept in memory."""
        return self.used_bytes + nbytes <= self.memory_bytes

    def allocate(self, shape: Sequence[int], dtype, name="array"):
        """A new array of `shape`: numpy if it fits the budget, else a FileArray."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.fits(size):
            self.used_bytes += size
            return np.empty(shape, dtype)
        path = self._new_path(name)
        logger.info("Spilling %s (%.0f MB) to %s: over the %.0f MB memory budget",
                    name, size / 2**20, path, self.memory_bytes / 2**20)
        self.spilled_bytes += size
        return FileArray(path, shape, dtype)

    def staging_file(self, row_shape: Sequence[int], dtype, name="array") -> FileArray:
        """An empty `FileArray` [0, *row_shape] that grows with `append`.

        For rows whose count is not known in advance; not counted in the
        budget until `settle` places it.
        """
        return FileArray(self._new_path(name), (0,) + tuple(row_shape), dtype)

    def settle(self, staged: FileArray, name="array"):
        """Places a complete staging file: in memory if it fits the budget
        (read back, the file deleted), else kept as the spill file it is.

        Returns:
            A numpy array or `staged` itself, with the same rows.
        """
        size = staged.nbytes
        if self.fits(size):
            self.used_bytes += size
            out = np.empty(staged.shape, staged.dtype)
            # Read back in slices of about 16 MB, so no second full copy exists.
            row_bytes = max(1, size // max(1, len(staged)))
            step = max(1, (16 << 20) // row_bytes)
            for start in range(0, len(staged), step):
                rows = np.arange(start, min(start + step, len(staged)))
                out[start:start + len(rows)] = staged.read(rows)
            staged.remove()
            return out
        logger.info("Spilling %s (%.0f MB) to %s: over the %.0f MB memory budget",
                    name, size / 2**20, staged.path, self.memory_bytes / 2**20)
        self.spilled_bytes += size
        return staged


class RowWriter:
    """Fills a budget's array batch by batch, its row count known or not.

    With `rows` known the array is allocated once (memory, or a file past
    the budget). With `rows=None` the rows go to a staging file that grows
    as they come and is placed by the budget at `finish` (read into memory
    if it fits). Why a file rather than a growing array in memory: memory
    never holds more than the budget plus one batch (a growing numpy array
    copies itself, holding old and new at once), a stream larger than RAM
    still works, and the stream is read once (a counting pass would run a
    decoding pipeline twice, and a one-shot or random pipeline may not give
    the same rows twice). The cost, when the rows fit the budget after all,
    is writing them to disk and reading them back once.

    Args:
        budget: The `ArrayBudget`.
        row_shape: Shape of one row.
        dtype: numpy dtype.
        name: Names the array in logs and spill files.
        rows: The row count, or None when unknown.
    """

    def __init__(self, budget: ArrayBudget, row_shape: Sequence[int], dtype, name="array",
                 rows: Optional[int] = None):
        self._budget = budget
        self._name = name
        self._rows = rows
        self.count = 0
        if rows is None:
            self._array = budget.staging_file(row_shape, dtype, name)
        else:
            self._array = budget.allocate((rows,) + tuple(row_shape), dtype, name)

    def append(self, values):
        """Writes `values` [M, *row_shape] after the rows written so far.

        Raises:
            ValueError: past the `rows` given.
        """
        if self._rows is None:
            self._array.append(values)
        else:
            if self.count + len(values) > self._rows:
                raise ValueError(
                    f"{self._name}: {self.count + len(values)} rows written into an array "
                    f"of {self._rows}; the stream gave more rows than its stated length.")
            write(self._array, self.count, values)
        self.count += len(values)

    def finish(self):
        """The array of the rows written: numpy, or a `FileArray` past the budget."""
        if self._rows is None:
            return self._budget.settle(self._array, self._name)
        if self.count < self._rows:
            # Fewer rows than stated: a view of those written (no copy).
            return (self._array[:self.count] if isinstance(self._array, np.ndarray)
                    else self._array.subset(np.arange(self.count)))
        return self._array


_GENERATOR_NOTE = re.compile(native_stderr.glog_line(
    "generator_dataset_op", "Memory patch applied: M_TRIM_THRESHOLD="))
_generator_note_done = False


def _first_generator_dataset_quietly():
    """TensorFlow's runtime logs "Memory patch applied: M_TRIM_THRESHOLD=128
    kb was set." (INFO) the first time a process iterates a generator
    dataset, in the middle of the first fit's output: an empty one is
    iterated first, with that line sent to DEBUG."""
    global _generator_note_done
    if _generator_note_done:
        return
    import tensorflow as tf

    with native_stderr.filtered(_GENERATOR_NOTE, logger.debug):
        for _ in tf.data.Dataset.from_generator(
                lambda: iter(()), output_signature=tf.TensorSpec([], tf.int32)):
            pass
    _generator_note_done = True


class BatchSource:
    """Batches of rows from arrays in memory or in files, as a tf.data pipeline.

    Each pass (epoch) over the data draws its order, and each row's
    augmentation variant, from (seed, epoch), so a run repeats exactly and a
    resumed run continues the same sequence by setting `epoch`.

    Args:
        variants: A list of V inputs, one per augmentation variant, each an
            array or tuple of arrays [N, ...] (numpy or `FileArray`); each
            row is served from one randomly chosen variant per epoch.
        labels: int [N], or None for inputs only.
        batch_size: Rows per batch.
        num_classes: Labels are one-hot float32 [B, num_classes] when set,
            else int32 [B].
        shuffle: Draw a new order each epoch.
        seed: Seed of the orders and choices.
    """

    def __init__(self, variants, labels=None, batch_size=32, num_classes=None,
                 shuffle=False, seed=0):
        if not isinstance(variants, list):
            variants = [variants]
        self._single = not isinstance(variants[0], tuple)
        self.variants = [v if isinstance(v, tuple) else (v,) for v in variants]
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return len(self.variants[0][0])

    @property
    def steps(self):
        return -(-len(self) // self.batch_size)

    def _rows(self, rows, picks):
        if picks is None:
            return tuple(take(array, rows) for array in self.variants[0])
        parts = []
        for arrays in zip(*self.variants):
            first = arrays[0]
            out = np.empty((len(rows),) + tuple(first.shape[1:]), first.dtype)
            for variant, array in enumerate(arrays):
                chosen = picks == variant
                if chosen.any():
                    out[chosen] = take(array, rows[chosen])
            parts.append(out)
        return tuple(parts)

    def batches(self, epoch):
        """Yields the batches of one epoch as numpy arrays."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self)) if self.shuffle else np.arange(len(self))
        for start in range(0, len(self), self.batch_size):
            rows = order[start:start + self.batch_size]
            picks = (rng.integers(0, len(self.variants), size=len(rows))
                     if len(self.variants) > 1 else None)
            inputs = self._rows(rows, picks)
            inputs = inputs[0] if self._single else inputs
            if self.labels is None:
                yield inputs
            elif self.num_classes:
                yield inputs, np.eye(self.num_classes, dtype=np.float32)[self.labels[rows]]
            else:
                yield inputs, self.labels[rows]

    def _generate(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        yield from self.batches(epoch)

    @property
    def element_spec(self):
        """The structure of one batch, as tf.TensorSpecs (batch first)."""
        import tensorflow as tf

        signature = tuple(
            tf.TensorSpec((None,) + tuple(array.shape[1:]), tf.as_dtype(array.dtype))
            for array in self.variants[0])
        signature = signature[0] if self._single else signature
        if self.labels is not None:
            label_spec = (tf.TensorSpec((None, self.num_classes), tf.float32)
                          if self.num_classes else tf.TensorSpec((None,), tf.int32))
            signature = (signature, label_spec)
        return signature

    def dataset(self):
        """A tf.data.Dataset giving one epoch per iteration."""
        import tensorflow as tf

        _first_generator_dataset_quietly()
        dataset = tf.data.Dataset.from_generator(self._generate,
                                                 output_signature=self.element_spec)
        return dataset.apply(tf.data.experimental.assert_cardinality(self.steps)).prefetch(
            tf.data.AUTOTUNE)

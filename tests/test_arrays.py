import os

import numpy as np
import pytest

from tfhub_ft import arrays


def test_budget_spills_past_memory(tmp_path):
    budget = arrays.ArrayBudget(300, directory=str(tmp_path))
    small = budget.allocate((10, 10), np.uint8)
    large = budget.allocate((10, 10), np.float32, "activations")
    assert isinstance(small, np.ndarray) and isinstance(large, arrays.FileArray)
    assert budget.used_bytes == 100 and budget.spilled_bytes == 400
    assert large.nbytes == 400 and len(large) == 10
    assert (tmp_path / "001-activations.bin").stat().st_size == 400
    with pytest.raises(ValueError, match="memory_bytes=-1"):
        arrays.ArrayBudget(-1)


def test_file_array_round_trip_and_views(tmp_path):
    values = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)
    stored = arrays.FileArray(str(tmp_path / "a.bin"), values.shape, np.float32)
    arrays.write(stored, 0, values[:4])
    arrays.write_rows(stored, [4, 5], values[4:])
    np.testing.assert_array_equal(arrays.take(stored, [5, 0, 1, 2]), values[[5, 0, 1, 2]])
    view = arrays.subset(stored, [1, 3, 5])
    assert view.shape == (3, 2, 3)
    np.testing.assert_array_equal(arrays.take(view, [2, 0]), values[[5, 1]])
    with pytest.raises(ValueError, match="read-only"):
        view.write(0, values[:1])
    np.testing.assert_array_equal(arrays.take(values, [2]), values[[2]])


def test_batch_source_orders_repeat_by_seed_and_epoch():
    inputs = np.arange(10)
    source = arrays.BatchSource(inputs, np.arange(10) % 2, batch_size=4, shuffle=True, seed=3)
    first = [x for x, _ in source.batches(0)]
    assert [len(x) for x in first] == [4, 4, 2]
    assert sorted(np.concatenate(first).tolist()) == list(range(10))
    again = [x for x, _ in arrays.BatchSource(inputs, np.arange(10) % 2, 4, shuffle=True,
                                              seed=3).batches(0)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    later = np.concatenate([x for x, _ in source.batches(1)])
    assert not np.array_equal(np.concatenate(first), later)


def test_batch_source_variants_and_one_hot(tmp_path):
    plain = np.arange(8, dtype=np.float32)[:, None]
    mirrored = arrays.FileArray(str(tmp_path / "m.bin"), (8, 1), np.float32)
    mirrored.write(0, -plain)
    labels = np.arange(8) % 4
    source = arrays.BatchSource([plain, mirrored], labels, batch_size=3, num_classes=4,
                                shuffle=True, seed=0)
    seen_negative = False
    for epoch in range(3):
        values, one_hot = zip(*source.batches(epoch))
        values = np.concatenate(values)[:, 0]
        assert sorted(np.abs(values).tolist()) == list(range(8))
        np.testing.assert_array_equal(np.concatenate(one_hot).argmax(-1), np.abs(values) % 4)
        seen_negative |= bool((values < 0).any())
    assert seen_negative
    dataset = source.dataset()
    assert dataset.cardinality().numpy() == 3
    assert sum(x.shape[0] for x, _ in dataset) == 8


def test_row_writer_known_and_unknown_lengths(tmp_path):
    values = np.arange(10 * 3, dtype=np.int16).reshape(10, 3)
    budget = arrays.ArrayBudget(100, directory=str(tmp_path))
    known = arrays.RowWriter(budget, (3,), np.int16, "known", rows=10)  # 60 bytes: memory
    for start in range(0, 10, 4):
        known.append(values[start:start + 4])
    np.testing.assert_array_equal(known.finish(), values)
    with pytest.raises(ValueError, match="more rows than its stated length"):
        known.append(values[:1])
    short = arrays.RowWriter(budget, (3,), np.int16, "short", rows=10)  # past the budget
    short.append(values[:7])
    view = short.finish()
    assert isinstance(view, arrays.FileArray) and view.shape == (7, 3)
    np.testing.assert_array_equal(arrays.take(view, np.arange(7)), values[:7])
    # Unknown length: staged in a file, placed by the budget at the end.
    fits = arrays.RowWriter(budget, (3,), np.int16, "fits")
    fits.append(values[:3])
    fits.append(values[3:5])
    placed = fits.finish()
    assert isinstance(placed, np.ndarray) and budget.used_bytes == 60 + 30
    np.testing.assert_array_equal(placed, values[:5])
    spills = arrays.RowWriter(budget, (3,), np.int16, "spills")
    for row in values:
        spills.append(row[None])
    kept = spills.finish()
    assert isinstance(kept, arrays.FileArray) and budget.spilled_bytes == 60 + 60
    np.testing.assert_array_equal(arrays.take(kept, np.arange(10)), values)
    assert sorted(os.listdir(tmp_path)) == ["001-short.bin", "003-spills.bin"]  # 002-fits: removed


def test_a_budget_spills_into_a_folder_of_its_process_and_close_removes_it(
        tmp_path, monkeypatch, caplog):
    import logging
    import socket
    import tempfile

    from tests.test_scratch import ended_process_id

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = socket.gethostname().replace("/", "_")
    left = tmp_path / f"tfhub_ft_cache-{ended_process_id()}@{host}-abc"
    left.mkdir()
    (left / "001-images.bin").write_bytes(b"x" * 100)
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        budget = arrays.ArrayBudget(0)
    # What a killed run left is removed when the next budget starts.
    assert not left.exists() and "the spill files of a run that process" in caplog.text
    spilled = budget.allocate((4, 2), np.float32, "features")
    folder, = os.listdir(tmp_path)
    assert folder.startswith(f"tfhub_ft_cache-{os.getpid()}@")
    assert os.path.dirname(spilled.path) == str(tmp_path / folder)
    budget.close()
    assert os.listdir(tmp_path) == []
    budget.close()  # twice is harmless
    # A folder given to the budget is the caller's: close leaves it.
    given = arrays.ArrayBudget(0, directory=str(tmp_path / "mine"))
    given.allocate((4, 2), np.float32, "features")
    given.close()
    assert os.listdir(tmp_path / "mine") == ["001-features.bin"]


@pytest.mark.slow
def test_the_first_generator_dataset_of_a_process_logs_nothing(tmp_path):
    from tests import fixtures

    # TensorFlow's runtime logs "Memory patch applied" once per process, at
    # the first generator dataset iterated: a process of its own.
    code = ("import numpy as np\nfrom tfhub_ft import arrays\n"
            "source = arrays.BatchSource(np.zeros((4, 2, 2, 3), np.uint8), "
            "np.array([0, 1, 0, 1]), batch_size=2)\n"
            "for batch in source.dataset():\n    pass\nprint('iterated')\n")
    done = fixtures.run_python(code, tmp_path)
    assert done.stdout == "iterated\n", done.stderr
    assert "Memory patch applied" not in done.stderr

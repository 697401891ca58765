import os

import numpy as np
import pytest

from tfhub_ft import checks


def test_check_integer_returns_an_int_or_names_the_argument():
    assert checks.check_integer("batch_size", np.int64(8), 1) == 8
    assert type(checks.check_integer("batch_size", np.int64(8), 1)) is int
    assert checks.check_integer("seed", None, 0, optional=True) is None
    for value in (0, 1.0, True, "8"):
        with pytest.raises(ValueError, match=rf"^Invalid value for `batch_size`. Expected an "
                                             rf"integer >= 1. Received: batch_size="):
            checks.check_integer("batch_size", value, 1)
    with pytest.raises(ValueError) as error:
        checks.check_integer("unfreeze_blocks", 20, 0, 19, optional=True,
                             context=" (the backbone has 19 blocks)")
    assert str(error.value) == (
        "Invalid value for `unfreeze_blocks`. Expected an integer in [0, 19] or None (the "
        "backbone has 19 blocks). Received: unfreeze_blocks=20")


def test_check_positive_number():
    checks.check_positive_number("time_budget_s", 0.5)
    for value in (0, -1, True, "1", float("nan")):
        with pytest.raises(ValueError, match=r"^Invalid value for `time_budget_s`. Expected a "
                                             r"number > 0. Received: time_budget_s="):
            checks.check_positive_number("time_budget_s", value)


def test_is_url():
    for url in ("gs://bucket/run", "s3://b/k", "hdfs://host/p", "https://tfhub.dev/m/1"):
        assert checks.is_url(url)
    for path in ("runs/a", "/tmp/x", "C:\\runs", "gs:/bucket", "a:b"):
        assert not checks.is_url(path)


def test_is_within_resolves_links(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    assert checks.is_within(tmp_path / "a" / "b", tmp_path / "a")
    assert checks.is_within(tmp_path / "a", tmp_path / "a")
    assert checks.is_within(tmp_path / "link" / "new.csv", tmp_path / "a")
    assert not checks.is_within(tmp_path / "ab", tmp_path / "a")


def test_check_folder_path(tmp_path):
    (tmp_path / "file").write_text("x")
    assert checks.check_folder_path("work_dir", tmp_path / "new") == str(tmp_path / "new")
    assert checks.check_folder_path("work_dir", "gs://bucket/run") == "gs://bucket/run"
    with pytest.raises(ValueError, match=r"Received: work_dir='.*file', which is a file. "
                                         r"Choose another path or remove it."):
        checks.check_folder_path("work_dir", os.fspath(tmp_path / "file"))
    for value in ("", None, 3):
        with pytest.raises(TypeError, match=r"Invalid value for `work_dir`. Expected a folder "
                                            r"path."):
            checks.check_folder_path("work_dir", value)


def test_check_writable_folder_tries_the_nearest_existing_folder(tmp_path):
    checks.check_writable_folder("report_dir", tmp_path / "new" / "deeper")
    assert os.listdir(tmp_path) == []  # the trial folder is removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"Invalid value for `report_dir`. Cannot write "
                                         r"'.*file/deeper': Not a directory \('.*file'\). "
                                         r"Choose a folder you can write to."):
        checks.check_writable_folder("report_dir", tmp_path / "file" / "deeper")

import logging
import os
import re
import socket
import subprocess
import sys

from tfhub_ft import scratch


def ended_process_id():
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(ended.stdout)


def test_folders_of_ended_processes_on_this_host_are_removed_and_no_others(tmp_path, caplog):
    dead_pid = ended_process_id()
    host = socket.gethostname().replace("/", "_")
    names = {"dead": f"kind-{dead_pid}@{host}-abc123_x",
             "running": f"kind-{os.getpid()}@{host}-def456_y",
             "other host": f"kind-{dead_pid}@another-host.example-ghi789",
             "other kind": f"other-{dead_pid}@{host}-jkl012",
             "not ours": "kind-mine"}
    for name in names.values():
        (tmp_path / name).mkdir()
    (tmp_path / names["dead"] / "001-images.bin").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="tfhub_ft.scratch"):
        removed = scratch.remove_abandoned("kind", str(tmp_path), "the spill files of a run")
    assert removed == [str(tmp_path / names["dead"])]
    assert sorted(os.listdir(tmp_path)) == sorted(
        names[key] for key in ("running", "other host", "other kind", "not ours"))
    assert caplog.messages == [
        f"Removed {tmp_path / names['dead']}: the spill files of a run that process "
        f"{dead_pid} left when it ended without cleaning up"]
    assert scratch.remove_abandoned("kind", str(tmp_path / "missing")) == []


def test_made_folders_name_their_process(tmp_path):
    path = scratch.make_folder("kind", str(tmp_path))
    assert os.path.dirname(path) == str(tmp_path)
    assert re.fullmatch(rf"kind-{os.getpid()}@[^/]+-[^-@/]+", os.path.basename(path))
    # Its process is running: left alone.
    assert scratch.remove_abandoned("kind", str(tmp_path)) == []


def test_libraries_make_their_temporary_files_in_a_folder_of_their_own(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # One that a killed process left.
    left = tmp_path / f"tfhub_ft_tflite-{ended_process_id()}@{scratch._host()}-x1"
    left.mkdir()
    with scratch.temporary_folder_for_libraries("tfhub_ft_tflite", "a conversion's") as folder:
        assert os.path.dirname(folder) == str(tmp_path)
        assert os.path.dirname(tempfile.mkdtemp()) == folder
        assert not left.exists()
    assert tempfile.tempdir == str(tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_temporary_folder_set_meanwhile_is_not_undone(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch.temporary_folder_for_libraries("tfhub_ft_command", "a command's"):
        # Another thread's command points the process elsewhere meanwhile.
        tempfile.tempdir = str(tmp_path / "other")
    assert tempfile.tempdir == str(tmp_path / "other")

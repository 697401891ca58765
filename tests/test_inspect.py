import pytest

from tests import module_shapes
from tfhub_ft import inspect as inspect_lib
from tfhub_ft.backbone import HubBackbone


@pytest.mark.slow
def test_inspect_prints_blocks_sizes_order_and_split(tiny_backbone_path, capsys):
    assert inspect_lib.main([tiny_backbone_path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        f"Module: {tiny_backbone_path}",
        "Feature vector: 16 floats per image",
        "Input: float32 RGB in [0, 1], any size (default 224x224)",
        "Block order from: the module's call graph (the order it runs them in)",
    ]
    rows = [line.split() for line in lines[6:-1]]
    # TinyBackbone(widths=(4, 8, 8, 16)): 3x3 convs and 1x1 head, 4 BN values each.
    assert rows == [
        ["5", "stem", "124", "split:", "trains", "from", "cached", "activations"],
        ["4", "block_1", "320", "split:", "trains", "from", "cached", "activations"],
        ["3", "block_2", "608", "split:", "trains", "from", "cached", "activations"],
        ["2", "block_3", "1,216", "split:", "trains", "from", "cached", "activations"],
        ["1", "top", "320", "split:", "trains", "from", "cached", "activations"],
    ]
    assert lines[-1].split() == ["total", "2,588"]


@pytest.mark.slow
def test_inspect_marks_blocks_ordered_by_name(tmp_path):
    path, _ = module_shapes.slim_mobilenet(tmp_path / "slim", blocks=2)
    backbone = HubBackbone(path)
    backbone.blocks = [block.__class__(block.name, block.variable_indices,
                                       block.parameter_count,
                                       "names" if block.name == "expanded_conv_1" else "trace")
                       for block in backbone.blocks]
    lines = inspect_lib.describe_backbone(backbone, check_splits=False)
    assert "blocks marked * by name" in lines[3]
    assert any(line.split()[1] == "expanded_conv_1*" for line in lines[6:-1])
    assert [line.split()[1] for line in lines[6:-1]] == [
        "stem", "expanded_conv", "expanded_conv_1*", "expanded_conv_2", "top"]


def test_inspect_bad_handle_is_one_line_and_status_2(tmp_path, capsys):
    assert inspect_lib.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfhub_ft inspect: error: The hub handle") and err.count("\n") == 1


def test_inspect_takes_train_flags_for_the_module_and_its_blocks(tmp_path, capsys):
    path, _ = module_shapes.generic_layer_names(tmp_path / "generic")
    assert inspect_lib.main([f"--hub_url={path}", "--no_split_check",
                             r"--block_pattern=^(?:conv2d|batch_normalization)(_\d+)?/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Module: {path}"
    assert [line.split()[1] for line in lines[6:-1]] == ["_1", "_2", "_3"]


def test_inspect_wants_the_module_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        inspect_lib.main([])
    assert exit_info.value.code == 2
    assert "no module given: pass its handle, as HANDLE or as --hub_url=HANDLE" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        inspect_lib.main(["a", "--hub_url=b"])
    assert "the module is given twice" in capsys.readouterr().err


def test_inspect_checks_the_top_blocks_only_up_to_its_limit(tiny_backbone_path, monkeypatch,
                                                              caplog):
    monkeypatch.setattr(inspect_lib, "MAX_SPLIT_CHECKS", 2)
    with caplog.at_level("INFO", logger="tfhub_ft"):
        lines = inspect_lib.describe_backbone(HubBackbone(tiny_backbone_path))
    assert [line.split()[2:] for line in lines[6:-1]] == [
        ["124", "not", "checked"], ["320", "not", "checked"], ["608", "not", "checked"],
        ["1,216", "split:", "trains", "from", "cached", "activations"],
        ["320", "split:", "trains", "from", "cached", "activations"]]
    assert "Checking the split below each of the top 2 of the 5 blocks" in caplog.text

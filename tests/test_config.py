import pytest

from tfhub_ft import FineTuneConfig


def test_defaults_are_valid_and_replace_checks_names():
    config = FineTuneConfig()
    assert config.replace(unfreeze_blocks=2).unfreeze_blocks == 2
    with pytest.raises(TypeError, match="Unknown fine-tuning option"):
        config.replace(unfreeze=2)


def test_augmentation_accepts_comma_string():
    assert FineTuneConfig(augmentation="flip").augmentation == ("flip",)
    assert FineTuneConfig(augmentation="").augmentation == ()
    # A list becomes the tuple: the frozen config stays hashable and equal.
    listed = FineTuneConfig(augmentation=["flip"])
    assert listed == FineTuneConfig(augmentation=("flip",)) and hash(listed)
    with pytest.raises(ValueError, match=r"Expected names from \('flip',\): a tuple, a list "
                                         r"or a comma-separated string\. Received: "
                                         r"augmentation=1\. "):
        FineTuneConfig(augmentation=1)


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 4}, r"Invalid value for `image_size`. Expected an integer >= 8 or None. Received: image_size=4"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"head_epochs": 1.5}, "head_epochs=1.5"),
    ({"unfreeze_blocks": -1}, "unfreeze_blocks=-1"),
    ({"head_learning_rate": 0}, r"Expected a number > 0"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0"),
    ({"dropout_rate": -0.1}, r"dropout_rate=-0.1"),
    ({"validation_split": 1.0}, r"validation_split=1.0"),
    ({"augmentation": ("rotate",)}, r"Expected names from \('flip',\)"),
    ({"on_bad_image": "ignore"}, r"Expected one of \('skip', 'error'\). Received: on_bad_image='ignore'"),
    ({"max_image_pixels": 0}, r"max_image_pixels=0"),
    ({"exif_orientation": "yes"}, r"Expected True or False. Received: exif_orientation='yes'"),
    ({"class_weight": "auto"}, r"Expected one of \('none', 'balanced'\)"),
    ({"input_range": (255, 0)}, r"Expected \(low, high\) with low < high.*input_range=\(255, 0\)"),
    ({"input_range": "0"}, r"input_range='0'"),
    ({"near_duplicate_threshold": 0}, r"Expected a cosine similarity in \(0, 1\]"),
    ({"drop_near_duplicates": 1}, r"drop_near_duplicates=1"),
    ({"time_budget_s": 0}, r"Invalid value for `time_budget_s`. Expected a number of seconds "
                           r"> 0, or None for no budget. Received: time_budget_s=0$"),
    ({"time_budget_s": -5.0}, r"time_budget_s=-5.0"),
    ({"time_budget_s": "90"}, r"time_budget_s='90'"),
    ({"time_budget_s": True}, r"time_budget_s=True"),
    ({"time_budget_s": float("nan")}, r"time_budget_s=nan"),
    ({"time_budget_s": float("inf")}, r"time_budget_s=inf"),
])
def test_invalid_values_name_the_option(changes, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**changes)


def test_input_range_accepts_pairs_and_flag_strings():
    assert FineTuneConfig(input_range=(0, 255)).input_range == (0.0, 255.0)
    assert FineTuneConfig(input_range="-1,1").input_range == (-1.0, 1.0)
    assert FineTuneConfig(input_range=["0", "255"]).input_range == (0.0, 255.0)


def test_presets_are_changes_to_the_defaults():
    from tfhub_ft.config import PRESETS
    assert FineTuneConfig.from_preset("default") == FineTuneConfig()
    assert FineTuneConfig.thorough() == FineTuneConfig().replace(**PRESETS["thorough"])
    assert FineTuneConfig.thorough(seed=3).seed == 3
    with pytest.raises(ValueError, match=r"Invalid value for `preset`. Expected one of "
                                         r"\['default', 'thorough'\]. Received: preset='x'"):
        FineTuneConfig.from_preset("x")
    with pytest.raises(TypeError, match="Unknown fine-tuning option"):
        FineTuneConfig.thorough(epochs=3)


@pytest.mark.parametrize("value", [0, 1.5, -0.1, True, "0.8"])
def test_layer_decay_is_checked(value):
    with pytest.raises(ValueError, match=r"Invalid value for `layer_decay`. Expected a factor "
                                         r"in \(0, 1\]"):
        FineTuneConfig(layer_decay=value)


def test_choose_image_size_from_the_shorter_sides():
    from tfhub_ft.config import choose_image_size
    assert choose_image_size([32] * 5) == 160
    assert choose_image_size([32, 32, 500, 500, 500]) == 224
    assert choose_image_size([111, 111, 112]) == 160
    assert choose_image_size([112, 112, 50]) == 224
    assert choose_image_size([]) == 224
    assert choose_image_size([0, 0]) == 224


def test_time_budget_is_seconds_or_none():
    assert FineTuneConfig().time_budget_s is None
    assert FineTuneConfig(time_budget_s=90).time_budget_s == 90
    assert FineTuneConfig(time_budget_s=0.5).time_budget_s == 0.5


def test_cache_dir(monkeypatch, tmp_path):
    from tfhub_ft.config import cache_dir
    monkeypatch.setenv("TFHUB_FT_CACHE_DIR", str(tmp_path))
    assert cache_dir() == str(tmp_path)
    monkeypatch.setenv("TFHUB_FT_CACHE_DIR", "")
    assert cache_dir() is None
    monkeypatch.delenv("TFHUB_FT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "tfhub_ft")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "tfhub_ft")
    monkeypatch.setenv("TFHUB_FT_CACHE_DIR", "~/mine")
    assert cache_dir() == str(tmp_path / "home" / "mine")

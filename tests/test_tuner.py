import logging
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuneConfig, FineTuner


@pytest.mark.slow
def test_fit_with_validation_split_evaluate_and_predict(tiny_backbone_path, image_folders,
                                                        small_config, tmp_path):
    train, validation, _, names = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    history = tuner.fit(train, validation_split=0.25, verbose=0)
    assert set(history) == {"head", "fine_tune"}
    assert set(history["head"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert tuner.class_names == sorted(names)
    assert tuner.validation_metrics["count"] == 12  # 25% of 16 per class, 3 classes
    metrics = tuner.evaluate(validation)
    assert metrics["count"] == 12 and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    # A folder of one of the classes is scored too.
    shutil.copytree(os.path.join(validation, sorted(names)[1]),
                    tmp_path / "one" / sorted(names)[1])
    assert tuner.evaluate(str(tmp_path / "one"))["count"] == len(
        os.listdir(tmp_path / "one" / sorted(names)[1]))
    probabilities = tuner.predict(np.zeros((3, 40, 20, 3), np.uint8))
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    # One image is a batch of one; other shapes are explained.
    np.testing.assert_allclose(tuner.predict(np.zeros((40, 20, 3), np.uint8)),
                               probabilities[:1], rtol=1e-6)
    with pytest.raises(ValueError, match=r"Expected images \[N, H, W, C\].*\(40, 20\)"):
        tuner.predict(np.zeros((40, 20), np.uint8))
    # Gray and RGBA images are composited as training images are: opaque
    # white is white RGB.
    white = tuner.predict(np.full((1, 40, 20, 3), 255, np.uint8))
    np.testing.assert_allclose(tuner.predict(np.full((1, 40, 20, 1), 1.0, np.float32)),
                               white, rtol=1e-6)
    np.testing.assert_allclose(tuner.predict(np.zeros((1, 40, 20, 4), np.uint8)), white,
                               rtol=1e-6)  # fully transparent: the white background
    for images, error, message in (
            ("photo.jpg", TypeError, "Received: the path 'photo.jpg'. For image files use "
                                     "the export: `tfhub_ft.predict.predict_files"),
            (["a.jpg", "b.jpg"], TypeError, "Received: a list of paths."),
            (np.array(["a.jpg", "b.jpg"]), TypeError, "Received: an array of <U5 (paths?)."),
            (np.zeros((2, 8, 8, 3), bool), TypeError, "Received: images of dtype bool."),
            (np.full((2, 8, 8, 3), np.nan, np.float32), ValueError,
             "Expected float values in [0, 1]. Received: 384 NaN or infinite value(s).")):
        with pytest.raises(error, match=re.escape(message)):
            tuner.predict(images)
    with pytest.raises(ValueError, match="Invalid value for `batch_size`"):
        tuner.predict(np.zeros((2, 8, 8, 3), np.uint8), batch_size=0)
    # Images of mixed sizes in a list; no image; 0-255 floats.
    mixed = tuner.predict([np.zeros((40, 20, 3), np.uint8), np.zeros((12, 30, 3), np.uint8)])
    np.testing.assert_allclose(mixed[0], probabilities[0], rtol=1e-6)
    np.testing.assert_allclose(mixed[1], tuner.predict(np.zeros((12, 30, 3), np.uint8))[0],
                               rtol=1e-6)
    assert tuner.predict(np.zeros((0, 40, 20, 3), np.uint8)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"Expected uint8 in \[0, 255\] or float in \[0, 1\]"
                                         r"\. Received: float32 values from 0 to 255\."):
        tuner.predict((np.full((40, 20, 3), 255) * np.eye(40, 20)[..., None]).astype(np.float32))


@pytest.mark.slow
def test_validation_scored_from_the_cache_equals_the_whole_model(
        tiny_backbone_path, image_folders, small_config, caplog):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        tuner.fit(train, validation, verbose=0)
    # Phase 2 ran, on a split backbone.
    assert tuner.unfrozen_blocks
    assert not [r for r in caplog.records if "Not splitting" in r.getMessage()]
    # fit scores the validation images from the cached boundary tensors;
    # evaluate runs them through the whole classifier.
    metrics = tuner.evaluate(validation)
    assert metrics["count"] == tuner.validation_metrics["count"] == 12
    assert metrics["accuracy"] == tuner.validation_metrics["accuracy"]
    np.testing.assert_allclose(metrics["loss"], tuner.validation_metrics["loss"], rtol=1e-5)


@pytest.mark.slow
def test_fit_on_tf_data_dataset(tiny_backbone_path, small_config):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 24, 24, 3), dtype=np.uint8)
    labels = np.arange(20) % 2
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    tuner.fit(dataset, validation=dataset.take(6), class_names=["cat", "dog"], verbose=0)
    assert tuner.class_names == ["cat", "dog"]
    assert tuner.validation_metrics["count"] == 6


@pytest.mark.slow
def test_same_seed_repeats(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    results = []
    for _ in range(2):
        tuner = FineTuner(tiny_backbone_path, config=small_config.replace(fine_tune_epochs=0))
        results.append(tuner.fit(train, validation, verbose=0)["head"]["val_loss"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


@pytest.mark.slow
def test_a_second_fit_starts_from_the_pretrained_backbone_and_leaves_no_spill_files(
        tiny_backbone_path, image_folders, small_config, tmp_path, monkeypatch, caplog):
    import logging
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(cache_memory_mb=0))
    first = tuner.fit(train, validation, verbose=0)
    # What phase 2 does to the backbone, made certain: every variable moved.
    for variable in tuner.backbone.weights:
        variable.assign(variable.numpy() + 0.5)
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        second = tuner.fit(train, validation, verbose=0)
    assert "starts again from the pretrained weights" in caplog.text
    for phase in ("head", "fine_tune"):
        np.testing.assert_allclose(first[phase]["val_loss"], second[phase]["val_loss"],
                                   rtol=1e-6)
    # Every array went to a spill file (0 MB budget); none outlives its fit.
    assert "over the 0 MB memory budget" in caplog.text
    assert not [name for name in os.listdir(tmp_path) if name.startswith("tfhub_ft_cache")]


@pytest.mark.slow
def test_a_refused_fit_leaves_the_earlier_model_and_a_stopped_one_leaves_none(
        tiny_backbone_path, image_folders, small_config, tmp_path):
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    tuner.fit(train, validation, verbose=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    before = tuner.predict(images)
    metrics, image_size = dict(tuner.validation_metrics), tuner.image_size
    stages = dict(tuner.stage_seconds)
    # Refused with a mistyped path, and after the training images were
    # decoded (validation labels past the classes): nothing of the earlier
    # run moves.
    wrong_labels = tf.data.Dataset.from_tensor_slices((images, np.full(4, 7)))
    for refused in ((str(tmp_path / "trian"), validation), (train, wrong_labels)):
        with pytest.raises(ValueError):
            tuner.fit(*refused, verbose=0)
        np.testing.assert_array_equal(tuner.predict(images), before)
        assert tuner.validation_metrics == metrics and tuner.image_size == image_size
        assert tuner.stage_seconds == stages and tuner.time_plan is None

    # Outputs inside the fit's image folders would be class folders next time.
    with pytest.raises(ValueError, match=re.escape(
            "Invalid value for `export_dir`. Expected a folder outside the training folder "
            "of the last `fit`: inside it, the next run on that folder would read it as a "
            f"class folder. Received: export_dir={os.path.join(train, 'export')!r}, inside "
            f"the training folder of the last `fit` ({os.path.realpath(train)!r}). Choose "
            "a folder beside it.")):
        tuner.export(os.path.join(train, "export"))
    with pytest.raises(ValueError, match="`report_dir`. Expected a folder outside the "
                                         "validation folder"):
        tuner.report(os.path.join(validation, "report"))
    with pytest.raises(ValueError, match="`work_dir`. Expected a folder outside the "
                                         "training folder: "):
        tuner.fit(train, validation, work_dir=os.path.join(train, "work"))
    assert not os.path.exists(os.path.join(train, "export"))

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tuner.fit(train, validation, verbose=0, callbacks=[Stop()])
    assert tuner.model is None and tuner.validation_metrics is None
    with pytest.raises(ValueError, match=r"^The classifier is not trained: the last `fit` "
                                         r"stopped before it finished\. Call `fit` again"):
        tuner.export(str(tmp_path / "export"))
    with pytest.raises(ValueError, match="the last `fit` stopped before it finished"):
        tuner.export_backbone(str(tmp_path / "backbone"))


def test_a_strategy_by_name_is_pointed_to_get_strategy(tiny_backbone_path):
    with pytest.raises(TypeError, match=re.escape(
            "Invalid value for `strategy`. Expected a tf.distribute.Strategy or None. "
            "Received: strategy='mirrored'. Pass `tfhub_ft.get_strategy('mirrored')`.")):
        FineTuner(tiny_backbone_path, strategy="mirrored")


def test_a_validation_folder_of_one_class_is_loaded_with_a_warning(
        tiny_backbone_path, image_folders, small_config, tmp_path, caplog):
    train, validation, _, names = image_folders
    one = sorted(names)[0]
    shutil.copytree(os.path.join(validation, one), tmp_path / "validation" / one)
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    _, validation_set = tuner.load_data(train, str(tmp_path / "validation"))
    assert set(validation_set.labels.tolist()) == {0} and len(validation_set) > 0
    assert "No validation image for class(es)" in caplog.text


def test_class_names_for_a_folder_are_ignored_with_a_warning(tiny_backbone_path,
                                                              image_folders, small_config,
                                                              caplog):
    train, validation, _, names = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    train_set, _ = tuner.load_data(train, validation, class_names=["x", "y", "z"])
    assert train_set.class_names == sorted(names)
    assert ("`class_names` is for a tf.data.Dataset source, and is ignored here: a folder's "
            "classes are its subfolder names") in caplog.text


def test_validation_split_is_checked_as_the_config_checks_it(tiny_backbone_path):
    tuner = FineTuner(tiny_backbone_path)
    for fraction in (0, 2, -0.5):
        with pytest.raises(ValueError, match=re.escape(
                "Invalid value for `validation_split`. Expected a fraction in (0, 1). "
                f"Received: validation_split={fraction!r}")):
            tuner.fit("no/such/folder", validation_split=fraction)


def test_a_run_that_trains_nothing_is_warned_about(tiny_backbone_path, caplog):
    tuner = FineTuner(tiny_backbone_path, head_epochs=0, fine_tune_epochs=0)
    with pytest.raises(ValueError):  # the warning comes before the data is read
        tuner.fit("no/such/folder")
    assert ("head_epochs=0 and fine_tune_epochs=0: nothing will be trained. The head keeps "
            "its random start, so the classifier is no better than chance. Set "
            f"head_epochs={FineTuneConfig().head_epochs}") in caplog.text


@pytest.mark.slow
def test_decode_seconds_count_only_what_fit_decoded(tiny_backbone_path, image_folders,
                                                    small_config, caplog):
    train, validation, _, _ = image_folders
    config = small_config.replace(fine_tune_epochs=0)
    tuner = FineTuner(tiny_backbone_path, config=config)
    train_set, validation_set = tuner.load_data(train, validation)
    assert train_set.decode_seconds > 0
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        tuner.fit(train_set, validation_set, verbose=0)
    assert tuner.stage_seconds["decode"] == 0.0
    assert tuner.stage_seconds["load"] >= 0.0
    # A stage that did nothing says so, not "done in 0.0 s".
    assert "Stage fine_tune skipped (fine_tune_epochs=0)" in caplog.messages
    assert any(m.startswith("Stage head done in ") for m in caplog.messages)


@pytest.mark.slow
def test_fit_says_once_when_tensorflow_memory_is_not_pooled(
        tiny_backbone_path, image_folders, small_config, caplog, monkeypatch):
    from tfhub_ft import cpu_memory
    monkeypatch.setattr(cpu_memory, "_noted", False)
    monkeypatch.setattr(cpu_memory, "is_pooled", lambda: False)
    monkeypatch.setenv(cpu_memory.POOLING_VARIABLE, "true")
    train, validation, _, _ = image_folders
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        head_epochs=1, fine_tune_epochs=0))
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        tuner.fit(train, validation, verbose=0)
        tuner.fit(train, validation, verbose=0)
    notes = [r for r in caplog.records
             if r.getMessage().startswith("TensorFlow's CPU memory is not pooled")]
    assert [r.levelname for r in notes] == ["WARNING"]


def test_options_and_config_are_checked(tiny_backbone_path):
    assert FineTuner(tiny_backbone_path, unfreeze_blocks=1).config.unfreeze_blocks == 1
    with pytest.raises(TypeError, match="Unknown fine-tuning option"):
        FineTuner(tiny_backbone_path, unfreze_blocks=1)
    with pytest.raises(TypeError, match="Expected a FineTuneConfig"):
        FineTuner(tiny_backbone_path, config={"batch_size": 2})
    with pytest.raises(ValueError, match="call `fit` first"):
        FineTuner(tiny_backbone_path).evaluate("x")


def test_image_size_default_and_override(tiny_backbone_path):
    assert FineTuner(tiny_backbone_path).image_size == 224
    assert FineTuner(tiny_backbone_path, image_size=48).image_size == 48


def test_small_training_images_choose_the_small_image_size(tiny_backbone_path, image_folders,
                                                           caplog):
    train, validation, _, _ = image_folders  # 32 x 32 images
    tuner = FineTuner(tiny_backbone_path)
    with caplog.at_level("INFO", logger="tfhub_ft"):
        train_set, validation_set = tuner.load_data(train, validation)
    assert tuner.image_size == 160
    assert train_set.images.shape[1:] == validation_set.images.shape[1:] == (160, 160, 3)
    assert "Image size 160: the median training image's shorter side is 32 px" in caplog.text
    tuner = FineTuner(tiny_backbone_path, image_size=48)
    assert tuner.load_data(train, validation)[0].images.shape[1] == 48
    assert tuner.image_size == 48


def test_a_dataset_of_small_images_chooses_the_small_image_size(tiny_backbone_path, caplog):
    images = np.zeros((4, 40, 48, 3), np.uint8)
    small = tf.data.Dataset.from_tensor_slices((images, [0, 1, 0, 1]))
    tuner = FineTuner(tiny_backbone_path)
    with caplog.at_level("INFO", logger="tfhub_ft"):
        tuner.load_data(small, small)
    assert tuner.image_size == 160
    assert ("Image size 160: the dataset's images are 48 x 40 px, shorter side under 112 px"
            in caplog.text)
    # Images of no fixed size (a ragged source): the default size.
    ragged = tf.data.Dataset.from_generator(
        lambda: ((np.zeros((40 + i, 40, 3), np.uint8), i % 2) for i in range(4)),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                          tf.TensorSpec([], tf.int64)))
    tuner = FineTuner(tiny_backbone_path)
    tuner.load_data(ragged, ragged)
    assert tuner.image_size == 224


@pytest.mark.slow
def test_validation_classes_must_match(tiny_backbone_path, image_folders, tmp_path, small_config):
    from tests import fixtures
    from tfhub_ft.demo import shapes
    train, _, _, _ = image_folders
    images, labels, _ = shapes.make_shape_images(2, 2, 32, task="target")
    fixtures.write_image_folder(str(tmp_path), images, labels, ["alien", "other"])
    with pytest.raises(ValueError, match=r"validation data has class\(es\) \['alien', 'other'\]"):
        FineTuner(tiny_backbone_path, config=small_config).fit(train, str(tmp_path), verbose=0)


@pytest.mark.slow
def test_fit_under_a_mirrored_strategy(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = FineTuner(tiny_backbone_path, config=small_config, strategy=strategy)
    tuner.fit(train, validation, verbose=0)
    assert tuner.validation_metrics["count"] == 12


@pytest.mark.slow
def test_spilling_to_disk_gives_the_same_model(tiny_backbone_path, image_folders, small_config):
    train, validation, _, _ = image_folders
    results = []
    for megabytes in (4096, 0):
        tuner = FineTuner(tiny_backbone_path, config=small_config.replace(cache_memory_mb=megabytes))
        tuner.fit(train, validation, verbose=0)
        results.append((tuner.validation_metrics["loss"], tuner.model.head.kernel.numpy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


# Issue 10: the tuner's budget reaches TFDS and tf.data sources too.
def test_load_data_streams_tfds_and_tf_data_into_the_budget(tiny_backbone_path, tmp_path,
                                                            small_config, monkeypatch):
    import tensorflow_datasets as tfds

    from tfhub_ft import arrays
    from tests.test_data import _FLOWERS, _record_tfds_loads
    calls = _record_tfds_loads(monkeypatch)
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    budget = arrays.ArrayBudget(0, directory=str(tmp_path / "spill"))
    with tfds.testing.mock_data(num_examples=20):
        train_set, validation_set = tuner.load_data(
            "tf_flowers", validation="train[80%:]", data_dir=str(tmp_path / "tfds"),
            budget=budget)
    assert train_set.class_names == _FLOWERS
    assert isinstance(train_set.images, arrays.FileArray)
    assert isinstance(validation_set.images, arrays.FileArray)
    assert train_set.images.shape[1:] == (32, 32, 3) and len(validation_set) > 0
    assert [(kwargs["split"], kwargs["data_dir"]) for _, kwargs in calls] == [
        ("train", str(tmp_path / "tfds")), ("train[80%:]", str(tmp_path / "tfds"))]
    images = np.random.default_rng(0).integers(0, 256, (20, 24, 24, 3), dtype=np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(20) % 2))
    spilled = budget.spilled_bytes
    train_set, validation_set = tuner.load_data(dataset.filter(lambda i, l: True),
                                                validation=dataset.take(6), budget=budget)
    assert isinstance(train_set.images, arrays.FileArray) and len(validation_set) == 6
    assert budget.spilled_bytes - spilled == 26 * 32 * 32 * 3 and budget.used_bytes == 0


@pytest.mark.slow
def test_fit_on_a_tfds_dataset(tiny_backbone_path, tmp_path, small_config):
    import tensorflow_datasets as tfds

    from tests.test_data import _FLOWERS
    tuner = FineTuner(tiny_backbone_path, config=small_config.replace(
        cache_memory_mb=0, fine_tune_epochs=1))
    with tfds.testing.mock_data(num_examples=30):
        tuner.fit("tf_flowers", data_dir=str(tmp_path), verbose=0)
    assert tuner.class_names == _FLOWERS
    assert tuner.cache_usage["spilled_bytes"] > 0 and tuner.cache_usage["memory_bytes"] == 0
    assert tuner.validation_metrics["count"] > 0


def test_more_blocks_than_the_backbone_has_trains_them_all(tiny_backbone_path, caplog):
    with caplog.at_level("WARNING"):
        tuner = FineTuner(tiny_backbone_path, unfreeze_blocks=50)
    assert tuner.config.unfreeze_blocks == 5
    assert "fine-tuning all of them" in caplog.text


def _write_folder(root, counts, seed=0, size=24):
    """Class folders of solid-colour-with-noise PNGs: {class: count}."""
    from tests import photos
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            image = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (size, size, 3)),
                            0, 255).astype(np.uint8)
            with open(os.path.join(root, name, f"{i:03d}.png"), "wb") as f:
                f.write(photos.encode(image, "PNG"))
    return str(root)


# Issue 9, kind 7: a split too small to mean anything stops before building.
@pytest.mark.slow
def test_tiny_splits_fail_before_building(tiny_backbone_path, tmp_path, small_config, caplog):
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    folder = _write_folder(tmp_path / "one_each", {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="need at least 2 images per class for a "
                                         "validation split, or pass validation data"):
        tuner.fit(folder, validation_split=0.2, verbose=0)
    assert tuner.model is None
    folder = _write_folder(tmp_path / "lopsided", {"a": 1, "b": 20})
    with caplog.at_level("WARNING"):
        _, validation = tuner.load_data(folder, validation_split=0.2)
    assert validation.labels.tolist() == [1] * 4
    assert "No validation image for class(es) 'a' (1 image(s))" in caplog.text


def test_labels_with_a_gap_and_two_validation_sources_are_refused(tiny_backbone_path):
    tuner = FineTuner(tiny_backbone_path)
    images = np.zeros((6, 8, 8, 3), np.uint8)
    starting_at_one = tf.data.Dataset.from_tensor_slices((images, np.array([1, 2, 3] * 2)))
    with pytest.raises(ValueError, match=r"Class\(es\) \['0'\] have no training image "
                                         r"\(4 classes: \['0', '1', '2', '3'\]\)\. The "
                                         r"labels are class indices 0, 1, \.\.\.; these run "
                                         r"from 1 to 3 \(3 distinct\), so 4 classes were "
                                         r"made\. Map the labels to 0 \.\.\. C-1"):
        tuner.load_data(starting_at_one)
    with pytest.raises(ValueError, match=r"`validation` and `validation_split` both given.*"
                                         r"Received: validation_split=0.3"):
        tuner.load_data(starting_at_one, starting_at_one, validation_split=0.3)


# Issue 9, kind 4: bad files are kept on the tuner; strict mode stops.
@pytest.mark.slow
def test_skipped_files_on_the_tuner_and_strict_mode(tiny_backbone_path, tmp_path, small_config):
    folder = _write_folder(tmp_path / "data", {"a": 3, "b": 3})
    open(os.path.join(folder, "a", "x.jpg"), "wb").close()
    tuner = FineTuner(tiny_backbone_path, config=small_config)
    tuner.load_data(folder, validation_split=0.34)
    bad = os.path.join(folder, "a", "x.jpg")
    assert tuner.skipped_files == [bad]
    assert tuner.skip_reasons == {bad: "empty (0 bytes)"}
    strict = FineTuner(tiny_backbone_path, config=small_config, on_bad_image="error")
    with pytest.raises(ValueError, match=r"(?s)1 file\(s\).*x.jpg: empty \(0 bytes\)"):
        strict.fit(folder, verbose=0)
    assert strict.model is None


# Issue 9, kind 10: both phases train with the balanced loss.
@pytest.mark.slow
def test_balanced_class_weight_in_both_phases(tiny_backbone_path, tmp_path, small_config,
                                              monkeypatch, caplog):
    from tfhub_ft import recipe
    losses = []
    original = recipe.classification_loss

    def recording(config, labels=None, num_classes=None):
        losses.append(original(config, labels, num_classes))
        return losses[-1]

    monkeypatch.setattr(recipe, "classification_loss", recording)
    folder = _write_folder(tmp_path / "data", {"shirt": 10, "skirt": 2})
    tuner = FineTuner(tiny_backbone_path, config=small_config, class_weight="balanced")
    with caplog.at_level("WARNING"):
        tuner.fit(folder, validation=folder, verbose=0)
    assert "Imbalanced classes: 'shirt' has 10 training images, 5.0x the 2 of 'skirt'" \
        in caplog.text
    assert len(losses) == 2
    for loss in losses:
        assert isinstance(loss, recipe.WeightedCategoricalCrossentropy)
        np.testing.assert_allclose(loss.class_weights, [12 / 20, 12 / 4])


# Issue 9, kind 11: validation images that are nearly training images.
@pytest.mark.slow
def test_near_duplicate_validation_images(tiny_backbone_path, tmp_path, small_config, caplog):
    import shutil
    train = _write_folder(tmp_path / "train", {"a": 6, "b": 6}, seed=1)
    validation = _write_folder(tmp_path / "validation", {"a": 3, "b": 3}, seed=2)
    for name in ("a", "b"):
        shutil.copy(os.path.join(train, name, "000.png"),
                    os.path.join(validation, name, "copy.png"))
    config = small_config.replace(fine_tune_epochs=0, near_duplicate_threshold=0.99999)
    tuner = FineTuner(tiny_backbone_path, config=config)
    with caplog.at_level("WARNING"):
        tuner.fit(train, validation, verbose=0)
    pairs = sorted((os.path.relpath(v, validation), os.path.relpath(t, train))
                   for v, t, _ in tuner.near_duplicates)
    assert pairs == [("a/copy.png", "a/000.png"), ("b/copy.png", "b/000.png")]
    assert all(s > 0.99999 for _, _, s in tuner.near_duplicates)
    assert "2 of 8 validation image(s) are near-duplicates" in caplog.text
    assert tuner.validation_metrics["count"] == 8
    dropping = FineTuner(tiny_backbone_path, config=config.replace(drop_near_duplicates=True))
    dropping.fit(train, validation, verbose=0)
    assert dropping.validation_metrics["count"] == 6

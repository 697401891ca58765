import logging
import os
import shutil
import re
import socket
import stat

import numpy as np
import pytest
import tensorflow as tf

from tfhub_ft import FineTuner, export, read_labels


@pytest.fixture(scope="module")
def trained(tiny_backbone_path, image_folders):
    from tfhub_ft import FineTuneConfig
    train, validation, _, names = image_folders
    tuner = FineTuner(tiny_backbone_path, config=FineTuneConfig(
        image_size=32, batch_size=8, head_epochs=1, fine_tune_epochs=1))
    tuner.fit(train, validation, verbose=0)
    return tuner


def encoded_images(count, size, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return images, [tf.io.encode_png(image).numpy() for image in images]


@pytest.mark.slow
def test_round_trip_with_plain_tensorflow(trained, tmp_path):
    path = trained.export(str(tmp_path / "model"))
    assert read_labels(path) == trained.class_names
    loaded = tf.saved_model.load(path)
    images, encoded = encoded_images(5, 32)
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    expected = trained.predict(images)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs["class_ids"].numpy(), expected.argmax(-1))
    assert [c.decode() for c in outputs["classes"].numpy()] == [
        trained.class_names[i] for i in expected.argmax(-1)]
    floats = loaded.signatures["serving_images"](images=tf.constant(images / 255.0, tf.float32))
    np.testing.assert_allclose(floats["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_serving_resizes_any_size_and_format(trained, tmp_path):
    path = trained.export(str(tmp_path / "model"))
    loaded = tf.saved_model.load(path)
    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    encoded = [tf.io.encode_jpeg(image).numpy(), tf.io.encode_png(image).numpy()]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    assert outputs["probabilities"].shape == (2, len(trained.class_names))
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_failed_export_keeps_the_earlier_one(trained, tmp_path, monkeypatch):
    path = trained.export(str(tmp_path / "model"))
    before = sorted(os.listdir(path))

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        trained.export(path)
    assert sorted(os.listdir(path)) == before
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging left behind
    tf.saved_model.load(path)


def test_staging_folders_of_killed_exports_are_removed(tmp_path, caplog):
    from tests.test_scratch import ended_process_id
    dead_pid = ended_process_id()
    host = socket.gethostname().replace("/", "_")
    (tmp_path / f".export-{dead_pid}@{host}-abc123_x").mkdir()
    (tmp_path / f".export-{os.getpid()}@{host}-def456_y").mkdir()
    # atomic_folder names its staging folder so that a later export can
    # tell, and removes what a killed export left first.
    with caplog.at_level(logging.INFO, logger="tfhub_ft"):
        with export.atomic_folder(str(tmp_path / "model"), "the export") as staging:
            assert re.match(rf"\.export-{os.getpid()}@", os.path.basename(staging))
            assert sorted(os.listdir(tmp_path)) == sorted(
                [f".export-{os.getpid()}@{host}-def456_y", os.path.basename(staging)])
    assert f"the staging folder of an export that process {dead_pid} left" in caplog.text


@pytest.mark.slow
def test_export_replaces_an_earlier_export_with_a_warning(trained, tmp_path, caplog):
    path = str(tmp_path / "model")
    trained.export(path)
    open(os.path.join(path, "stale.txt"), "w").close()
    # Readable by others as the umask allows, not private like mkdtemp.
    umask = os.umask(0o027)
    try:
        with caplog.at_level(logging.WARNING, logger="tfhub_ft"):
            trained.export(path)
    finally:
        os.umask(umask)
    assert "stale.txt" not in os.listdir(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert f"Replacing the earlier export at {path} (its files go with it)." in caplog.messages
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750


def _folders(root, entries):
    for folder, names in entries.items():
        os.makedirs(os.path.join(root, folder))
        for name in names:
            open(os.path.join(root, folder, name), "w").close()


@pytest.mark.parametrize("exchange", [True, False], ids=["swapped", "renamed-aside"])
def test_an_earlier_folder_is_replaced_whole(tmp_path, monkeypatch, exchange):
    swapped = []
    if exchange:
        real = export._exchange

        def exchange_and_record(*paths):
            swapped.append(real(*paths))
            return swapped[-1]
        monkeypatch.setattr(export, "_exchange", exchange_and_record)
    else:
        monkeypatch.setattr(export, "_exchange", lambda first, second: False)
    _folders(tmp_path, {"staging": ["new.pb"], "model": ["old.pb"]})
    export._replace_folder(str(tmp_path / "staging"), str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert os.listdir(tmp_path / "model") == ["new.pb"]
    assert swapped == ([True] if exchange else [])


@pytest.mark.parametrize("exchange", [True, False], ids=["swapped", "renamed-aside"])
def test_an_earlier_folder_removed_before_the_swap_is_not_missed(tmp_path, monkeypatch,
                                                                 exchange):
    real = export._exchange

    def removed_first(first, second):
        # Another process removes the old export between the check and the swap.
        shutil.rmtree(second)
        return real(first, second) if exchange else False
    monkeypatch.setattr(export, "_exchange", removed_first)
    _folders(tmp_path, {"staging": ["new.pb"], "model": ["old.pb"]})
    export._replace_folder(str(tmp_path / "staging"), str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert os.listdir(tmp_path / "model") == ["new.pb"]


def test_a_kill_after_the_swap_leaves_the_new_export_and_a_sweepable_old_one(
        tmp_path, monkeypatch):
    staging = export.scratch.make_folder(export.STAGING_KIND, str(tmp_path))
    _folders(tmp_path, {"model": ["old.pb"]})
    open(os.path.join(staging, "new.pb"), "w").close()
    # Killed after the swap, before the old export (now in the staging
    # folder) was removed.
    monkeypatch.setattr(export.shutil, "rmtree", lambda path, ignore_errors=False: None)
    export._replace_folder(staging, str(tmp_path / "model"))
    monkeypatch.undo()
    assert os.listdir(tmp_path / "model") == ["new.pb"]
    assert os.listdir(staging) == ["old.pb"]
    monkeypatch.setattr(export.scratch, "_process_exists", lambda pid: False)
    assert export.remove_abandoned_staging(str(tmp_path)) == [staging]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_folder_inside_an_export_is_refused(tmp_path):
    _folders(tmp_path, {"model": ["saved_model.pb", "labels.txt"]})
    inside = str(tmp_path / "model" / "more" / "sub")
    with pytest.raises(ValueError, match=(
            rf"Received: export_dir='{inside}', inside the export at '{tmp_path}/model', "
            r"which deletes it when that export is written again\. Choose a folder beside")):
        export.check_replaceable(inside)
    assert export.check_replaceable(str(tmp_path / "beside")) is False


def test_a_link_or_an_unreadable_folder_is_refused(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ValueError, match=re.escape(
            f"Invalid value for `export_dir`. Expected a folder path, not a symbolic link "
            f"(an export replaces the folder at its path, not the link's target). Received: "
            f"export_dir={str(link)!r}, a link to {str(target)!r}. Pass the target's path.")):
        export.check_replaceable(link)
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a symbolic link"):
        export.check_replaceable(tmp_path / "broken")
    assert export.check_replaceable(target) is False  # empty


def test_a_folder_that_is_not_an_export_is_not_replaced(trained, tmp_path):
    path = tmp_path / "photos"
    path.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "notes.txt"):
        (path / name).write_text("mine")
    with pytest.raises(ValueError, match=re.escape(
            f"Invalid value for `export_dir`. Expected a new or empty folder, or an earlier "
            f"export to replace (a folder with saved_model.pb). Received: "
            f"export_dir={str(path)!r}, which holds 4 other entries (a.jpg, b.jpg, c.jpg, "
            f"...) that the export would delete. Choose a new folder.")):
        trained.export(str(path))
    assert sorted(os.listdir(path)) == ["a.jpg", "b.jpg", "c.jpg", "notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["photos"]
    empty = tmp_path / "empty"
    empty.mkdir()
    trained.export(str(empty))
    assert "saved_model.pb" in os.listdir(empty)


def test_unwritable_export_path_is_explained(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="which is a file"):
        trained.export(str(blocker))
    with pytest.raises(ValueError, match=r"Cannot write the export to .*Choose a folder you can write to"):
        trained.export(str(blocker / "model"))


def test_export_before_fit_is_an_error(tiny_backbone_path, tmp_path):
    with pytest.raises(ValueError, match="call `fit` first"):
        FineTuner(tiny_backbone_path).export(str(tmp_path / "m"))


def _serve(path, encoded):
    loaded = tf.saved_model.load(path)
    return loaded.signatures["serving_default"](
        image_bytes=tf.constant(encoded))["probabilities"].numpy()


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    return trained.export(str(tmp_path_factory.mktemp("export") / "model"))


# Issue 9, kinds 1, 2, 3: serving decodes transparency, EXIF orientation and
# WebP exactly as training does.
@pytest.mark.slow
def test_serving_decodes_like_training(trained, exported):
    from PIL import Image
    from tests import photos

    transparent = photos.encode(Image.new("RGBA", (8, 8), (0, 128, 0, 0)), "PNG")
    raw = photos.asymmetric_image(32, 64)
    portrait = photos.encode(raw, "JPEG", quality=95, exif=photos.exif_block(6))
    webp = photos.encode(raw, "WEBP", lossless=True)
    served = _serve(exported, [transparent, portrait, webp])
    upright = tf.image.rot90(tf.io.decode_jpeg(portrait), 3).numpy()
    assert upright.shape == (64, 32, 3)
    expected = np.concatenate([
        trained.predict(np.full((1, 8, 8, 3), 255, np.uint8)),
        trained.predict(upright[None]),
        trained.predict(raw[None]),
    ])
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    green = trained.predict(np.tile(np.array([0, 128, 0], np.uint8), (1, 8, 8, 1)))
    assert not np.allclose(served[0], green[0], atol=1e-4)


@pytest.mark.slow
def test_exif_orientation_can_be_turned_off(trained, tmp_path):
    from tests import photos

    raw = photos.asymmetric_image(32, 64)
    portrait = photos.encode(raw, "JPEG", quality=95, exif=photos.exif_block(6))
    path = export.export_saved_model(trained.model, trained.class_names, str(tmp_path / "m"),
                                     32, exif_orientation=False)
    np.testing.assert_allclose(
        _serve(path, [portrait]), trained.predict(tf.io.decode_jpeg(portrait).numpy()[None]),
        rtol=1e-5, atol=1e-6)


# Issue 9, kinds 5 and 9: the pixel limit holds in serving, and a bad element
# fails the request with an error that names it.
@pytest.mark.slow
def test_serving_errors_name_the_element(trained, exported, tmp_path):
    from tests import photos

    good = photos.encode(photos.asymmetric_image(), "JPEG")
    junk = np.random.default_rng(0).integers(0, 256, 10, dtype=np.uint8).tobytes()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\] is not a JPEG, PNG, GIF, BMP or WebP image"):
        _serve(exported, [good, junk])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[2\] is a truncated JPEG file"):
        _serve(exported, [good, good, good[:len(good) // 2]])
    path = export.export_saved_model(trained.model, trained.class_names, str(tmp_path / "m"),
                                     32, max_pixels=10**8)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[2\] is too large: its header says 12000 x "
                             r"12000 pixels = 144000000, above max_image_pixels=100000000"):
        _serve(path, [good, good, photos.jpeg_with_size(12000, 12000)])


@pytest.mark.slow
def test_an_empty_request_gets_empty_outputs(trained, exported):
    signatures = tf.saved_model.load(exported).signatures
    classes = len(trained.class_names)
    for outputs in (signatures["serving_default"](image_bytes=tf.constant([], tf.string)),
                    signatures["serving_images"](images=tf.zeros([0, 32, 32, 3]))):
        assert outputs["probabilities"].shape == (0, classes)
        assert outputs["class_ids"].shape == outputs["classes"].shape == (0,)


@pytest.mark.slow
def test_serving_images_refuses_values_outside_0_1(trained, exported):
    serve = tf.saved_model.load(exported).signatures["serving_images"]
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(serve(images=tf.constant(images))["probabilities"].numpy(),
                               trained.predict(images), rtol=1e-5, atol=1e-6)
    nan = images.copy()
    nan[1, 3, 4, 0] = np.nan
    for bad, values in ((images * 255, r"\[0\.\d+\] \[to\] \[254\.\d+\] \[and\] \[0\]"),
                        (images * 2 - 1, r"\[-0\.99\d+\] \[to\] \[0\.99\d+\] \[and\] \[0\]"),
                        (nan, r"\[0(\.\d+)?\] \[to\] \[0\.99\d+\] \[and\] \[1\]")):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"Invalid value for `images`. Expected float32 RGB in \[0, "
                                 r"1\], as training saw them. Received: values from\] "
                                 + values):
            serve(images=tf.constant(bad))


@pytest.mark.slow
def test_large_jpeg_serves_as_it_trains(trained, exported, tmp_path):
    from PIL import Image
    from tests import photos
    from tfhub_ft import data

    image = Image.fromarray(photos.asymmetric_image(40, 60)).resize((1200, 800))
    encoded = photos.encode(image, "JPEG", quality=90)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "big.jpg").write_bytes(encoded)
    decoded = data.load_images(str(tmp_path), 32).images[:1]
    np.testing.assert_allclose(_serve(exported, [encoded]), trained.predict(decoded),
                               rtol=1e-5, atol=1e-6)


# Issue 9, kind 8: the module's input range is part of the exported graph.
@pytest.mark.slow
def test_input_range_is_baked_into_the_export(tiny_backbone_path, tmp_path):
    from tfhub_ft import model as model_lib
    from tfhub_ft.backbone import HubBackbone

    backbone = HubBackbone(tiny_backbone_path, input_range=(-1.0, 1.0))
    model = model_lib.build_classifier(backbone, 2, 32)
    path = export.export_saved_model(model, ["a", "b"], str(tmp_path / "m"), 32)
    images, encoded = encoded_images(3, 32)
    served = _serve(path, encoded)
    expected = tf.nn.softmax(model(images)).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    module_features = backbone.module(tf.constant(images / 255.0 * 2 - 1, tf.float32))
    np.testing.assert_allclose(backbone(images / 255.0).numpy(), module_features.numpy(),
                               rtol=1e-5, atol=1e-6)
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_export_logs_no_tensorflow_info_lines(trained, tmp_path):
    # tf.saved_model.save logs, through absl's logger, one INFO line per
    # signature naming every captured variable it renames (~20 kB with a
    # real backbone); the export holds it back, warnings still pass.
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    try:
        trained.export(str(tmp_path / "model"))
    finally:
        for each, level in zip(loggers, levels):
            each.removeHandler(handler)
            each.setLevel(level)
    assert [record.getMessage()[:80] for record in handler.records] == []
    assert all(each.level == level for each, level in zip(loggers, levels))


def test_export_calls_the_decode_graph_training_traced(trained, tmp_path, monkeypatch):
    # The export's serving_default calls the concrete function of the
    # decoder fit traced, not the tf.function: called while
    # tf.saved_model.save traces, the tf.function misses its cache (the save
    # context is part of the key) and traces the decode graph again, in the
    # first export of a process: 0.5 s of the command's 2.2 s export.
    from tfhub_ft import preprocessing
    config = trained.config
    decoder = preprocessing.traced_decoder(trained.image_size, config.max_image_pixels,
                                           config.exif_orientation)
    calls = []

    class Watched:
        def __call__(self, *args, **kwargs):
            calls.append(args)
            return decoder(*args, **kwargs)

        def get_concrete_function(self, *args, **kwargs):
            return decoder.get_concrete_function(*args, **kwargs)

    monkeypatch.setattr(preprocessing, "traced_decoder", lambda *args: Watched())
    path = trained.export(str(tmp_path / "model"))
    assert calls == []
    loaded = tf.saved_model.load(path)
    assert not hasattr(loaded, "_decoder")
    images, encoded = encoded_images(2, 32)
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), trained.predict(images),
                               rtol=1e-5, atol=1e-6)

"""Listing class folders and reading image headers, without decoding."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from tests import photos
from tfhub_ft import image_files

# Width 5, height 3: a header read the wrong way round shows.
IMAGE = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("image_format, options, name", [
    ("JPEG", {"quality": 90}, "JPEG"),
    ("JPEG", {"progressive": True}, "JPEG"),
    ("PNG", {}, "PNG"),
    ("GIF", {}, "GIF"),
    ("BMP", {}, "BMP"),
    ("WEBP", {"quality": 90}, "WebP"),
    ("WEBP", {"lossless": True}, "WebP"),
])
def test_headers_give_format_and_size(tmp_path, image_format, options, name):
    path = tmp_path / "image"
    path.write_bytes(photos.encode(IMAGE, image_format, **options))
    check = image_files.check_image_file(str(path))
    assert (check.format, check.width, check.height, check.problem, check.note) == (
        name, 5, 3, None, None)


def test_an_extended_webp_header_gives_its_size(tmp_path):
    path = tmp_path / "alpha.webp"
    alpha = np.arange(15, dtype=np.uint8).reshape(3, 5, 1) * 16
    # An alpha channel that is not all opaque makes the extended (VP8X) header.
    Image.fromarray(np.concatenate([IMAGE, alpha], -1), "RGBA").save(path, "WEBP", quality=90)
    assert open(path, "rb").read()[12:16] == b"VP8X"
    check = image_files.check_image_file(str(path))
    assert (check.format, check.width, check.height, check.problem) == ("WebP", 5, 3, None)


def test_problems_and_notes_are_worded_for_the_log(tmp_path):
    jpeg = photos.encode(IMAGE, "JPEG", quality=90)
    png = photos.encode(IMAGE, "PNG")
    bmp = photos.encode(IMAGE, "BMP")
    webp = photos.encode(IMAGE, "WEBP", quality=90)
    files = {
        "empty.jpg": b"",
        "junk.jpg": jpeg + b"after",
        "cut.jpg": jpeg[:-10],
        "header_only.jpg": jpeg[:20],
        "cut.png": png[:-20],
        "cut.bmp": bmp[:-6],
        "cut.webp": webp[:-4],
        "page.png": b"<html></html>",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    checks = {name: image_files.check_image_file(str(tmp_path / name)) for name in files}
    problems = {name: check.problem for name, check in checks.items()}
    assert problems == {
        "empty.jpg": "empty (0 bytes)",
        "junk.jpg": None,
        "cut.jpg": f"truncated JPEG (no end marker; {len(jpeg) - 10:,} bytes, cut short)",
        "header_only.jpg": "truncated JPEG (cut before its image data)",
        "cut.png": "truncated PNG (no IEND chunk at the end)",
        "cut.bmp": f"truncated BMP ({len(bmp) - 6} of {len(bmp)} bytes)",
        "cut.webp": f"truncated WebP ({len(webp) - 4} of {len(webp)} bytes)",
        "page.png": "unknown format (not JPEG, PNG, GIF, BMP or WebP; first bytes "
                    "3c 68 74 6d 6c 3e 3c 2f)",
    }
    assert checks["junk.jpg"].note == "5 bytes after the JPEG end marker (ignored)"
    missing = image_files.check_image_file(str(tmp_path / "missing.jpg"))
    assert missing.problem == "cannot be read (No such file or directory)"


def test_max_pixels_counts_the_header_size(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(photos.jpeg_with_size(4000, 3000))
    assert image_files.check_image_file(str(path), max_pixels=12_000_000).problem is None
    assert image_files.check_image_file(str(path), max_pixels=11_999_999).problem == (
        "too large: 4000 x 3000 pixels = 12,000,000, above max_image_pixels=11,999,999")
    # Checked in parallel, answered in order.
    many = [str(path), str(tmp_path / "none.jpg")] * 3
    assert [check.path for check in image_files.check_image_files(many)] == many


def test_a_class_folder_scan_follows_links_once_and_says_what_it_left_out(tmp_path):
    root = tmp_path / "cats"
    (root / "nested").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for path in (root / "b.jpg", root / "nested" / "a.PNG", tmp_path / "elsewhere" / "c.jpeg"):
        path.write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    (root / "again").symlink_to(tmp_path / "elsewhere")
    (root / "nested" / "loop").symlink_to(root)
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    scan = image_files.scan_class_folder(str(root), (".jpg", ".jpeg", ".png"))
    # Entries are visited in name order: `again` is listed, `linked` (the
    # same folder) and `loop` (the class folder itself) are not.
    assert [os.path.relpath(path, root) for path in scan.files] == [
        "again/c.jpeg", "b.jpg", "nested/a.PNG"]
    assert [os.path.relpath(path, tmp_path) for path in scan.real_files] == [
        "elsewhere/c.jpeg", "cats/b.jpg", "cats/nested/a.PNG"]
    assert [(os.path.relpath(path, root), why) for path, why in scan.left_out] == [
        (".hidden.jpg", "hidden"),
        ("dangling.jpg", "broken link"),
        ("notes.txt", "not an image file name (.jpg, .jpeg, .png)"),
        ("linked", f"folder already listed (a link to {tmp_path / 'elsewhere'})"),
        ("nested/loop", f"folder already listed (a link to {root})"),
    ]
    assert scan.nested_folders == 2  # nested/ and again/


def test_listings_name_ten_and_count_the_rest(caplog):
    entries = [f"{n}.jpg" for n in range(image_files.LISTED_FILES)]
    assert image_files.listing(entries, "files") == "; ".join(entries)
    with caplog.at_level(logging.DEBUG, logger="tfhub_ft.image_files"):
        line = image_files.listing(entries + ["x.jpg", "y.jpg"], "files skipped")
    assert line == ("; ".join(entries) + "; and 2 more (DEBUG logging, `--verbosity=2` in "
                    "the command, lists them all)")
    assert f"All {image_files.LISTED_FILES + 2} files skipped: 0.jpg; " in caplog.text


def test_files_left_out_for_one_reason_are_grouped():
    outside = [(f"top/{n}.jpg", "a file outside the class folders") for n in range(5)]
    line = image_files.listing_by_reason(outside + [("a/notes.txt", "not an image")], "x")
    assert line == ("a file outside the class folders (5): top/0.jpg, top/1.jpg, top/2.jpg "
                    "and 2 more; a/notes.txt (not an image) (DEBUG logging, `--verbosity=2` "
                    "in the command, lists them all)")
    assert image_files.listing_by_reason(outside[:2], "x") == (
        "a file outside the class folders (2): top/0.jpg, top/1.jpg")


def test_paths_that_are_not_utf8_are_shown_escaped():
    assert image_files.display_path(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    assert image_files.display_path("café.jpg") == "café.jpg"


def _refuse_reading(monkeypatch, folder_name, file_name):
    """Permission errors where the library lists `folder_name` and opens
    `file_name`: simulated, because permissions do not stop root (these
    tests may run as root, as CI here does)."""
    real_scandir, real_open = os.scandir, open

    def scandir(path):
        if os.path.basename(path) == folder_name:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    def guarded_open(path, *args, **kwargs):
        if os.path.basename(path) == file_name:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(image_files.os, "scandir", scandir)
    monkeypatch.setattr(image_files, "open", guarded_open, raising=False)


def test_unreadable_files_and_folders_are_left_out_with_the_reason(tmp_path, monkeypatch):
    root = tmp_path / "cats"
    (root / "locked").mkdir(parents=True)
    jpeg = photos.encode(IMAGE, "JPEG", quality=90)
    for path in (root / "locked" / "a.jpg", root / "b.jpg", root / "c.jpg"):
        path.write_bytes(jpeg)
    _refuse_reading(monkeypatch, "locked", "c.jpg")
    scan = image_files.scan_class_folder(str(root), (".jpg",))
    assert [os.path.relpath(path, root) for path in scan.files] == ["b.jpg", "c.jpg"]
    assert [(os.path.relpath(path, root), why) for path, why in scan.left_out] == [
        ("locked", "folder cannot be read (Permission denied)")]
    checks = image_files.check_image_files(scan.files)
    assert [check.problem for check in checks] == [None, "cannot be read (Permission denied)"]

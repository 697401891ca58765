"""Image files on disk: listing class folders and checking files before training.

Listing follows links (with loop detection), recurses into nested folders
and says what it leaves out and why. Checking reads each file's header in
Python (in parallel threads; no decoding) and names what is wrong with a
file: empty, unknown format, truncated, or too large. What the check lets
through is decoded by TensorFlow (`preprocessing`), whose own error then
names the rest.

Paths are `str` as `os` returns them: a name that is not valid UTF-8 keeps
its bytes as surrogate escapes (PEP 383), travels to TensorFlow as bytes
(`os.fsencode`) and is shown with `display_path`.
"""

import concurrent.futures
import dataclasses
import logging
import os
import struct
from typing import List, Optional, Tuple

logger = logging.getLogger(__name__)

# Extensions of image formats TensorFlow cannot decode: reported, not silent.
UNSUPPORTED_IMAGE_EXTENSIONS = (".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl",
                                ".svg", ".ico", ".raw", ".cr2", ".nef", ".dng")
_CHECK_THREADS = 16
# A log line names at most this many files; the rest are counted, and all of
# them are listed at DEBUG level (`--verbosity=2`).
LISTED_FILES = 10
# What a listing that names only some of its entries adds.
_ALL_AT_DEBUG = "(DEBUG logging, `--verbosity=2` in the command, lists them all)"
# The reason an empty file is not used, wherever a file is read.
EMPTY_FILE = "empty (0 bytes)"
# A JPEG's first bytes: start of image, then the first marker's 0xFF.
JPEG_SIGNATURE = b"\xff\xd8\xff"


def display_path(path) -> str:
    """A printable form of a path: bytes that are not UTF-8 become escapes
    such as `caf\\xe9.jpg`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_bytes(path):
    """The whole file at `path`, bytes (OSError as `open` raises it)."""
    with open(path, "rb") as f:
        return f.read()


def listing(entries, what):
    """Joins `entries` (str) with "; " for a log line, naming the first
    `LISTED_FILES` and counting the rest ("...; and 490 more (...)"); when
    some are left out, logs all of them at DEBUG, as "All N <what>: ...".
    """
    entries = list(entries)
    if len(entries) <= LISTED_FILES:
        return "; ".join(entries)
    logger.debug("All %d %s: %s", len(entries), what, "; ".join(entries))
    return ("; ".join(entries[:LISTED_FILES]) + f"; and {len(entries) - LISTED_FILES} "
            f"more {_ALL_AT_DEBUG}")


def listing_by_reason(left_out, what, per_reason=3):
    """Joins (path, why) pairs for a log line, grouped by reason.

    A reason given once reads "path (why)"; one shared by several files
    "why (count): path, path, path and N more", naming `per_reason` of them,
    so that ten files left out for the same reason do not repeat it ten
    times. When some are not named, all are logged at DEBUG as in `listing`.
    """
    left_out = list(left_out)
    groups = {}
    for path, why in left_out:
        groups.setdefault(why, []).append(display_path(path))
    parts, unnamed = [], 0
    for why, paths in groups.items():
        if len(paths) == 1:
            parts.append(f"{paths[0]} ({why})")
            continue
        named = ", ".join(paths[:per_reason])
        if len(paths) > per_reason:
            named += f" and {len(paths) - per_reason} more"
            unnamed += len(paths) - per_reason
        parts.append(f"{why} ({len(paths)}): {named}")
    if not unnamed:
        return "; ".join(parts)
    logger.debug("All %d %s: %s", len(left_out), what,
                 "; ".join(f"{display_path(path)} ({why})" for path, why in left_out))
    return f"{'; '.join(parts)} {_ALL_AT_DEBUG}"


@dataclasses.dataclass
class FolderScan:
    """What `scan_class_folder` found.

    Attributes:
        files: Image paths, sorted, nested folders and links included.
        real_files: Each file's path with links resolved, in `files`' order.
        left_out: (path, why) of every file or folder not listed.
        nested_folders: How many sub-folders were searched.
    """

    files: List[str]
    left_out: List[Tuple[str, str]]
    nested_folders: int = 0
    real_files: List[str] = dataclasses.field(default_factory=list)


def scan_class_folder(class_dir, extensions) -> FolderScan:
    """Lists the images under one class folder, recursively.

    Links to files and folders are followed; a folder reached twice (a link
    loop or two links to one folder) is searched once. Hidden files and
    folders (".name", such as .ipynb_checkpoints) are left out, and so are
    files whose extension is not in `extensions`.

    Args:
        class_dir: Folder path (str).
        extensions: Lower-case extensions with the dot, e.g. (".jpg", ...).

    Returns:
        A `FolderScan`.
    """
    files, left_out = [], []
    visited = set()
    nested = -1
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            left_out.append((folder, f"folder already listed (a link to {display_path(real)})"))
            continue
        visited.add(real)
        nested += 1
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            left_out.append((folder, f"folder cannot be read ({error.strerror})"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                left_out.append((entry.path, "hidden"))
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError:
                is_dir = is_file = False
            if is_dir:
                subfolders.append(entry.path)
            elif not is_file:
                why = "broken link" if entry.is_symlink() else "not a file or folder"
                left_out.append((entry.path, why))
            elif entry.name.lower().endswith(extensions):
                # realpath only for a link: one call per file costs seconds
                # on 50,000 files.
                files.append((entry.path, os.path.realpath(entry.path) if entry.is_symlink()
                              else os.path.join(real, entry.name)))
            elif entry.name.lower().endswith(UNSUPPORTED_IMAGE_EXTENSIONS):
                left_out.append((entry.path, "an image format TensorFlow cannot "
                                 "decode; convert it to JPEG or PNG"))
            else:
                left_out.append((entry.path, "not an image file name "
                                 f"({', '.join(extensions)})"))
        stack.extend(reversed(subfolders))
    files.sort()
    return FolderScan([path for path, _ in files], left_out, nested,
                      [real_path for _, real_path in files])


@dataclasses.dataclass
class FileCheck:
    """What a file's header says.

    Attributes:
        path: The file.
        format: "JPEG", "PNG", "GIF", "BMP", "WebP" or None.
        height, width: Pixels from the header (0 when unknown).
        problem: Why the file cannot be used, or None.
        note: A harmless oddity worth a line in the log, or None.
    """

    path: str
    format: Optional[str] = None
    height: int = 0
    width: int = 0
    problem: Optional[str] = None
    note: Optional[str] = None


def check_image_file(path, max_pixels=None) -> FileCheck:
    """Reads an image file's header and tells whether it can be used.

    Problems found: the file cannot be read, is empty, has an unknown format
    (its first bytes shown), is truncated (a JPEG without its end marker, a
    PNG without its IEND chunk, a BMP or WebP shorter than its header
    says), or has more than `max_pixels` pixels. Bytes after a JPEG's end
    marker are a note, not a problem (decoders ignore them).

    Returns:
        A `FileCheck`.
    """
    result = FileCheck(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        result.problem = f"cannot be read ({error.strerror or error})"
        return result
    if not data:
        result.problem = EMPTY_FILE
        return result
    try:
        _read_header(data, result)
    except (struct.error, IndexError, ValueError):
        result.problem = result.problem or f"damaged {result.format} header"
    if result.problem is None and max_pixels is not None \
            and result.height * result.width > max_pixels:
        result.problem = (
            f"too large: {result.width} x {result.height} pixels = "
            f"{result.width * result.height:,}, above max_image_pixels={max_pixels:,}")
    return result


def _read_header(data, result):
    if data.startswith(JPEG_SIGNATURE):
        result.format = "JPEG"
        _read_jpeg(data, result)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        result.format = "PNG"
        result.width, result.height = struct.unpack(">II", data[16:24])
        if data.rfind(b"IEND") < 0:
            result.problem = "truncated PNG (no IEND chunk at the end)"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        result.format = "GIF"
        result.width, result.height = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"BM":
        result.format = "BMP"
        size, = struct.unpack("<I", data[2:6])
        result.width, height = struct.unpack("<ii", data[18:26])
        result.height = abs(height)
        if len(data) < size:
            result.problem = f"truncated BMP ({len(data)} of {size} bytes)"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        result.format = "WebP"
        size, = struct.unpack("<I", data[4:8])
        chunk = data[12:16]
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            result.width, result.height = width & 0x3FFF, height & 0x3FFF
        elif chunk == b"VP8L":
            bits, = struct.unpack("<I", data[21:25])
            result.width, result.height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        else:
            result.width = int.from_bytes(data[24:27], "little") + 1
            result.height = int.from_bytes(data[27:30], "little") + 1
        if len(data) < size + 8:
            result.problem = f"truncated WebP ({len(data)} of {size + 8} bytes)"
    else:
        result.problem = (f"unknown format (not JPEG, PNG, GIF, BMP or WebP; "
                          f"first bytes {data[:8].hex(' ')})")


def _read_jpeg(data, result):
    """Walks the JPEG markers to the frame header (size) and scan start."""
    position, scan_start = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError("no marker")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length, = struct.unpack(">H", data[position + 2:position + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            result.height, result.width = struct.unpack(
                ">HH", data[position + 5:position + 9])
        if marker == 0xDA:
            scan_start = position + 2 + length
            break
        position += 2 + length
    if scan_start is None or not result.width:
        result.problem = "truncated JPEG (cut before its image data)"
        return
    end = data.rfind(b"\xff\xd9")
    if end < scan_start:
        result.problem = (f"truncated JPEG (no end marker; {len(data):,} bytes, "
                          "cut short)")
    elif end + 2 < len(data):
        result.note = f"{len(data) - end - 2:,} bytes after the JPEG end marker (ignored)"


def check_image_files(paths, max_pixels=None) -> List[FileCheck]:
    """`check_image_file` on every path, in parallel threads, in order."""
    if not paths:
        return []
    with concurrent.futures.ThreadPoolExecutor(
            min(_CHECK_THREADS, len(paths))) as pool:
        return list(pool.map(lambda p: check_image_file(p, max_pixels), paths))

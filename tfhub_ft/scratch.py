"""Scratch folders named after the process that owns them.

An export's staging folder and a cache's spill folder are removed by the
process that made them, when it ends or fails. A process killed outright
(SIGKILL, the out-of-memory killer, power loss) runs no clean-up, and its
folder stays: hundreds of megabytes of spill files, or a staging folder
beside an export. Each such folder is named `<kind>-<pid>@<host>-<random>`,
so that a later process can tell a folder whose owner has ended from one a
running process is still writing, and remove the first kind only.
"""

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile

logger = logging.getLogger(__name__)


def _host():
    return socket.gethostname().replace("/", "_")


def make_folder(kind, parent=None):
    """Makes an empty private folder `<kind>-<pid>@<host>-<random>` in `parent`.

    Args:
        kind: The folder's prefix (".export", "tfhub_ft_cache"): no "@".
        parent: The folder to make it in; the temporary folder when None.

    Returns:
        Its path.

    Raises:
        OSError: if it cannot be made.
    """
    return tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}@{_host()}-", dir=parent)


def remove_abandoned(kind, parent=None, what="scratch folder"):
    """Removes the `kind` folders in `parent` whose owning process has ended.

    Only folders named by `make_folder` on this host are candidates; another
    host's (a shared file system), a running process's and any other folder
    are left alone. Each removal is logged at INFO, naming `what` it was.

    Args:
        kind: As given to `make_folder`.
        parent: The folder to look in; the temporary folder when None.
        what: Words for the log line ("the staging folder of an export").

    Returns:
        The paths removed.
    """
    parent = tempfile.gettempdir() if parent is None else parent
    pattern = re.compile(rf"^{re.escape(kind)}-(\d+)@(.+)-[^-@]+$")
    host = _host()
    removed = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if not match or match.group(2) != host or _process_exists(int(match.group(1))):
            continue
        path = os.path.join(parent, name)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        logger.info("Removed %s: %s that process %s left when it ended without "
                    "cleaning up", path, what, match.group(1))
    return removed


@contextlib.contextmanager
def scratch_folder(kind, what):
    """A `make_folder` folder for the block, removed after it, however it
    ends; folders of `kind` that ended processes left are removed first
    (`remove_abandoned`, naming `what`), so a kill's leftovers do not stay.

    Yields:
        The folder's path.
    """
    remove_abandoned(kind, what=what)
    folder = make_folder(kind)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def temporary_folder_for_libraries(kind, what):
    """Points Python's temporary folder (`tempfile.tempdir`) at a folder of
    its own while the block runs, for libraries that make temporary files
    of their own there (TensorFlow's TFLite converter saves a SavedModel):
    a kill leaves them in a `make_folder` folder that a later call sweeps
    up, rather than in the temporary folder for good.

    The setting is process-wide: a thread making temporary files meanwhile
    makes them there too. Folders of `kind` that ended processes left are
    removed first (`remove_abandoned`, naming `what`).

    Yields:
        The folder's path (a `scratch_folder`); it is removed, with what is
        in it, after.
    """
    with scratch_folder(kind, what) as folder:
        previous = tempfile.tempdir
        tempfile.tempdir = folder
        try:
            yield folder
        finally:
            # Only where it is still this block's: a thread that set its own
            # meanwhile keeps it.
            if tempfile.tempdir == folder:
                tempfile.tempdir = previous


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid out of range: keep)
    return True

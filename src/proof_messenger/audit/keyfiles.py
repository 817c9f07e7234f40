"""Creating a secret key file: all or nothing, first creator wins."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["create_secret_file"]

#: ``link`` refused by the filesystem (some network and FUSE filesystems): write in place.
_NO_LINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def create_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``; ``FileExistsError`` if it exists.

    Several relays starting at once on a fresh data directory each find no key file and
    create one. With ``O_CREAT | O_EXCL`` and then a write, a relay that lost the race
    could read the winner's file between its creation and its write and fail on an empty
    key (seen with three relays starting together). Here the bytes go to a 0600 temporary
    file in the same directory first, fsynced, and are then linked to the final name:
    ``link`` fails if the name exists, so the first creator wins and every reader sees no
    file or the whole file. The directory is fsynced so the new name survives a crash.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            _create_in_place(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_directory(path.parent)


def _create_in_place(path: Path, data: bytes) -> None:
    """Fallback without ``link``: exclusive create, then write (a concurrent reader can
    see the file before its bytes; only on filesystems without hard links)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

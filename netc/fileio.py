"""Writing files so that a crash never leaves half a file: temp file, fsync, rename."""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

from netc.errors import NetcError


def open_input(path: str, what: str) -> BinaryIO:
    """Open a user's file for reading; any failure is one NetcError naming it."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise NetcError(f"{what} '{path}' does not exist") from None
    except IsADirectoryError:
        raise NetcError(f"{what} '{path}' is a directory, not a file") from None
    except OSError as e:
        raise NetcError(f"cannot read {what} '{path}': {e.strerror or e}") from None


def write_bytes_atomic(path: str, data: bytes, what: str = "file") -> None:
    """Write `data` to `path` (temp file, fsync, rename); any failure is one NetcError
    naming the file and leaves what was there before untouched."""
    try:
        _write_atomic(path, data)
    except OSError as e:
        raise NetcError(f"cannot write {what} '{path}': {e.strerror or e}",
                        hint="check that its folder exists and is writable") from None


def _write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".netc-", dir=directory)
    try:
        # mkstemp makes the file owner-only; give it the mode any new file would get
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)   # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_text_atomic(path: str, text: str, what: str = "file") -> None:
    write_bytes_atomic(path, text.encode("utf-8"), what)

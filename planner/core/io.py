"""Atomic writes: a reader (or a crash) never sees a half-written file.

Write to a temporary file in the same folder, fsync, then rename over the target (rename is
atomic on POSIX within one file system), and fsync the folder so the rename itself is durable.
The file gets the process umask's mode (normally 0644), not mkstemp's private 0600, so teammates
and schedulers running as other users can read run.yaml, configs, reports and checkpoints.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def names_file(path: str | Path) -> Iterator[None]:
    """Re-raise an OSError that names no file (ENOSPC on write, EIO) with `path`, for one clear line."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any writer thread exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file to stream into (text or binary by `mode`) that appears at `path` only complete: fsynced
    and renamed when the block ends, removed if it raises. For outputs too large to hold in memory."""
    path = Path(path)
    refuse_special_target(path)
    with names_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; files get the mode any other write would
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in `path`'s folder; a failure names `path`, not the temporary name."""
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write a file in {path.parent}: {exc.strerror}", str(path)) from None


def check_writable(path: str | Path) -> None:
    """Raise now the OSError a later `atomic_open(path)` would: for a command that measures for a while before
    it writes (`planner probe`), so a bad --out is one line at once, not after the work."""
    path = Path(path)
    refuse_special_target(path)
    with names_file(path):
        if not path.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"no folder {path.parent} to write into", str(path))
        fd, tmp = _temp_beside(path)
        os.close(fd)
        os.unlink(tmp)


class SpecialFileError(OSError):
    """A path that names a device, FIFO, socket or folder where a regular file is expected."""


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what the mode names ("a FIFO", "a device", "a folder", ...)."""
    if stat.S_ISREG(mode):
        return None
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "not a regular file")


def refuse_special_target(path: Path) -> None:
    """Writes go to regular files or to new names: renaming over /dev/null would replace the device."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable parent etc.: the write itself reports it, naming the file
    kind = file_kind(mode)
    if kind is not None:
        raise SpecialFileError(errno.EEXIST, f"is {kind}, not a regular file to write", str(path))


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


def read_input(path: str | Path, max_bytes: int = 64 << 20) -> bytes:
    """The bytes of an input file we load: refused (never read, so never hung on) when it is a FIFO,
    a device or a folder, and when larger than `max_bytes`."""
    path = Path(path)
    mode = os.stat(path).st_mode
    kind = file_kind(mode)
    if kind is not None:
        raise SpecialFileError(errno.EINVAL, f"is {kind}, not a regular file to read", str(path))
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SpecialFileError(errno.EFBIG, f"is larger than the {_size(max_bytes)} this file may be", str(path))
    return data


def read_json(path: str | Path, max_bytes: int):
    """The JSON in a file we load (`read_input`: no FIFO or device, size-capped): text that is not UTF-8, not
    JSON, or nested past the parser's depth is one PlannerError naming the file; OSError passes through."""
    from planner.core.errors import PlannerError

    data = read_input(path, max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise PlannerError(f"{path}: not valid JSON text: nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PlannerError(f"{path}: not valid JSON text: {str(exc).splitlines()[0][:120]}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")

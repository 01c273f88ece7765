"""Plumbing every other module shares: the project's errors, its cache folder, and the one
way it writes a file (write_atomic: a reader never sees half a file, a crash never leaves one).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def cache_dir() -> Path:
    """Where downloads and decoded audio live; read at call time so tests can redirect it."""
    return Path(os.environ.get("FASTWHISPER_CACHE") or Path.home() / ".cache" / "fastwhisper")


class DataError(ValueError):
    """Bad input data; the message always reads "PATH: problem"."""


class AudioError(DataError):
    """An audio file that cannot be read."""


def brief(error: BaseException, limit: int = 120) -> str:
    """'TypeName: first line of the message', cut at a word boundary: for one-line errors."""
    line = (str(error).splitlines() or [""])[0]
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def write_atomic(dest, blob: bytes) -> Path:
    """Write `blob` to a temporary name in dest's folder, flush it to disk, then rename: a reader
    never sees a half-written file, a crash never leaves one, and several processes may fill a
    cache at once. Every file the project writes goes through here."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name opened with mode 0666, which the kernel masks with the user's umask (mkstemp's
    # 0600 would hide every transcript and student from other users)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return dest

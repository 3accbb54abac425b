"""Files Sonufy writes for people (pictures, pages): checked before the work, written whole."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class OutputError(ValueError):
    """An output folder that cannot be written; the message names it."""


def writable_dir(path: str | Path) -> Path:
    """``path`` as a folder outputs can be written into (it may not exist yet),
    or an :class:`OutputError` naming it. Meant to run before any work, so
    that a bad ``--out`` fails at once rather than after the work."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder; give a folder to write into")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{path}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {existing} is not writable")
    return path


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into
    place: a reader (a browser, an image viewer) sees the old file or the new
    one whole, never half of it, and a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path

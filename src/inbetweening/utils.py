"""Small shared helpers: atomic file writes and user-facing errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch


class InbetweeningError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits 2."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Works for files and folders. Nothing is left at ``path`` (or beside it) if the block raises.
    With ``overwrite=False`` an existing ``path`` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InbetweeningError(f"{path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        _default_permissions(tmp)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _default_permissions(path: Path) -> None:
    """Give a finished file the permissions a plain open() would (some writers, safetensors
    among them, create private 0600 files)."""
    if path.is_file():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)

"""Small shared helpers: atomic file writes and user-facing errors."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
import typing
from collections.abc import Iterable
from pathlib import Path


class InbetweeningError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits 2."""


# Every folder this tool writes holds this file: the names it wrote there. Only such a folder, still
# holding nothing else, may be replaced (or a folder of nothing but PNG frames, as older versions
# wrote them); see check_target.
OUTPUT_MARK = ".inbetweening-output.json"
_FRAME_FILE = re.compile(r"frame_\d{4,}\.png")


def _owned_folder(path: Path) -> bool:
    names = {p.name for p in path.iterdir()}
    mark = path / OUTPUT_MARK
    if mark.is_file():
        try:
            wrote = set(json.loads(mark.read_text())["entries"])
        except (ValueError, KeyError, TypeError, OSError):
            return False
        return names - {OUTPUT_MARK} <= wrote
    return bool(names) and all(_FRAME_FILE.fullmatch(n) for n in names)


def _protected(path: Path, inputs: Iterable[str | os.PathLike]) -> str | None:
    """Why the folder ``path`` may never be replaced, or None."""
    real = path.resolve()
    if real == Path(real.anchor):
        return "it is the root folder"
    if real == Path.home().resolve():
        return "it is the home folder"
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "it is the current folder or holds it"
    for item in inputs:
        item = Path(item).resolve()
        if item == real or real in item.parents:
            return f"it holds the input {item}"
    return None


def check_target(path: str | os.PathLike, overwrite: bool, *, folder: bool | None = None,
                 inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check, before any work, that ``path`` can be written: not empty, its parent not a file,
    not existing unless ``overwrite``; an existing folder only if this tool wrote it and it holds
    nothing else, and never the root, the home or the current folder or one holding ``inputs``.
    ``folder``: whether the output is a folder (True), a file (False) or either (None)."""
    if str(path) == "":
        raise InbetweeningError("the output path is empty")
    path = Path(path)
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InbetweeningError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    if not (path.exists() or path.is_symlink()):
        return path
    if not overwrite:
        raise InbetweeningError(f"{path} already exists (pass --overwrite to replace it)")
    if any(Path(item).resolve() == path.resolve() for item in inputs):
        raise InbetweeningError(f"will not replace {path}: it is one of the inputs")
    if path.is_dir() and not path.is_symlink():
        if folder is False:
            raise InbetweeningError(f"{path} is a folder; it is not replaced by a file")
        why = _protected(path, inputs)
        if why is None and not _owned_folder(path):
            why = "it holds files this tool did not write"
        if why:
            raise InbetweeningError(f"will not replace the folder {path}: {why}")
    elif folder:
        raise InbetweeningError(f"{path} is a file; it is not replaced by a folder")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove what an interrupted write of ``path`` left beside it (``.NAME.PID.XXXX.partial*``
    of a process that is gone); returns what was removed."""
    removed = []
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^.]+\.partial")
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.partial*"):
        m = pattern.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _mark(folder: Path) -> None:
    entries = sorted(p.name for p in folder.iterdir())
    (folder / OUTPUT_MARK).write_text(json.dumps({"entries": entries}) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True,
                inputs: Iterable[str | os.PathLike] = (), mark: bool = True):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Works for files and folders; a folder gets :data:`OUTPUT_MARK` (unless ``mark`` is False:
    a folder of nothing but PNG frames is known as this tool's without it). Nothing is left at ``path``
    (or beside it) if the block raises. An existing ``path`` is replaced only as
    :func:`check_target` allows (with ``overwrite=False`` never).
    """
    path = check_target(path, overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".partial" + path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        _default_permissions(tmp)
        if tmp.is_dir() and mark:
            _mark(tmp)
        if path.is_dir() and not path.is_symlink():
            check_target(path, overwrite, folder=tmp.is_dir(), inputs=inputs)
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
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def field_type(cls, f: dataclasses.Field) -> type:
    """int, float, str or bool: the type a dataclass field's value is read as from text (the
    command line, a manifest); other types (tuples: fields with their own ``parse``) are str."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if args[0] in (int, float, str, bool) else str


def mix_seed(seed: int, *keys: int, scale: int = 7_919, offset: int = 12_345) -> int:
    """A seed that is a pure function of ``seed`` and ``keys``, the same in every process and run:
    for each key in turn, ``value = (value * 1_000_003 + key * scale + offset) % (2**63 - 1)``,
    from ``value = seed``. The default constants address training's samples and the toy world's
    clips; ``scale=1, offset=0`` gives evaluation's pair seeds."""
    value = int(seed)
    for key in keys:
        value = (value * 1_000_003 + key * scale + offset) % (2**63 - 1)
    return value

"""Small shared helpers: atomic file writes and user-facing errors."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path


class InbetweeningError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits 2."""


def check_regular_file(path: str | os.PathLike, what: str = "a file") -> Path:
    """``path`` if it is a regular file (links followed), else a one-line InbetweeningError: it
    is missing, a folder, or a pipe, device or socket, which is never opened (reading a FIFO
    waits for a writer, maybe forever). ``what``: what the file should be, for the message."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InbetweeningError(f"{path}: no such file") from None
    except OSError as e:
        raise InbetweeningError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") \
            from None
    if stat.S_ISDIR(mode):
        raise InbetweeningError(f"{path} is a folder, not {what}")
    if not stat.S_ISREG(mode):
        raise InbetweeningError(f"{path} is not a regular file (a pipe, device or socket), not "
                                f"{what}")
    return path


# Every folder this tool writes holds this file: what kind of folder it is and the names it
# wrote there (see check_target). Each command replaces only a folder of the kind it writes.
OUTPUT_MARK = ".inbetweening-output.json"
# The kinds, and what each is in words: "output" (interpolate's and demo's), "set" (benchmark),
# "model" (the toy models), "data" (the toy world's training clips).
FOLDER_KINDS = {"output": "an output", "set": "a benchmark set", "model": "a model",
                "data": "training data"}


def folder_mark(path: Path) -> dict | None:
    """The mark of a folder this tool wrote (``{"kind": ..., "entries": [...]}``), or None when
    it has none or an unreadable one."""
    try:
        mark = json.loads((Path(path) / OUTPUT_MARK).read_text())
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) else None


def owned_folder(path: Path, kind: str) -> bool:
    """Whether this tool wrote the folder ``path`` as a folder of ``kind`` and it still holds
    nothing else. A mark without a kind (written before marks had one) proves nothing."""
    mark = folder_mark(path)
    if mark is None or mark.get("kind") != kind or not isinstance(mark.get("entries"), list):
        return False
    return {p.name for p in path.iterdir()} - {OUTPUT_MARK} <= set(mark["entries"])


def why_protected(path: str | os.PathLike,
                  inputs: Iterable[str | os.PathLike] = ()) -> str | None:
    """Why ``path`` may never be replaced by an output, or None: the root, the home or the current
    folder (or one holding it); one of the ``inputs`` (the files and folders the run reads), a
    folder holding one, or anything inside an input folder; a model folder."""
    real = Path(path).resolve()
    if real == Path(real.anchor):
        return "it is the root folder"
    if real == Path.home().resolve():
        return "it is the home folder"
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "it is the current folder or holds it"
    for item in inputs:
        item = Path(item).resolve()
        if item == real:
            return "it is one of the inputs"
        if real in item.parents:
            return f"it holds the input {item}"
        if item.is_dir() and item in real.parents:
            return f"it is inside the input folder {item}"
    return None


def check_writable(folder: str | os.PathLike) -> Path:
    """Refuse, before any work, a ``folder`` where nothing can be written (read-only, a virtual
    file system such as /proc, no permission): an empty file is created and removed in it or, if
    it does not exist yet, in the nearest folder above it that does (where it would be made).
    Returns that folder."""
    here = Path(folder).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise InbetweeningError(f"cannot write into {folder}: {here} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".inbetweening-write-test.", dir=here)
    except OSError as e:
        raise InbetweeningError(f"cannot write into {here} ({e.strerror or type(e).__name__})") \
            from None
    os.close(fd)
    os.unlink(probe)
    return here


def check_target(path: str | os.PathLike, overwrite: bool, *, folder: bool | None = None,
                 inputs: Iterable[str | os.PathLike] = (), kind: str = "output") -> Path:
    """Check, before any work, that ``path`` can be written: not empty, its parent not a file
    and writable (:func:`check_writable`), not existing unless ``overwrite``. What exists is
    replaced only if :func:`why_protected` finds nothing against it (``inputs``: what the run
    reads) and, for a folder, only if this tool wrote it as a folder of ``kind``
    (:func:`owned_folder`) and it holds no model.
    ``folder``: whether the output is a folder (True), a file (False) or either (None)."""
    if kind not in FOLDER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FOLDER_KINDS)}, not {kind!r}")
    if str(path) == "":
        raise InbetweeningError("the output path is empty")
    path = Path(path)
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InbetweeningError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    check_writable(path.parent)
    if not (path.exists() or path.is_symlink()):
        return path
    if not overwrite:
        raise InbetweeningError(f"{path} already exists (pass --overwrite to replace it)")
    inputs = list(inputs)
    if path.is_dir() and not path.is_symlink():
        if folder is False:
            raise InbetweeningError(f"{path} is a folder; it is not replaced by a file")
        why = why_protected(path, inputs)
        if why is None and kind != "model" and (path / "model_index.json").exists():
            why = "it holds a model"
        if why is None and not owned_folder(path, kind):
            why = ("it holds files this tool did not write" if folder_mark(path) is None
                   else f"this tool did not write it as {FOLDER_KINDS[kind]}")
        if why:
            raise InbetweeningError(f"will not replace the folder {path}: {why}")
    elif folder:
        raise InbetweeningError(f"{path} is a file; it is not replaced by a folder")
    elif why := why_protected(path, inputs):
        raise InbetweeningError(f"will not replace {path}: {why}")
    return path


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts)."""
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
        if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _mark(folder: Path, kind: str) -> None:
    entries = sorted(p.name for p in folder.iterdir())
    (folder / OUTPUT_MARK).write_text(json.dumps({"kind": kind, "entries": entries}) + "\n")


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """``tmp`` to ``path``. Without ``overwrite`` a file is linked (which fails if ``path``
    appeared meanwhile) rather than renamed over whatever is there."""
    if overwrite or tmp.is_dir():
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise InbetweeningError(f"{path} appeared while this ran; it is left as it is "
                                "(pass --overwrite to replace it)") from None
    except OSError:  # a file system without hard links: the check just made must do
        os.replace(tmp, path)
    else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True,
                inputs: Iterable[str | os.PathLike] = (), kind: str = "output"):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Works for files and folders; a folder gets :data:`OUTPUT_MARK` saying it is a folder of
    ``kind`` (see :data:`FOLDER_KINDS`). Nothing is left at ``path`` (or beside it) if the block
    raises. An existing ``path`` is replaced only as :func:`check_target` allows (with
    ``overwrite=False`` never), checked before the work and again just before the move, so that
    what appeared or changed at ``path`` meanwhile is not lost.
    """
    path = check_target(path, overwrite, inputs=inputs, kind=kind)
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
        if tmp.is_dir():
            _mark(tmp, kind)
        check_target(path, overwrite, folder=tmp.is_dir(), inputs=inputs, kind=kind)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        _move_into_place(tmp, path, overwrite)
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


def mix_seed(seed: int, *keys: int, scale: int = 7_919, offset: int = 12_345) -> int:
    """A seed that is a pure function of ``seed`` and ``keys``, the same in every process and run:
    for each key in turn, ``value = (value * 1_000_003 + key * scale + offset) % (2**63 - 1)``,
    from ``value = seed``. The default constants address training's samples and the toy world's
    clips; ``scale=1, offset=0`` gives evaluation's pair seeds."""
    value = int(seed)
    for key in keys:
        value = (value * 1_000_003 + key * scale + offset) % (2**63 - 1)
    return value

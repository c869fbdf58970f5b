"""Finding a model without loading it: the bundled toy models by name, local diffusers folders and
hub ids. Imports no deep-learning library, so that a command can check what it was given (and
what it must never overwrite) before torch and diffusers are imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .utils import InbetweeningError

_TOY = Path(__file__).resolve().parent / "toy"
# Where the trained toy model lives inside the package (a diffusers folder + backward weights).
BUNDLED_MODEL = _TOY / "model"
# The ambiguous world's model (each vehicle slow or fast), bundled beside it.
AMBIGUOUS_MODEL = _TOY / "ambiguous"
# What ``--model NAME`` may name besides a folder or a hub id.
NAMED_MODELS = {"toy": BUNDLED_MODEL, "toy-ambiguous": AMBIGUOUS_MODEL}
SVD_COMPONENTS = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor")
# The backward weights `inbetween train` writes, and those a model folder carries.
WEIGHTS_FILENAME = "backward.safetensors"


def bundled_model() -> Path | None:
    """The toy model shipped inside the package, or None if this checkout has none yet."""
    return BUNDLED_MODEL if (BUNDLED_MODEL / "model_index.json").is_file() else None


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a model-hub id (owner/name)."""
    parts = str(text).split("/")
    return len(parts) == 2 and all(parts) and not str(text).startswith((".", "~"))


def resolve_model(model: str | os.PathLike | None) -> str | Path | None:
    """The model to load: ``model`` as given (a folder, a hub id, or a bundled model's name:
    ``toy``, ``toy-ambiguous``), else the bundled toy model; None if neither."""
    if model in (None, ""):
        return bundled_model()
    path = Path(model)
    if not path.exists() and str(model) in NAMED_MODELS:
        path = NAMED_MODELS[str(model)]
        if not (path / "model_index.json").is_file():
            raise InbetweeningError(f"the bundled model {model!r} is not in this install")
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InbetweeningError(f"{path} is not a diffusers model folder (no "
                                    "model_index.json)")
        check_model_index(path)
        return path
    if is_hub_id(str(model)):
        return str(model)
    raise InbetweeningError(f"model folder not found: {model}")


def check_model_index(folder: Path) -> None:
    """A model folder's ``model_index.json`` must name every SVD component, each with a folder."""
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        raise InbetweeningError(f"{index_path}: not readable JSON ({e})") from None
    missing = [c for c in SVD_COMPONENTS
               if not isinstance(index, dict) or not isinstance(index.get(c), list)]
    if missing:
        raise InbetweeningError(f"{index_path} does not describe an SVD model (no "
                                f"{', '.join(missing)})")
    absent = [c for c in SVD_COMPONENTS if not (folder / c).is_dir()]
    if absent:
        raise InbetweeningError(f"{folder} lacks the component folders {', '.join(absent)}")


def model_inputs(model: str | os.PathLike | None = None,
                 backward: str | os.PathLike | None = None) -> list[Path]:
    """The files and folders on disk that a run with this model and these backward weights reads
    (what no output of that run may replace): the model folder (the bundled one by default) and
    the backward-weights file, where they are local."""
    found = []
    source = resolve_model(model)
    if isinstance(source, Path):
        found.append(source)
    if backward not in (None, "") and Path(backward).exists():
        found.append(Path(backward))
    return found


def check_backward(spec: str | os.PathLike | None) -> None:
    """Refuse, before anything is loaded, backward weights that are neither a local file nor a
    model-hub name (which is looked up when the model loads: :func:`resolve_backward`)."""
    if spec in (None, "") or Path(spec).is_file() or _hub_file(str(spec)) is not None:
        return
    raise InbetweeningError(f"backward weights file not found: {spec}")


def _hub_file(text: str) -> tuple[str, str] | None:
    """(repository, file) of a model-hub name of backward weights (``owner/name``: its
    backward.safetensors; ``owner/name/path/in/the/repo.safetensors``), or None."""
    parts = text.split("/")
    if (len(parts) >= 2 and all(parts) and not text.startswith((".", "~"))
            and (len(parts) == 2 or text.endswith(".safetensors"))):
        return "/".join(parts[:2]), "/".join(parts[2:]) or WEIGHTS_FILENAME
    return None


def resolve_backward(spec: str | os.PathLike) -> Path:
    """A backward-weights file: a local file, else from the model hub (through huggingface_hub,
    its cache and its ``HF_HUB_OFFLINE``) ``owner/name`` (that repository's
    ``backward.safetensors``) or ``owner/name/path/in/the/repo.safetensors``."""
    path = Path(spec)
    if path.is_file():
        return path
    check_backward(spec)
    repo, filename = _hub_file(str(spec))
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # noqa: BLE001 - offline, no such repository or file, no access ...
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InbetweeningError(f"backward weights {spec}: no such file here, and the model hub "
                                f"gave no {filename} of {repo} ({why})") from None

"""Finding and loading a model: the bundled toy model by default, or any diffusers SVD folder or
hub id; devices and dtypes by name. One place for what the CLI, the demo, training, evaluation
and the app all need."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch

from . import backward as bw
from .memory import apply_memory, memory_preset
from .pipeline import InbetweenPipeline
from .toy import models as toy_models
from .utils import InbetweeningError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def bundled_model() -> Path | None:
    """The toy model shipped inside the package, or None if this checkout has none yet."""
    folder = toy_models.BUNDLED_MODEL
    return folder if (folder / "model_index.json").is_file() else None


def default_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InbetweeningError(f"unknown device {device!r} (try cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InbetweeningError(f"device {device!r} cannot run a model (try cpu, cuda, cuda:1)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InbetweeningError(f"device {device!r} asked for, but no CUDA GPU is available")
    return dev


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """fp32 / fp16 / bf16; by default fp16 on a GPU and fp32 on the CPU."""
    if name in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InbetweeningError(f"unknown dtype {name!r}; choose fp32, fp16 or bf16")
    return DTYPES[name]


def tiny_random_components(num_frames: int = 8, seed: int = 0) -> dict:
    """An untrained SVD of the toy model's shapes: what commands run on when no trained model is
    available (they say so)."""
    torch.manual_seed(seed)
    return dict(vae=toy_models.vae().eval(), image_encoder=toy_models.image_encoder().eval(),
                unet=toy_models.unet(num_frames).eval(), scheduler=toy_models.scheduler(),
                feature_extractor=toy_models.feature_extractor())


def resolve_model(model: str | os.PathLike | None) -> str | Path | None:
    """The model to load: ``model`` as given (a folder, a hub id, or a bundled model's name:
    ``toy``, ``toy-ambiguous``), else the bundled toy model; None if neither."""
    if model not in (None, ""):
        path = Path(model)
        if not path.exists() and str(model) in toy_models.NAMED_MODELS:
            path = toy_models.NAMED_MODELS[str(model)]
            if not (path / "model_index.json").is_file():
                raise InbetweeningError(f"the bundled model {model!r} is not in this install")
        if path.exists():
            if not (path / "model_index.json").is_file():
                raise InbetweeningError(f"{path} is not a diffusers model folder (no "
                                        "model_index.json)")
            check_model_index(path)
            return path
        text = str(model)
        parts = text.split("/")
        if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
            return text  # a hub id (owner/name)
        raise InbetweeningError(f"model folder not found: {model}")
    return bundled_model()


SVD_COMPONENTS = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor")


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


@contextlib.contextmanager
def _quiet_loading():
    """Loading a pipeline: no per-component progress bars, no deprecation notices (diffusers
    renamed torch_dtype; older versions know only that name), no dtype-cast notices."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])


def load_pipeline(model=None, backward=None, device=None, dtype=None, *, quiet: bool = False,
                  allow_random: bool = True, compile: bool = False, memory: str | None = None):
    """An :class:`InbetweenPipeline` on ``device`` in ``dtype``.

    ``model``: a diffusers SVD folder or hub id; default the bundled toy model. Without either
    (a checkout whose toy model is not trained yet) a tiny untrained model is used and a note
    printed. ``backward``: a backward-weights file (default: the model folder's own
    ``backward.safetensors`` if it has one). ``compile``: the UNet ``torch.compile``-d (the
    attention control reaches through the wrapper; the first call of each shape compiles).
    ``memory``: a memory setting of :mod:`inbetweening.memory` (``default``, ``low``,
    ``lowest``): model offload (on a GPU), feed-forward chunking, and the row cap and decode
    chunk the pipeline's calls take when they give none.
    """
    memory_preset(memory)  # an unknown name is refused before anything loads
    dev = default_device(device) if not isinstance(device, torch.device) else device
    dt = parse_dtype(dtype, dev) if not isinstance(dtype, torch.dtype) else dtype
    source = resolve_model(model)
    if source is None:
        if not allow_random:
            raise InbetweeningError("no model given and no bundled toy model in this install")
        if not quiet:
            print("note: no trained toy model is bundled in this checkout; using a tiny UNTRAINED "
                  "model (its videos are noise)")
        pipe = InbetweenPipeline(**tiny_random_components())
        bw.init_backward_weights(pipe.unet, requires_grad=False)
        if backward is not None:
            pipe.load_backward_weights(backward)
    else:
        try:
            with _quiet_loading():
                pipe = InbetweenPipeline.from_pretrained(source, backward=backward, torch_dtype=dt)
        except InbetweeningError:
            raise
        except (OSError, ValueError, EnvironmentError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InbetweeningError(f"cannot load model {source}: {first}") from None
    with _quiet_loading():
        pipe.to(dev, dt)
    if compile:
        pipe.unet = torch.compile(pipe.unet)
    if memory is not None:
        apply_memory(pipe, memory, dev)
    if not quiet:
        pipe.set_progress_bar_config(leave=False)
    return pipe


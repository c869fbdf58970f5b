"""Finding and loading a model: the bundled toy model by default, or any diffusers SVD folder or
hub id; devices and dtypes by name. One place for what the CLI, the demo, training, evaluation
and the app all need."""

from __future__ import annotations

import contextlib
import warnings

import torch

from . import backward as bw
from .locate import bundled_model, resolve_model  # noqa: F401 (re-exported)
from .memory import apply_memory, memory_preset
from .pipeline import InbetweenPipeline
from .toy import models as toy_models
from .utils import InbetweeningError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def default_device(device: str | None = None) -> torch.device:
    """The device named (cpu, cuda, cuda:1, mps ...), or by default cuda if available, else the
    CPU; one that this machine or this torch does not have is refused (a GPU index beyond its
    GPUs, mps without Apple's GPU, an index on the CPU)."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InbetweeningError(f"unknown device {device!r} (try cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InbetweeningError(f"device {device!r} cannot run a model (try cpu, cuda, cuda:1)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InbetweeningError(f"device {device!r} asked for, but no CUDA GPU is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InbetweeningError(f"device {device!r} asked for, but this machine or this torch "
                                "has no MPS (Apple GPU) support")
    count = {"cpu": 1, "mps": 1, "cuda": dev.type == "cuda" and torch.cuda.device_count()}
    if dev.index is not None and dev.index >= count[dev.type]:
        there = f"{count[dev.type]} {dev.type} device{'s' * (count[dev.type] != 1)}"
        raise InbetweeningError(f"device {device!r} asked for, but there is no such device "
                                f"(this machine has {there}, numbered from 0)")
    return dev


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """fp32 / fp16 / bf16; by default fp16 on a GPU and fp32 on the CPU."""
    if name in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InbetweeningError(f"unknown dtype {name!r}; choose fp32, fp16 or bf16")
    return DTYPES[name]


def distributed_state(device: str | None = None):
    """This process's place among those started by ``accelerate launch`` or ``torchrun``
    (accelerate's ``PartialState``: ``process_index``, ``num_processes``, ``device``,
    ``wait_for_everyone()``); one process of one when started alone. The processes run on the
    CPU when ``device`` is ``"cpu"``, or when it is not given and there is no GPU."""
    from datetime import timedelta

    from accelerate import PartialState

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    return PartialState(cpu=cpu, timeout=timedelta(hours=24))


def tiny_random_components(num_frames: int = 8, seed: int = 0) -> dict:
    """An untrained SVD of the toy model's shapes: what commands run on when no trained model is
    available (they say so)."""
    torch.manual_seed(seed)
    return dict(vae=toy_models.vae().eval(), image_encoder=toy_models.image_encoder().eval(),
                unet=toy_models.unet(num_frames).eval(), scheduler=toy_models.scheduler(),
                feature_extractor=toy_models.feature_extractor())


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


def load_failure(source, error: Exception) -> str:
    """One line saying why ``source`` (a folder or a hub id) did not load: the first line of the
    loader's message, without its own repetition of the name or its pointer to a stack trace that
    the user does not see."""
    import re

    why = (str(error).strip().splitlines() or [type(error).__name__])[0]
    why = why.replace(f"Cannot load model {source}: ", "")
    why = re.sub(r"\s*(and an error occurred while trying to fetch metadata from the Hub\. )?"
                 r"Please check out the root cause in the stacktrace above\.?", "", why).rstrip()
    if isinstance(source, str) and "cached" in why:
        why = ("not in the local cache, and the model hub was not asked (offline: "
               "HF_HUB_OFFLINE) or could not be reached; download it once online, or give a "
               "local folder")
    where = "the model hub" if isinstance(source, str) else "its folder"
    return f"cannot load model {source} from {where}: {why}"


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
            raise InbetweeningError(load_failure(source, e)) from None
    with _quiet_loading():
        pipe.to(dev, dt)
    if compile:
        pipe.unet = torch.compile(pipe.unet)
    if memory is not None:
        apply_memory(pipe, memory, dev)
    if not quiet:
        pipe.set_progress_bar_config(leave=False)
    return pipe


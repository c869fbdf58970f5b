"""Memory settings in one word: ``default``, ``low``, ``lowest``.

Each preset combines the settings that lower a run's peak memory: model CPU offload (on a GPU:
only the model at work is on the GPU), feed-forward chunking (the UNet's feed-forward layers one
frame at a time), a cap on the rows of one UNet call (``max_unet_batch``; a forward row and its
backward row always go together, so 1 acts as 2) and chunked decoding (``decode_chunk_size``
frames at a time). This table is the one place they are named; loading
(:func:`inbetweening.loading.load_pipeline`), the command line (``--memory``) and the app read it.

The peaks below are estimates for SVD-XT at 1024x576, 25 frames, fp16, guidance on (4 UNet rows
a prediction), counted on the meta device (``benchmarks/full_size.py``; docs/full-size.md says
how). Offload, chunking and the row cap leave the sampled latents as they are (to float
rounding); a decode chunk smaller than the video changes the frames a little, as SVD's temporal
decoder mixes the frames it decodes together (the chunk is SVD's usual quality-for-memory trade:
its own scripts decode 14 at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

from .utils import InbetweeningError


@dataclass(frozen=True)
class MemoryPreset:
    """One memory setting."""

    offload: bool  # enable_model_cpu_offload (on a GPU only)
    forward_chunking: bool  # the UNet's enable_forward_chunking
    max_unet_batch: int | None  # rows of one UNet call; None: the call's own (all rows at once)
    decode_chunk: int | None  # frames decoded at once; None: the call's own (all frames)
    summary: str


MEMORY_PRESETS = {
    "default": MemoryPreset(offload=False, forward_chunking=False, max_unet_batch=None,
                            decode_chunk=None, summary="everything on the GPU, one UNet call a "
                            "prediction, all frames decoded at once (SVD-XT at 1024x576: an "
                            "80 GB GPU)"),
    "low": MemoryPreset(offload=True, forward_chunking=False, max_unet_batch=None,
                        decode_chunk=8, summary="model offload, 8 frames decoded at once (SVD-XT "
                        "at 1024x576: a 24 GB GPU)"),
    "lowest": MemoryPreset(offload=True, forward_chunking=True, max_unet_batch=2,
                           decode_chunk=2, summary="model offload, feed-forward chunking, UNet "
                           "calls of 2 rows, 2 frames decoded at once (SVD-XT at 1024x576: a "
                           "16 GB GPU)"),
}
MEMORY_NAMES = tuple(MEMORY_PRESETS)


def memory_preset(name: str | None) -> MemoryPreset:
    """The preset called ``name`` (None: ``default``)."""
    if name is None:
        name = "default"
    if name not in MEMORY_PRESETS:
        raise InbetweeningError(f"unknown memory setting {name!r}; choose one of "
                                f"{', '.join(MEMORY_NAMES)}")
    return MEMORY_PRESETS[name]


def set_forward_chunking(unet, on: bool) -> None:
    """The UNet's feed-forward layers one frame at a time (diffusers' ``enable_forward_chunking``)
    or all at once."""
    if on:
        unet.enable_forward_chunking()
        return
    for module in unet.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module.set_chunk_feed_forward(chunk_size=None)


def set_offload(pipe, on: bool, device) -> None:
    """Model CPU offload on ``device`` (a GPU; elsewhere nothing is offloaded) on or off; off
    after on puts the models back onto ``device``."""
    if on and str(device).startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    elif getattr(pipe, "_all_hooks", None):  # diffusers' offload hooks are on
        pipe.remove_all_hooks()
        pipe.to(device)


def apply_memory(pipe, name: str | None, device=None) -> MemoryPreset:
    """Put ``pipe`` (an :class:`~inbetweening.pipeline.InbetweenPipeline`) in the memory setting
    ``name``, from whatever setting it was in: offload (on a GPU; ``device``, default the
    pipeline's execution device), feed-forward chunking, and ``pipe.memory``, whose row cap and
    decode chunk the pipeline's calls take when they give none."""
    from .attention import unwrap

    preset = memory_preset(name)
    set_forward_chunking(unwrap(pipe.unet), preset.forward_chunking)
    set_offload(pipe, preset.offload, pipe._execution_device if device is None else device)
    pipe.memory = "default" if name is None else name
    return preset

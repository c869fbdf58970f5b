"""What a run holds in memory and what it computes, counted without running it at size.

Models built on the ``meta`` device have shapes and dtypes but no data, so the pipeline's own code
runs on them at any size in seconds (the real SVD-XT at 1024x576, 25 frames, fp16 included)
while two observers count:

:class:`LiveBytes`  a ``TorchDispatchMode`` that sees every tensor an operator makes and follows
    its storage until the storage dies: the bytes alive at each moment and their peak, per
    *phase* of the pipeline (``encode``, ``denoise``, ``decode``; :func:`phases`). Weights count
    from when :meth:`LiveBytes.adopt` is given them. This is what a GPU's allocator would hand out
    (``torch.cuda.max_memory_allocated``) for the same operators, less kernel workspaces.
:func:`fused_attention`  inside it, ``scaled_dot_product_attention`` on meta tensors allocates what
    the fused kernels (flash / memory-efficient on a GPU, the CPU's flash kernel) allocate, the
    output and a float32 log-sum-exp, instead of decomposing into the explicit ``softmax(QK^T)``
    map that the meta device would otherwise build.

:func:`record_calls` records, on any pipeline (a tiny one is enough: the calls do not depend on
the size), the UNet calls a video makes (phase of the temporal attention, rows) and the keyframe
encodes and decoded frames, so that work at full size can be counted call by call.

:func:`allocation_peak` measures the other way, on real tensors: the peak of the bytes the CPU
allocator hands out while a function runs (the profiler's memory events), to hold the counts to.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from . import attention

PHASES = ("prepare", "encode", "denoise", "decode")


def tensors_in(value):
    """The tensors in an operator's output (a tensor, or tuples and lists of them)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_in(v)


class LiveBytes(TorchDispatchMode):
    """Bytes of the live tensor storages on ``device_type`` made under this mode (and those
    :meth:`adopt` is given), their peak, and the peak in each phase (``self.phase``, set by
    :func:`phases`; :data:`PHASES`)."""

    def __init__(self, device_type: str = "meta"):
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, int] = {}  # id of a live storage -> its bytes
        self.now = self.peak = 0
        self.phase = PHASES[0]
        self.peaks: dict[str, int] = {}

    def set_phase(self, name: str) -> None:
        self.phase = name
        self.peaks[name] = max(self.peaks.get(name, 0), self.now)

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        key = id(storage)  # storages keep their Python object while they live
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.now += self.live[key]
        self.peak = max(self.peak, self.now)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def adopt(self, tensors) -> None:
        """Count tensors made before the mode (weights, inputs) until they die."""
        for t in tensors:
            self._add(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tensors_in(out):
            self._add(t)
        return out


def _kernel_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                      scale=None, **kwargs):
    """What a fused attention kernel allocates: the output and a float32 log-sum-exp per query
    (dropped on return, as ``scaled_dot_product_attention`` drops it)."""
    if attn_mask is not None:
        raise NotImplementedError("fused_attention models attention without a mask only")
    out = torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype,
                      device=query.device)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    del lse
    return out


@contextlib.contextmanager
def fused_attention():
    """``F.scaled_dot_product_attention`` on meta tensors as fused kernels allocate (see the
    module docstring); real tensors run as usual."""
    original = F.scaled_dot_product_attention

    def sdpa(query, *args, **kwargs):
        if query.device.type == "meta":
            return _kernel_attention(query, *args, **kwargs)
        return original(query, *args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class CPUSigmaScheduler(EulerDiscreteScheduler):
    """SVD's scheduler, computing its sigmas on the CPU whatever device it is given: the meta
    device has no values to compute them with (the pipeline moves them where its latents are)."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device="cpu", **kwargs)


def to_meta(pipe):
    """``pipe`` with its models on the meta device, for counting (its scheduler a
    :class:`CPUSigmaScheduler`); returns it."""
    pipe.to("meta")
    pipe.scheduler = CPUSigmaScheduler.from_config(pipe.scheduler.config)
    for proc in attention.installed(pipe.unet).values():
        proc.weights = {k: t.to("meta") for k, t in proc.weights.items()}
    return pipe


def model_bytes(module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size()
               for t in [*module.parameters(), *module.buffers()])


def _wrap_method(obj, name: str, before):
    """Replace ``obj.name`` on the instance by a wrapper that calls ``before(*args)`` first;
    returns the undo."""
    method, own = getattr(obj, name), vars(obj).get(name)

    def wrapped(*args, **kwargs):
        before(*args)
        return method(*args, **kwargs)

    setattr(obj, name, wrapped)
    return lambda: setattr(obj, name, own) if own is not None else delattr(obj, name)


@contextlib.contextmanager
def phases(pipe, tracker: LiveBytes):
    """Label ``tracker``'s counts by the pipeline's phase: ``encode`` from a CLIP or VAE encode,
    ``denoise`` from a UNet call, ``decode`` from a VAE decode (each lasting until the next)."""
    undo = [pipe.image_encoder.register_forward_pre_hook(
                lambda *a: tracker.set_phase("encode")).remove,
            attention.unwrap(pipe.unet).register_forward_pre_hook(
                lambda *a: tracker.set_phase("denoise")).remove,
            _wrap_method(pipe.vae, "encode", lambda *a: tracker.set_phase("encode")),
            _wrap_method(pipe.vae, "decode", lambda *a: tracker.set_phase("decode"))]
    try:
        yield tracker
    finally:
        for u in undo:
            u()


# What ``enable_model_cpu_offload`` (diffusers' hooks, sequence image_encoder -> unet -> vae)
# keeps off the GPU in each phase: a model is loaded when called and the one before it in the
# sequence is offloaded then; so the VAE, loaded for the keyframe encodes, stays through the
# UNet calls, and the UNet leaves when the VAE decodes.
OFFLOADED = {"prepare": ("image_encoder", "unet", "vae"), "encode": ("unet",),
             "denoise": ("image_encoder",), "decode": ("image_encoder", "unet")}


def offload_peak(peaks: dict[str, int], weights: dict[str, int]) -> int:
    """The peak of a run counted with every model resident (``peaks`` by phase, as
    :class:`LiveBytes` gives them), less in each phase the weights that model CPU offload keeps
    off the GPU (``weights``: bytes by component name)."""
    return max(p - sum(weights[m] for m in OFFLOADED[phase]) for phase, p in peaks.items())


@dataclass
class CallRecord:
    """What one pipeline call did: its UNet calls as (attention phase, rows), keyframe images
    encoded by CLIP and by the VAE, and frames decoded."""

    unet_calls: list[tuple[str, int]] = field(default_factory=list)
    clip_images: int = 0
    vae_images: int = 0
    decoded_frames: int = 0

    def unet_rows(self) -> int:
        return sum(rows for _, rows in self.unet_calls)


@contextlib.contextmanager
def record_calls(pipe):
    """Record the :class:`CallRecord` of the pipeline calls made inside the block."""
    record = CallRecord()
    unet = attention.unwrap(pipe.unet)

    def on_unet(module, args, kwargs):
        procs = attention.installed(unet)
        phase = next(iter(procs.values())).phase if procs else "plain"
        sample = args[0] if args else kwargs["sample"]
        record.unet_calls.append((phase, int(sample.shape[0])))

    def on_clip(module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        record.clip_images += int(pixels.shape[0])

    def on_encode(x, *rest):
        record.vae_images += int(x.shape[0])

    def on_decode(z, *rest):
        record.decoded_frames += int(z.shape[0])

    undo = [unet.register_forward_pre_hook(on_unet, with_kwargs=True).remove,
            pipe.image_encoder.register_forward_pre_hook(on_clip, with_kwargs=True).remove,
            _wrap_method(pipe.vae, "encode", on_encode),
            _wrap_method(pipe.vae, "decode", on_decode)]
    try:
        yield record
    finally:
        for u in undo:
            u()


def allocation_peak(fn) -> tuple[int, object]:
    """Run ``fn()`` on the CPU under the profiler; the peak of the bytes allocated (less those
    freed) while it ran, from the allocator's own memory events, and ``fn``'s result."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    now = peak = 0
    for _, n in events:
        now += n
        peak = max(peak, now)
    return peak, result

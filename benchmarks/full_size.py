"""At the real size (SVD-XT, 1024x576, 25 frames): the work counted, GPU memory estimated, and
real CPU runs to hold the estimates to.

    python benchmarks/full_size.py              # count, estimate, validate, CPU rows at 256x128x4
    nice -n 10 python benchmarks/full_size.py --cpu-size 1024x576 --cpu-frames 25
                            # + the CPU rows at full size (hours at one thread; up to ~19 GB)
    python benchmarks/full_size.py --device cuda    # + measured GPU rows beside the estimates

Parts, each saved to full_size.json as soon as it is done (a rerun goes on from there; ``--redo
PART`` does one again; the table full_size.md is rewritten from the JSON every time):

``count``     FLOPs (torch's FlopCounterMode on the meta device: no weights): per UNet row at
              1024x576 / 576x1024 and 14 / 25 frames, per fused prediction with and without
              guidance, per VAE decode, VAE encode and CLIP encode, and per video for each recipe
              and method (its UNet calls recorded through the pipeline on a tiny model: the
              calls do not depend on the size); floor seconds per video on A100 / H100 / RTX 4090
              at their dense fp16/bf16 peak and at 40 % of it.
``estimate``  peak GPU memory of a whole fp16 video at 1024x576x25 per memory setting: the
              pipeline itself runs on meta-device models under ``footprint.LiveBytes`` (live
              tensor bytes, attention as fused kernels allocate it), once per row cap, decode
              chunk and feed-forward chunking; model offload from the same runs, by phase.
``validate``  the same counting against real CPU allocations (the profiler's memory events) at a
              small size: UNet rows, VAE decodes and a whole pipeline call.
``cpu``       real CPU rows at ``--cpu-size`` (random SVD-XT weights), each in its own
              subprocess, resumable per row: a plain forward row, a fused call (forward and
              backward rows, backward weights = base + noise) with max_unet_batch 2 and 1, whose
              forward row must equal the plain one; VAE decodes with decode_chunk_size 8, 2, 1.
              Seconds, peak RSS and allocator peak per row beside the count.
``gpu``       with ``--device cuda``: SVD-XT with random fp16 weights: seconds per fused
              prediction against the reference path's two calls, per video per recipe, and
              ``torch.cuda.max_memory_allocated`` per memory setting beside the estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from sampling import build_unet, denoiser  # benchmarks/sampling.py
from torch.utils.flop_counter import FlopCounterMode

from inbetweening import attention, backward, footprint
from inbetweening.memory import MEMORY_PRESETS, set_forward_chunking, set_offload
from inbetweening.methods import METHOD_RECORDS, METHODS, layer_plans
from inbetweening.options import RECIPES, SamplingOptions

GIB = 2**30
FULL = (1024, 576, 25)  # width, height, frames
# Dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOPS, and where they are from.
GPUS = {
    "A100": (312.0, "A100 SXM/PCIe datasheet: FP16/BF16 Tensor Core 312 TFLOPS (624 sparse)"),
    "H100": (989.4, "H100 SXM datasheet: FP16/BF16 Tensor Core 1,979 TFLOPS sparse = 989 dense"),
    "RTX 4090": (165.2, "Ada (AD102) whitepaper: FP16/BF16 tensor, FP32 accumulate (what "
                        "PyTorch uses) 165.2 TFLOPS dense (330.3 with FP16 accumulate)"),
}
UTILISATION = 0.4
# A card fits a run when tracked peak x (1 + FRAGMENTATION) + CONTEXT_GIB <= its memory: the
# CUDA context and cuBLAS/cuDNN workspaces are not tensors, the caching allocator rounds and
# fragments.
CARDS_GIB, CONTEXT_GIB, FRAGMENTATION = (80, 40, 24, 16), 1.0, 0.10
SVD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
               down_block_types=("DownEncoderBlock2D",) * 4,
               block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=768,
               scaling_factor=0.18215, force_upcast=True)
SVD_CLIP = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=16, image_size=224, patch_size=14, projection_dim=1024,
                hidden_act="gelu", layer_norm_eps=1e-5)
# The CPU rows: what each runs. The UNet rows chunk the feed-forward layers (the same numbers,
# but the fused call's 2 rows then fit this 24 GB machine in fp32); a decode row decodes one
# chunk (every chunk of a decode is alike: that is its peak).
CPU_ROWS = {
    "unet-plain": dict(kind="unet", method="forward", max_rows=None),
    "unet-fused-b2": dict(kind="unet", method="gi", max_rows=2),
    "vae-decode-c8": dict(kind="decode", chunk=8),
    "vae-decode-c2": dict(kind="decode", chunk=2),
    "vae-decode-c1": dict(kind="decode", chunk=1),
    "unet-fused-b1": dict(kind="unet", method="gi", max_rows=1),
}
META = torch.device("meta")
OWN = "own settings"  # the recipe column of a method recipes do not apply to
# The counted pieces of a video besides its UNet calls.
DECODE, VAE_ENCODE = "VAE decode (25 frames at 1024x576)", "VAE encode (1 keyframe at 1024x576)"
CLIP_ENCODE = "CLIP encode (1 keyframe, at 224x224)"
DECODE_CHUNKS = (25, 14, 8, 4, 2, 1)  # 14: what Stability's own SVD scripts decode at once


# -- models ---------------------------------------------------------------------------------------
def svd_vae(device, dtype):
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(1)
    with torch.device(device):
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE)
    return vae.to(device, dtype).eval().requires_grad_(False)


def svd_clip(device, dtype, tiny: bool = False):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = SVD_CLIP if not tiny else dict(SVD_CLIP, hidden_size=32, intermediate_size=37,
                                              num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(2)
    with torch.device(device):
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    return clip.to(device, dtype).eval().requires_grad_(False)


def perturb(unet, scale: float = 0.02) -> None:
    """Backward weights = base + noise, so the backward rows differ from the forward ones."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in backward.backward_parameters(unet).values():
            p.add_((torch.randn(p.shape, generator=g) * scale).to(p.device, p.dtype))


def svd_pipe(device, dtype, tiny_clip: bool = False):
    """InbetweenPipeline of SVD-XT's UNet, SVD's VAE and CLIP (random weights) on ``device``
    (``meta``: shapes only, whose scheduler keeps its sigmas on the CPU)."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPImageProcessor

    from inbetweening.pipeline import InbetweenPipeline
    from inbetweening.toy.models import SVD_SCHEDULER_CONFIG

    unet = build_unet("svd-xt", device, dtype)
    scheduler = (footprint.CPUSigmaScheduler if device.type == "meta"
                 else EulerDiscreteScheduler)(**SVD_SCHEDULER_CONFIG)
    pipe = InbetweenPipeline(vae=svd_vae(device, dtype), image_encoder=svd_clip(device, dtype,
                                                                                 tiny_clip),
                             unet=unet, scheduler=scheduler,
                             feature_extractor=CLIPImageProcessor())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_of(pipe) -> dict[str, int]:
    out = {n: footprint.model_bytes(getattr(pipe, n)) for n in ("image_encoder", "unet", "vae")}
    out["unet"] += sum(t.numel() * t.element_size()
                       for t in backward.backward_parameters(pipe.unet).values())
    return out


def all_weights(pipe) -> list[torch.Tensor]:
    tensors = [t for n in ("image_encoder", "unet", "vae") for m in [getattr(pipe, n)]
               for t in [*m.parameters(), *m.buffers()]]
    return tensors + list(backward.backward_parameters(pipe.unet).values())


# -- count ----------------------------------------------------------------------------------------
def flops(fn) -> float:
    """TFLOPs of ``fn()`` (on meta tensors)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def unet_call(unet, phase: str, rows: int, method: str, frames: int, latent_hw, device=META):
    """``fn()`` making one UNet call of ``rows`` rows in the temporal attention ``phase`` with
    ``method``'s plans (on zeros: the values change neither the work nor the time)."""
    c, dt = unet.config, unet.dtype
    plans = layer_plans(method, unet, "rotation")
    inputs = (torch.zeros(rows, frames, c.in_channels, *latent_hw, device=device, dtype=dt),
              torch.zeros(1, device=device, dtype=dt),
              torch.zeros(rows, 1, c.cross_attention_dim, device=device, dtype=dt),
              torch.zeros(rows, 3, device=device, dtype=dt))

    def call():
        with attention.phase(unet, phase, plans if phase != "plain" else None):
            unet(*inputs, return_dict=False)
    return call


def call_records() -> dict:
    """(recipe, method) -> the footprint.CallRecord of one video, through the pipeline on the
    tiny untrained model (the calls a video makes do not depend on the model's size); a method
    that recipes do not apply to once, under the recipe name OWN (its own settings)."""
    from inbetweening.loading import tiny_random_components
    from inbetweening.pipeline import InbetweenPipeline

    pipe = InbetweenPipeline(**tiny_random_components())
    backward.init_backward_weights(pipe.unet, requires_grad=False)
    pipe.set_progress_bar_config(disable=True)
    keyframes = torch.rand(3, 64, 64), torch.rand(3, 64, 64)
    out = {}
    for method in METHODS:  # recipes apply to the tunable methods; the others run their own
        for recipe in RECIPES if METHOD_RECORDS[method].tunable else (None,):
            kw = SamplingOptions(recipe=recipe, method=method, frames=3).call_kwargs()
            with footprint.record_calls(pipe) as record:
                pipe(*keyframes, output_type="latent", generator=torch.Generator().manual_seed(0),
                     **kw)
            out[recipe or OWN, method] = (record, pipe.num_predictions)
    return out


def count_part() -> dict:
    unet = build_unet("svd-xt", META, torch.float16)
    w, h, f = FULL
    rows = {f"{ww}x{hh}x{ff}": flops(unet_call(unet, "plain", 1, "forward", ff, (hh // 8, ww // 8)))
            for ww, hh in ((w, h), (h, w)) for ff in (14, 25)}
    per_prediction = {}
    for guided in (True, False):
        den, x = denoiser(unet, {}, f, (h // 8, w // 8), META, torch.float16, guidance=guided)
        sigma = torch.tensor(2.0, device=META)
        per_prediction["gi, guidance" if guided else "gi, no guidance"] = flops(
            lambda: den(x, sigma))
    pipe = svd_pipe(META, torch.float16)
    image = torch.zeros(1, 3, h, w, device=META, dtype=torch.float16)
    units = {
        DECODE: flops(lambda: pipe.decode(
            torch.zeros(1, f, 4, h // 8, w // 8, device=META), f)),
        VAE_ENCODE: flops(lambda: pipe.vae.encode(image)),
        CLIP_ENCODE: flops(lambda: pipe.image_encoder(
            torch.zeros(1, 3, 224, 224, device=META, dtype=torch.float16))),
    }
    videos = per_video(unet, units, call_records())
    return {"unet_row": rows, "prediction": per_prediction, "units": units, "videos": videos,
            "gpus": {k: {"tflops": v[0], "source": v[1]} for k, v in GPUS.items()}}


def per_video(unet, units: dict, records: dict) -> list[dict]:
    """TFLOPs per video of each (recipe, method) at full size, call by recorded call."""
    w, h, f = FULL
    return video_costs(records, "tflops",
                       lambda *key: flops(unet_call(unet, *key, f, (h // 8, w // 8))),
                       lambda r: units[DECODE] + r.clip_images * units[CLIP_ENCODE]
                       + r.vae_images * units[VAE_ENCODE])


def video_costs(records: dict, name: str, call_cost, fixed_cost) -> list[dict]:
    """For each (recipe, method) of ``records`` (see :func:`call_records`): ``fixed_cost(record)``
    plus ``call_cost(phase, rows, method)`` of each of its UNet calls (each kind of call costed
    once; ``method`` names the plans of the temporal layers, ``forward`` for plain calls)."""
    cache, out = {}, []
    for (recipe, method), (record, predictions) in records.items():
        total = fixed_cost(record)
        for phase, rows in record.unet_calls:
            key = (phase, rows, method if phase != "plain" else "forward")
            if key not in cache:
                cache[key] = call_cost(*key)
            total += cache[key]
        out.append({"recipe": recipe, "method": method, "predictions": predictions,
                    "unet_calls": len(record.unet_calls), "unet_rows": record.unet_rows(),
                    name: total})
    return out


# -- estimate -------------------------------------------------------------------------------------
def tracked_call(pipe, fn, device_type: str = "meta") -> footprint.LiveBytes:
    """``fn()`` under a LiveBytes tracker (weights adopted first), phases labelled."""
    tracker = footprint.LiveBytes(device_type)
    with torch.no_grad(), footprint.fused_attention(), tracker, footprint.phases(pipe, tracker):
        tracker.adopt(all_weights(pipe))
        fn()
    return tracker


def video_peaks(pipe, size, frames: int, max_rows, chunk, chunking: bool) -> dict:
    """Tracked peaks of one pipeline call (one prediction: every prediction frees what it made,
    so more steps change nothing) with and without model offload, in GiB, by phase."""
    import PIL.Image

    unet = attention.unwrap(pipe.unet)
    set_forward_chunking(unet, chunking)
    keyframe = PIL.Image.new("RGB", size)
    try:
        tracker = tracked_call(pipe, lambda: pipe(
            keyframe, keyframe, num_frames=frames, num_inference_steps=1, reinject_count=0,
            output_type="pt", max_unet_batch=max_rows, decode_chunk_size=chunk))
    finally:
        set_forward_chunking(unet, False)
    weights = weights_of(pipe)
    return {"phases": {k: v / GIB for k, v in tracker.peaks.items()},
            "peak": tracker.peak / GIB,
            "offload_peak": footprint.offload_peak(tracker.peaks, weights) / GIB,
            "weights": {k: v / GIB for k, v in weights.items()}}


def fits(gib: float) -> list[int]:
    return [c for c in CARDS_GIB if gib * (1 + FRAGMENTATION) + CONTEXT_GIB <= c]


def estimate_part() -> dict:
    w, h, f = FULL
    pipe = svd_pipe(META, torch.float16)
    grid = []
    for chunking in (False, True):
        for max_rows in (None, 2, 1):
            for chunk in DECODE_CHUNKS:
                r = video_peaks(pipe, (w, h), f, max_rows, chunk, chunking)
                grid.append({"max_unet_batch": max_rows or 4, "decode_chunk": chunk,
                             "forward_chunking": chunking, **r})
                print(f"estimate: rows {max_rows or 4}, chunk {chunk}, ff {chunking}: "
                      f"{r['peak']:.1f} GiB ({r['offload_peak']:.1f} offloaded)", flush=True)
    return {"size": f"{w}x{h}x{f}", "dtype": "fp16", "grid": grid}


def preset_rows(grid: list[dict]) -> list[dict]:
    """Each memory preset's estimate, read from the grid."""
    out = []
    for name, p in MEMORY_PRESETS.items():
        peak = estimated(grid, {"max_unet_batch": p.max_unet_batch or 4,
                                "decode_chunk": p.decode_chunk or FULL[2],
                                "forward_chunking": p.forward_chunking, "offload": p.offload})
        out.append({"preset": name, "peak": peak, "fits": fits(peak), "summary": p.summary})
    return out


# -- validate: the count against real allocations, small ----------------------------------------
def activations(pipe, fn, device_type: str = "meta") -> float:
    """GiB that ``fn()`` allocates at its peak beyond the weights and its inputs (tracked)."""
    tracker = footprint.LiveBytes(device_type)
    with torch.no_grad(), footprint.fused_attention(), tracker:
        tracker.adopt(all_weights(pipe))
        start = tracker.now
        fn()
    return (tracker.peak - start) / GIB


def measured(fn) -> float:
    """GiB the CPU allocator handed out at the peak of ``fn()`` beyond what was there."""
    with torch.no_grad():
        peak, _ = footprint.allocation_peak(fn)
    return peak / GIB


def validation_calls(pipe, device, size, frames: int) -> dict:
    """name -> fn() of the checked calls on ``pipe`` (real or meta) at ``size``."""
    import PIL.Image

    w, h = size
    sigma = torch.tensor(2.0, device=device)
    calls = {}
    for name, method, rows, guided in (("UNet: plain row", "forward", None, False),
                                       ("UNet: fused call, 2 rows", "gi", None, False),
                                       ("UNet: fused prediction with guidance, 2 calls of 2 rows",
                                        "gi", 2, True)):
        den, x = denoiser(pipe.unet, {"max_rows": rows}, frames, (h // 8, w // 8), device,
                          torch.float32, method=method, guidance=guided)
        calls[name] = (lambda d, z: lambda: d(z, sigma))(den, x)
    z = torch.randn(1, frames, 4, h // 8, w // 8).to(device)
    for chunk in (frames, 2, 1):
        calls[f"VAE decode, chunk {chunk}"] = (lambda c: lambda: pipe.decode(z, c))(chunk)
    keyframe = PIL.Image.new("RGB", size)
    calls["whole pipeline call (1 step, guidance)"] = lambda: pipe(
        keyframe, keyframe, num_frames=frames, height=h, width=w, num_inference_steps=1,
        reinject_count=0, output_type="pt", generator=torch.Generator().manual_seed(0))
    return calls


def validate_part(size=(256, 128), frames: int = 4) -> dict:
    real = svd_pipe(torch.device("cpu"), torch.float32, tiny_clip=True)
    perturb(real.unet)
    meta = svd_pipe(META, torch.float32, tiny_clip=True)
    real_calls = validation_calls(real, torch.device("cpu"), size, frames)
    meta_calls = validation_calls(meta, META, size, frames)
    rows = []
    for name, fn in real_calls.items():
        with torch.no_grad():
            fn()  # a first call also allocates what the CPU kernels keep for later calls
        got, counted = measured(fn), activations(meta, meta_calls[name])
        rows.append({"call": name, "allocated_gib": got, "counted_gib": counted})
        print(f"validate: {name}: allocated {got:.3f} GiB, counted {counted:.3f} GiB", flush=True)
    return {"size": f"{size[0]}x{size[1]}x{frames}", "dtype": "fp32", "rows": rows}


# -- cpu: real rows, one subprocess each ----------------------------------------------------------
def rss_gib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def timed(fn) -> dict:
    """Seconds, peak RSS (reset first), and the allocator's peak of ``fn()``."""
    base = rss_gib()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM)
    except OSError:
        pass
    t0, c0 = time.perf_counter(), time.process_time()
    alloc = measured(fn)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "rss_base_gib": base, "rss_peak_gib": rss_gib("VmHWM"), "allocated_gib": alloc}


def unet_row(spec: dict, size, frames: int, dtype, work: Path) -> dict:
    w, h = size
    cpu = torch.device("cpu")
    unet = build_unet("svd-xt", cpu, dtype)
    perturb(unet)
    set_forward_chunking(unet, True)
    den, x = denoiser(unet, {"max_rows": spec["max_rows"]}, frames, (h // 8, w // 8), cpu, dtype,
                      method=spec["method"], guidance=False)
    outputs = []
    attention.unwrap(unet).register_forward_hook(
        lambda m, args, out: outputs.append(out[0].detach()[:1].float().clone()))
    sigma = torch.tensor(2.0)
    result = timed(lambda: den(x, sigma))
    result["unet_calls"] = len(outputs)
    result["rows"] = 2 if spec["method"] != "forward" else 1
    forward = outputs[0][0]
    plain = work / "unet-plain.pt"
    if spec["method"] == "forward":
        torch.save(forward, plain)
    elif plain.is_file():
        ref = torch.load(plain)
        diff = (forward - ref).abs().max().item()
        result["forward_row_max_diff"] = diff
        result["forward_row_scale"] = ref.abs().max().item()
        result["forward_row_equal"] = diff <= 1e-4 * max(ref.abs().max().item(), 1.0)
    return result


def decode_row(spec: dict, size, frames: int, dtype) -> dict:
    from inbetweening.loading import tiny_random_components
    from inbetweening.pipeline import InbetweenPipeline

    w, h = size
    pipe = InbetweenPipeline(**{**tiny_random_components(),
                                "vae": svd_vae(torch.device("cpu"), dtype)})
    chunk = min(spec["chunk"], frames)
    z = torch.randn(1, chunk, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(0))
    return {**timed(lambda: pipe.decode(z, chunk)), "frames_decoded": chunk}


def row_child(name: str, size, frames: int, dtype, work: Path) -> None:
    spec = CPU_ROWS[name]
    work.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "unet":
        result = unet_row(spec, size, frames, dtype, work)
    else:
        result = decode_row(spec, size, frames, dtype)
    (work / f"{name}.json").write_text(json.dumps(result, indent=2))


def row_estimate(name: str, size, frames: int, dtype) -> float:
    """The tracked activations of a CPU row (meta device, same dtype), GiB."""
    spec, (w, h) = CPU_ROWS[name], size
    pipe = svd_pipe(META, dtype, tiny_clip=True)
    if spec["kind"] == "decode":
        chunk = min(spec["chunk"], frames)
        z = torch.zeros(1, chunk, 4, h // 8, w // 8, device=META)
        return activations(pipe, lambda: pipe.decode(z, chunk))
    set_forward_chunking(pipe.unet, True)
    den, x = denoiser(pipe.unet, {"max_rows": spec["max_rows"]}, frames, (h // 8, w // 8), META,
                      dtype, method=spec["method"], guidance=False)
    sigma = torch.tensor(2.0, device=META)
    return activations(pipe, lambda: den(x, sigma))


def cpu_rows(state: dict, a, save) -> None:
    """Run each CPU row not yet done in its own subprocess; save after each."""
    size, frames, dtype = a.cpu_size, a.cpu_frames, a.cpu_dtype
    tag = f"{size[0]}x{size[1]}x{frames}-{dtype}"
    work = a.work / tag
    rows = state.setdefault("cpu", {}).setdefault(tag, {})
    for name in CPU_ROWS:
        if name in rows and name not in a.redo:
            continue
        record = work / f"{name}.json"
        if name in a.redo:
            record.unlink(missing_ok=True)
        if not record.is_file():  # (a record written before the last save is kept)
            print(f"cpu row {name} at {tag} ...", flush=True)
            run_row(name, a)
        result = json.loads(record.read_text())
        result["counted_gib"] = row_estimate(name, size, frames, DTYPES[dtype])
        rows[name] = result
        save()


def run_row(name: str, a) -> None:
    """One CPU row in its own process (its peak RSS is its own)."""
    size, frames = a.cpu_size, a.cpu_frames
    cmd = [sys.executable, __file__, "--row", name, "--cpu-size", f"{size[0]}x{size[1]}",
           "--cpu-frames", str(frames), "--cpu-dtype", a.cpu_dtype, "--work", str(a.work),
           "--threads", str(a.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    subprocess.run(cmd, check=True, env=env)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_part(size=(256, 128), frames: int = 4) -> dict:
    """CPU seconds (process time, one thread: robust to a busy machine) of one plain UNet row in
    fp32 and bf16 on this CPU, each the best of 2."""
    cpu, (w, h), threads = torch.device("cpu"), size, torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name in ("fp32", "bf16"):
        unet = build_unet("svd-xt", cpu, DTYPES[name])
        den, x = denoiser(unet, {}, frames, (h // 8, w // 8), cpu, DTYPES[name],
                          method="forward", guidance=False)
        sigma, times = torch.tensor(2.0), []
        with torch.no_grad():
            for _ in range(2):
                t0 = time.process_time()
                den(x, sigma)
                times.append(time.process_time() - t0)
        out[name] = min(times)
        del unet, den
    torch.set_num_threads(threads)
    out["faster"] = min(("fp32", "bf16"), key=out.get)
    out["size"] = f"{w}x{h}x{frames}"
    return out


# -- gpu: measured ---------------------------------------------------------------------------------
def cuda_seconds(fn, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` on the GPU after a warm-up call."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gpu_predictions(pipe, device) -> dict:
    """Seconds per gi prediction with guidance: fused (one call, calls of 2 rows) and the
    reference path's two calls."""
    w, h, f = FULL
    sigma = torch.tensor(2.0, device=device)
    out = {}
    for name, mode in (("fused", {}), ("fused, calls of 2 rows", {"max_rows": 2}),
                       ("reference (two calls)", {"dual_pass": "reference"})):
        den, x = denoiser(pipe.unet, mode, f, (h // 8, w // 8), device, torch.float16)
        out[name] = cuda_seconds(lambda: den(x, sigma))
    return out


def gpu_videos(pipe, device) -> list[dict]:
    """Seconds per video of each (recipe, method): its recorded UNet calls, each kind timed once,
    plus the keyframe encodes (CLIP and VAE) and the decode, timed."""
    w, h, f = FULL
    unet = attention.unwrap(pipe.unet)
    image = torch.zeros(1, 3, h, w, device=device)
    decode = cuda_seconds(lambda: pipe.decode(torch.zeros(1, f, 4, h // 8, w // 8,
                                                          device=device), f), 1)
    encode = cuda_seconds(lambda: pipe.encode_keyframe(image, 0.02, torch.zeros_like(image),
                                                       device), 2)
    return video_costs(call_records(), "seconds",
                       lambda *key: cuda_seconds(unet_call(unet, *key, f, (h // 8, w // 8),
                                                           device)),
                       lambda r: decode + encode * r.clip_images)


def gpu_memory(pipe, device) -> list[dict]:
    """torch.cuda.max_memory_allocated of one whole call (1 step) per setting, GiB."""
    import PIL.Image

    w, h, f = FULL
    keyframe, out = PIL.Image.new("RGB", (w, h)), []
    unet = attention.unwrap(pipe.unet)
    settings = [(False, rows, chunk, ff) for ff in (False, True) for rows in (None, 2)
                for chunk in (f, 8, 2)]
    settings += [(True, p.max_unet_batch, p.decode_chunk or f, p.forward_chunking)
                 for p in MEMORY_PRESETS.values() if p.offload]
    for offload, rows, chunk, ff in settings:
        set_offload(pipe, offload, device)
        set_forward_chunking(unet, ff)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            pipe(keyframe, keyframe, num_frames=f, num_inference_steps=1, reinject_count=0,
                 output_type="pt", max_unet_batch=rows, decode_chunk_size=chunk)
        out.append({"offload": offload, "max_unet_batch": rows or 4, "decode_chunk": chunk,
                    "forward_chunking": ff,
                    "max_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
                    "max_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB})
        print(f"gpu memory: {out[-1]}", flush=True)
    set_offload(pipe, False, device)
    set_forward_chunking(unet, False)
    return out


def gpu_part(device) -> dict:
    pipe = svd_pipe(device, torch.float16)
    perturb(pipe.unet)
    return {"device": torch.cuda.get_device_name(device),
            "prediction_seconds": gpu_predictions(pipe, device),
            "videos": gpu_videos(pipe, device), "memory": gpu_memory(pipe, device)}


# -- the table ------------------------------------------------------------------------------------
def _gib(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _fits(gib: float) -> str:
    return ", ".join(str(c) for c in fits(gib)) or "none"


def count_md(c: dict) -> list[str]:
    lines = ["## Work, counted", "",
             "TFLOPs (multiply-adds x 2) by torch's FlopCounterMode, the models on the meta "
             "device (no weights). One UNet row = one UNet input of one direction, one guidance "
             "branch:", "", "| UNet row at | TFLOPs |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in c["unet_row"].items()]
    lines += ["", "| one call | TFLOPs |", "|---|---|"]
    lines += [f"| fused prediction, {k} (1024x576x25) | {v:.1f} |"
              for k, v in c["prediction"].items()]
    lines += [f"| {k} | {v:.2f} |" for k, v in c["units"].items()]
    gpus = c["gpus"]
    head = " | ".join(f"{g} s (peak / 40 %)" for g in gpus)
    lines += ["", "Per video at 1024x576x25: the UNet calls each (recipe, method) makes, recorded "
              "through the pipeline (on a tiny model: the calls do not depend on the size), each "
              "counted at full size, plus keyframe encodes and the decode. Floor seconds = "
              "FLOPs / the GPU's dense fp16/bf16 tensor peak, and at 40 % of it:", "",
              "| recipe | method | predictions | UNet rows | rows / prediction | PFLOPs | "
              f"{head} |",
              "|---|---|---|---|---|---|" + "---|" * len(gpus)]
    for v in c["videos"]:
        floors = " | ".join(f"{v['tflops'] / g['tflops']:.0f} / "
                            f"{v['tflops'] / (g['tflops'] * UTILISATION):.0f}"
                            for g in gpus.values())
        lines.append(f"| {v['recipe']} | {v['method']} | {v['predictions']} | {v['unet_rows']} | "
                     f"{v['unet_rows'] / v['predictions']:.1f} | {v['tflops'] / 1e3:.1f} | "
                     f"{floors} |")
    lines += [""] + [f"- {g}: {v['tflops']:g} TFLOPS ({v['source']})" for g, v in gpus.items()]
    return lines + [""]


def estimate_md(e: dict) -> list[str]:
    lines = ["## GPU memory, estimated", "",
             f"A whole video at {e['size']}, {e['dtype']}, `gi` with guidance (4 UNet rows a "
             "prediction), the VAE upcast to fp32 as the pipeline does (SVD's force_upcast). The "
             "pipeline ran on meta-device models under `footprint.LiveBytes` (the bytes of live "
             "tensors, weights included; attention as fused kernels allocate it). GiB at the peak "
             "of each phase and of the call; with model offload the same run less, in each "
             "phase, the models diffusers' hooks keep on the CPU then. Fits: the cards (GiB) "
             f"where peak x {1 + FRAGMENTATION:.1f} + {CONTEXT_GIB:g} GiB (CUDA context, "
             "workspaces, allocator) fits.", "",
             "| ff chunking | max_unet_batch | decode chunk | encode | denoise | decode | peak | "
             "fits | peak, offload | fits |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in e["grid"]:
        ph = r["phases"]
        lines.append(f"| {'yes' if r['forward_chunking'] else 'no'} | {r['max_unet_batch']} | "
                     f"{r['decode_chunk']} | {_gib(ph.get('encode'))} | "
                     f"{_gib(ph.get('denoise'))} | {_gib(ph.get('decode'))} | "
                     f"{_gib(r['peak'])} | {_fits(r['peak'])} | {_gib(r['offload_peak'])} | "
                     f"{_fits(r['offload_peak'])} |")
    w = e["grid"][0]["weights"]
    lines += ["", "Weights (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in w.items()) +
              " (fp16; the VAE doubles while upcast).", "",
              "| `--memory` | estimated peak | fits | what it sets |", "|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['peak']:.1f} GiB | {_fits(r['peak'])} | {r['summary']} |"
              for r in preset_rows(e["grid"])]
    return lines + [""]


def checks_md(state: dict) -> list[str]:
    lines = ["## The count against real runs (CPU)", ""]
    v = state.get("validate")
    if v:
        lines += [f"At {v['size']}, {v['dtype']}: the peak the CPU allocator handed out (the "
                  "profiler's memory events) beyond weights and inputs, against the same call "
                  "counted on meta models:", "",
                  "| call | allocated GiB | counted GiB | counted / allocated |",
                  "|---|---|---|---|"]
        lines += [f"| {r['call']} | {r['allocated_gib']:.3f} | {r['counted_gib']:.3f} | "
                  f"{r['counted_gib'] / r['allocated_gib']:.2f} |" for r in v["rows"]]
        lines.append("")
    for tag, rows in state.get("cpu", {}).items():
        lines += [f"CPU rows at {tag} (SVD-XT UNet / SVD VAE, random weights, each in its own "
                  "process; guidance off: a plain row is 1 UNet row, a fused call 2):", "",
                  "| row | UNet calls | seconds | CPU seconds | RSS before | peak RSS | peak - "
                  "before | allocated | counted | forward row = plain row |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            eq = "-" if "forward_row_max_diff" not in r else (
                f"{'yes' if r['forward_row_equal'] else 'NO'} (max diff "
                f"{r['forward_row_max_diff']:.1e} of {r['forward_row_scale']:.1f})")
            lines.append(f"| {name} | {r.get('unet_calls', '-')} | {r['seconds']:.1f} | "
                         f"{r['cpu_seconds']:.1f} | {r['rss_base_gib']:.2f} | "
                         f"{r['rss_peak_gib']:.2f} | {r['rss_peak_gib'] - r['rss_base_gib']:.2f} "
                         f"| {r['allocated_gib']:.2f} | {r['counted_gib']:.2f} | {eq} |")
        lines.append("")
        lines += [f"- {name}: {r['note']}" for name, r in rows.items() if r.get("note")]
        lines.append("")
    return lines


def gpu_md(g: dict, grid: list[dict]) -> list[str]:
    lines = [f"## Measured on {g['device']}", "", "| fp16 gi prediction, guidance | seconds |",
             "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in g["prediction_seconds"].items()]
    lines += ["", "| recipe | method | predictions | seconds per video |", "|---|---|---|---|"]
    lines += [f"| {v['recipe']} | {v['method']} | {v['predictions']} | {v['seconds']:.0f} |"
              for v in g["videos"]]
    lines += ["", "| offload | ff chunking | max_unet_batch | decode chunk | max allocated GiB | "
              "max reserved GiB | estimated GiB | allocated / estimated |",
              "|---|---|---|---|---|---|---|---|"]
    for m in g["memory"]:
        est = estimated(grid, m)
        ratio = "-" if est is None else f"{m['max_allocated_gib'] / est:.2f}"
        lines.append(f"| {m['offload']} | {m['forward_chunking']} | {m['max_unet_batch']} | "
                     f"{m['decode_chunk']} | {m['max_allocated_gib']:.1f} | "
                     f"{m['max_reserved_gib']:.1f} | {_gib(est)} | {ratio} |")
    return lines + [""]


def estimated(grid: list[dict], setting: dict) -> float | None:
    """The estimate (GiB) of the grid's row with ``setting``'s row cap, decode chunk, chunking
    and offload; None if the grid has no such row."""
    key = ("max_unet_batch", "decode_chunk", "forward_chunking")
    for r in grid:
        if all(r[k] == setting[k] for k in key):
            return r["offload_peak"] if setting.get("offload") else r["peak"]
    return None


def markdown(state: dict) -> str:
    lines = ["# At the real size: SVD-XT, 1024x576, 25 frames", "",
             f"Written by `benchmarks/full_size.py` on {state.get('machine', '?')}.", ""]
    if "dtype" in state:
        d = state["dtype"]
        lines += [f"CPU dtype: one plain UNet row at {d['size']} took {d['fp32']:.2f} CPU s in "
                  f"fp32, {d['bf16']:.2f} in bf16 (one thread, best of 2): the CPU rows run in "
                  f"{d['faster']}.", ""]
    if "count" in state:
        lines += count_md(state["count"])
    if "estimate" in state:
        lines += estimate_md(state["estimate"])
    lines += checks_md(state)
    if "gpu" in state:
        lines += gpu_md(state["gpu"], state.get("estimate", {}).get("grid", []))
    return "\n".join(lines) + "\n"


# -- the command ----------------------------------------------------------------------------------
def parse_args(argv):
    from inbetweening.options import parse_size

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--work", type=Path, default=Path("runs/full_size"),
                   help="the CPU rows' records (default runs/full_size)")
    p.add_argument("--device", default="cpu", help="cuda: also the measured GPU rows")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads (default 2: with one, PyTorch convolves the temporal (3, 1, "
                        "1) kernels by im2col into scratch buffers as large as 3 activations, "
                        "which the count does not model and the full-size rows cannot afford)")
    p.add_argument("--cpu-size", type=parse_size, default=(256, 128))
    p.add_argument("--cpu-frames", type=int, default=4)
    p.add_argument("--cpu-dtype", default="auto", choices=["auto", *DTYPES],
                   help="auto: the faster of fp32 and bf16 at the small size")
    p.add_argument("--redo", default="", help="comma-separated parts or CPU rows to do again")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # a CPU row's subprocess
    a = p.parse_args(argv)
    a.redo = set(filter(None, a.redo.split(",")))
    return a


def main(argv=None) -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    diffusers_logging.set_verbosity_error()  # (dtype casts of random models: not news here)
    transformers_logging.set_verbosity_error()
    if a.row:
        tag = f"{a.cpu_size[0]}x{a.cpu_size[1]}x{a.cpu_frames}-{a.cpu_dtype}"
        row_child(a.row, a.cpu_size, a.cpu_frames, DTYPES[a.cpu_dtype], a.work / tag)
        return
    path = a.out / "full_size.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    state["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"

    def save():
        a.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=1))
        (a.out / "full_size.md").write_text(markdown(state))

    parts = {"dtype": dtype_part, "count": count_part, "estimate": estimate_part,
             "validate": validate_part}
    for name, fn in parts.items():
        if name not in state or name in a.redo:
            print(f"{name} ...", flush=True)
            state[name] = fn()
            save()
    if a.cpu_dtype == "auto":
        a.cpu_dtype = state["dtype"]["faster"]
    cpu_rows(state, a, save)
    if a.device.startswith("cuda") and ("gpu" not in state or "gpu" in a.redo):
        state["gpu"] = gpu_part(torch.device(a.device))
    save()
    print(markdown(state))


if __name__ == "__main__":
    main()

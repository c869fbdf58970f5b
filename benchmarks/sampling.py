"""Fused vs reference dual-directional sampling: time per prediction, time per video, peak memory.

    python benchmarks/sampling.py --out benchmarks/results            # CPU: tiny model
    python benchmarks/sampling.py --out benchmarks/results --device cuda   # + SVD-XT-sized UNet

CPU rows use random-weight UNets in fp32: ``tiny`` (the tiny SVD of svd-facts.md: 1.8 M
parameters, 16x16x4 latents) and ``toy`` (the bundled toy model's shapes: 5.2 M parameters,
8x8x32 latents), timed by the process's CPU time with one thread (robust to other load). On a GPU the script also builds
an SVD-XT-sized UNet with random weights (speed and memory do not depend on the weight values) and
times it at 1024x576, 25 frames, fp16. Modes are timed interleaved (A B A B ...) in one run and
the median is reported, so a busy machine slows both alike. Writes ``sampling.md`` (a markdown
table) and ``sampling.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from inbetweening import backward
from inbetweening.conditioning import KeyframeCondition
from inbetweening.denoisers import InbetweenDenoiser, fuse_weights, guidance_per_frame
from inbetweening.methods import layer_plans
from inbetweening.sampling import count_predictions

MODES = {"fused (default)": dict(dual_pass="fused"),
         "fused, calls of 2 rows": dict(dual_pass="fused", max_rows=2),
         "reference": dict(dual_pass="reference")}


def build_unet(kind: str, device, dtype):
    from diffusers import UNetSpatioTemporalConditionModel

    from inbetweening.toy import models

    torch.manual_seed(0)
    if kind == "toy":
        unet = models.unet()
    elif kind == "tiny":  # a tiny random SVD (1.8 M parameters) that runs on a CPU
        unet = UNetSpatioTemporalConditionModel(
            sample_size=16, in_channels=8, out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
            num_attention_heads=(2, 4), addition_time_embed_dim=32,
            projection_class_embeddings_input_dim=96, transformer_layers_per_block=1,
            num_frames=8)
    else:  # the class defaults are SVD-XT's UNet config
        with torch.device(device):
            unet = UNetSpatioTemporalConditionModel(sample_size=96, num_frames=25)
    unet = unet.to(device, dtype).eval().requires_grad_(False)
    backward.init_backward_weights(unet, dtype=dtype, requires_grad=False)
    return unet


def denoiser(unet, mode: dict, frames: int, latent_hw, device, dtype, method: str = "gi",
             guidance: bool = True):
    """The pipeline's denoiser for ``method`` (a two-direction one, or ``forward``) on random
    keyframe conditions, and a random latent (``guidance``: SVD's per-frame guidance 1..3, two
    rows per direction; else one)."""
    c = unet.config
    channels = c.in_channels // 2
    g = torch.Generator().manual_seed(0)

    def cond():
        return KeyframeCondition(
            embedding=torch.randn(1, 1, c.cross_attention_dim, generator=g).to(device, dtype),
            latent=torch.randn(1, channels, *latent_hw, generator=g).to(device, dtype))

    ids = torch.tensor([[6.0, 127.0, 0.02]], device=device, dtype=dtype)
    plans = layer_plans(method, unet, "rotation")
    start, end = cond(), cond()  # both drawn, so that every method gets the same latent x
    end = None if method == "forward" else end
    scale = guidance_per_frame(frames, 1, 3, True) if guidance else None
    den = InbetweenDenoiser(unet, start, end, ids, scale, fuse_weights(frames, "average"), plans,
                            **mode)
    x = torch.randn(1, frames, channels, *latent_hw, generator=g).to(device, torch.float32)
    return den, x


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device) -> float:
    """Wall time on a GPU, or on a CPU with several threads (what a user waits); with one CPU
    thread, this process's CPU time, which other processes on a busy machine barely disturb."""
    if device.type == "cuda" or torch.get_num_threads() > 1:
        return time.perf_counter()
    return time.process_time()


def measure(kind: str, device, dtype, frames: int, latent_hw, repeats: int, steps: int):
    unet = build_unet(kind, device, dtype)
    dens = {name: denoiser(unet, mode, frames, latent_hw, device, dtype)
            for name, mode in MODES.items()}
    sigma = torch.tensor(2.0, device=device)
    times = {name: [] for name in MODES}
    peaks = {}
    with torch.no_grad():
        for name, (den, x) in dens.items():  # warm-up, and peak memory on a GPU
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            den(x, sigma)
            sync(device)
            if device.type == "cuda":  # (a CPU has no allocator statistics worth reporting)
                peaks[name] = f"{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB"
        for _ in range(repeats):
            for name, (den, x) in dens.items():
                t0 = clock(device)
                den(x, sigma)
                sync(device)
                times[name].append(clock(device) - t0)
    per_video = count_predictions(steps, 5, 0.5)
    rows = []
    ref = statistics.median(times["reference"])
    for name in MODES:
        t = statistics.median(times[name])
        rows.append({"model": kind, "device": device.type, "dtype": str(dtype).split(".")[-1],
                     "frames": frames, "latent": f"{latent_hw[1]}x{latent_hw[0]}", "mode": name,
                     "s_per_prediction": t, "s_per_video": t * per_video,
                     "ratio_to_reference": t / ref, "peak": peaks.get(name)})
    return rows, per_video


def markdown(rows, per_video: dict) -> str:
    lines = ["| model | device | dtype | frames | latent | mode | s / prediction | "
             "s / video | vs reference | peak GPU memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r["peak"] or "-"
        lines.append(f"| {r['model']} | {r['device']} | {r['dtype']} | {r['frames']} | "
                     f"{r['latent']} | {r['mode']} | {r['s_per_prediction']:.4f} | "
                     f"{r['s_per_video']:.1f} | {r['ratio_to_reference']:.2f}x | {peak} |")
    notes = [f"- s / video = s / prediction x {n} fused predictions ({k})" for k, n in
             per_video.items()]
    return "\n".join(lines + [""] + notes) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: CPU time "
                                                          "then measures the work done)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows, per_video = [], {}
    r, n = measure("tiny", torch.device("cpu"), torch.float32, 8, (16, 16), a.repeats, 25)
    rows += r
    r, n = measure("toy", torch.device("cpu"), torch.float32, 8, (8, 8), a.repeats, 25)
    rows += r
    per_video["tiny, toy: 25 steps, 5 re-injections on half of them"] = n
    device = torch.device(a.device)
    if device.type == "cuda":
        r, n = measure("svd-xt", device, torch.float16, 25, (72, 128), max(3, a.repeats // 4), 50)
        rows += r
        per_video["svd-xt: 50 steps, the published recipe"] = n
    a.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, per_video)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
               + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    (a.out / "sampling.md").write_text(f"Measured on: {machine}, torch {torch.__version__}\n\n"
                                       + table)
    (a.out / "sampling.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(table)


if __name__ == "__main__":
    main()

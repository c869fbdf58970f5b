"""Backward fine-tuning: time per optimizer step of the three ways to run the dual pass.

    python benchmarks/training.py --out benchmarks/results                 # CPU: toy-shaped UNet
    python benchmarks/training.py --out benchmarks/results --device cuda   # + SVD-sized UNet

``split``      no-grad forward call keeping the flipped Q, K; backward call with autograd (sdpa)
``fused``      one UNet call over [forward rows, backward rows] (the sampler's fused machinery)
``reference``  the paper literally: forward call recording explicit maps, backward call using them

One step = the loss of a batch (inbetweening.training.BackwardObjective), its backward pass, grad
clipping and AdamW on the backward weights. CPU rows use a UNet of the toy model's shapes (64x64,
8 frames, 16 latent channels) with random weights in fp32, timed by the process's CPU time with
one thread (robust to other load on the machine). With ``--device cuda`` the script also times an
SVD-sized UNet (class defaults, 14 frames, 1024x576) with fp16 weights under fp16 autocast (speed
and memory do not depend on weight values), with peak memory. Modes are timed interleaved
(A B C A B C ...) in one run and the median is reported. Writes ``training.md`` (a markdown table)
and ``training.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from inbetweening import backward, conditioning
from inbetweening.methods import layer_plans
from inbetweening.training import DUAL_PASSES, BackwardObjective


def build_unet(kind: str, device, dtype):
    from diffusers import UNetSpatioTemporalConditionModel

    from inbetweening.toy import models

    torch.manual_seed(0)
    if kind == "toy":
        unet = models.unet()
    else:  # class defaults = the SVD UNet config
        with torch.device(device):
            unet = UNetSpatioTemporalConditionModel(sample_size=(72, 128), num_frames=14)
    if dtype != torch.float32 or device.type != "cpu":
        unet = unet.to(device, dtype)
    return unet.eval().requires_grad_(False)


def make_step(unet, variant: str, dual_pass: str, clips: int, device, autocast_dtype):
    """A closure doing one optimizer step, on its own fresh backward weights."""
    c = unet.config
    weights = backward.init_backward_weights(unet, variant, torch.float32)
    plans = layer_plans("gi", unet, variant)
    ids = conditioning.added_time_ids(7, 127, 0.02, 1, device=device)
    objective = BackwardObjective(unet, weights, plans, ids, dual_pass)
    params = list(weights.values())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    h, w = (c.sample_size if isinstance(c.sample_size, (tuple, list))
            else (c.sample_size, c.sample_size))
    channels, frames = c.out_channels, c.num_frames
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    batch = dict(z=r(clips, frames, channels, h, w), noise=r(clips, frames, channels, h, w),
                 sigma=torch.exp(0.7 + 1.6 * torch.randn(clips, generator=g)).to(device),
                 emb_first=r(clips, 1, c.cross_attention_dim),
                 emb_last=r(clips, 1, c.cross_attention_dim),
                 lat_first=r(clips, channels, h, w), lat_last=r(clips, channels, h, w))

    def step():
        # The weights live on the processors; put this closure's own back before each step.
        backward.set_backward_weights(unet, weights)
        ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
               else contextlib.nullcontext())
        with ctx:
            loss, _ = objective(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t
    t = time.process_time()
    fn()
    return time.process_time() - t


def measure(kind: str, clips: int, variant: str, device, repeats: int) -> dict:
    on_gpu = device.type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    unet = build_unet(kind, device, dtype)
    if on_gpu and kind != "toy":
        unet.enable_gradient_checkpointing()
    steps = {m: make_step(unet, variant, m, clips, device, torch.float16 if on_gpu else None)
             for m in DUAL_PASSES}
    times = {m: [] for m in DUAL_PASSES}
    peak = {}
    for m, fn in steps.items():  # warm up, and peak memory of one step
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        fn()
        fn()
        if on_gpu:
            peak[m] = torch.cuda.max_memory_allocated() / 2**30
    for _ in range(repeats):
        for m, fn in steps.items():
            times[m].append(timed(fn, device))
    row = {"model": kind, "device": device.type, "clips": clips, "variant": variant,
           "frames": unet.config.num_frames}
    for m in DUAL_PASSES:
        row[f"{m}_s"] = statistics.median(times[m])
        if on_gpu:
            row[f"{m}_peak_gib"] = peak[m]
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | device | clips/step | variant | split (ms) | fused (ms) | reference (ms) "
            "| fused / split | reference / split | peak GiB (split / fused / reference) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        peak = (" / ".join(f"{r[f'{m}_peak_gib']:.1f}" for m in DUAL_PASSES)
                if "split_peak_gib" in r else "-")
        lines.append(
            f"| {r['model']} ({r['frames']} frames) | {r['device']} | {r['clips']} | "
            f"{r['variant']} | {1e3 * r['split_s']:.0f} | {1e3 * r['fused_s']:.0f} | "
            f"{1e3 * r['reference_s']:.0f} | {r['fused_s'] / r['split_s']:.2f} | "
            f"{r['reference_s'] / r['split_s']:.2f} | {peak} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: CPU time is then robust to other load)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = []
    configs = [("toy", 1, "rotation"), ("toy", 2, "rotation"), ("toy", 4, "rotation"),
               ("toy", 2, "no-rotation")]
    if device.type == "cuda":
        configs += [("svd", 1, "rotation"), ("svd", 1, "no-rotation")]
    for kind, clips, variant in configs:
        dev = device if kind != "toy" or device.type == "cuda" else torch.device("cpu")
        row = measure(kind, clips, variant, dev, a.repeats)
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
               + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    (a.out / "training.md").write_text(
        f"Measured on: {machine}, torch {torch.__version__}; median of {a.repeats} interleaved "
        "steps (CPU: process CPU time)\n\n" + table(rows))
    (a.out / "training.json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                    indent=2))
    print(f"wrote {a.out / 'training.md'}")


if __name__ == "__main__":
    main()

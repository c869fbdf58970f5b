"""What several commands share: how they find their model and how they take sampling options."""

from __future__ import annotations

import argparse

from ..memory import MEMORY_PRESETS
from ..options import SamplingOptions
from .args import add_dataclass_args, from_args


def add_model_args(p: argparse.ArgumentParser, backward: bool = True) -> None:
    """--model, --backward, --device, --dtype: how every command finds and places its model."""
    p.add_argument("--model", default=None,
                   help="diffusers SVD folder or hub id, or a bundled toy model: toy (the "
                        "default), toy-ambiguous (the world where vehicles drive slow or fast)")
    if backward:
        p.add_argument("--backward", default=None,
                       help="backward-weights file (default: the model folder's "
                            "backward.safetensors, if any)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                  "available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--memory", default=None, choices=tuple(MEMORY_PRESETS),
                   help="what to trade for a smaller peak memory: " + "; ".join(
                       f"{name}: {preset.summary}" for name, preset in MEMORY_PRESETS.items()))
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet: faster sampling after a slower first video "
                        "(it compiles)")


def add_sampling_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The :class:`~inbetweening.options.SamplingOptions` as options (``skip``: those the
    command sets itself, e.g. evaluate's frame count and size come from the set)."""
    add_dataclass_args(p, SamplingOptions, skip=skip)


def sampling_options(args: argparse.Namespace, **overrides) -> SamplingOptions:
    """The checked :class:`SamplingOptions` of parsed arguments."""
    return from_args(SamplingOptions, args, **overrides).check()

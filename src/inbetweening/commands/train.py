"""``inbetween train``: backward-motion fine-tuning (the paper's Alg. 1) on the user's clips.

The options are the fields of :class:`~inbetweening.train_config.TrainConfig` (their help, choices
and flags are in its fields' metadata); the training itself is :func:`inbetweening.training.train`.
"""

from __future__ import annotations

import argparse

from ..train_config import TrainConfig
from .args import add_dataclass_args, from_args

DESCRIPTION = ("Backward-motion fine-tuning: train the backward weights of a base SVD model on a "
               "folder of videos (mp4/webm/gif/mov) or frame folders. Writes "
               "OUTPUT/backward.safetensors for `inbetween interpolate --backward`, checkpoints, "
               "log.csv and validation samples.")

EPILOG = """\
Several processes (data parallel; --batch-size is per process):
  on the CPU:   torchrun --nproc_per_node 2 -m inbetweening.cli train --device cpu ARGS...
           or:  accelerate launch --multi_gpu --num_processes 2 -m inbetweening.cli train \\
                  --device cpu ARGS...
                (accelerate's --cpu flag alone starts ONE process unless MPI is set up)
  on N GPUs:    accelerate launch --multi_gpu --num_processes N -m inbetweening.cli train ARGS...
Only the main process writes files. Published recipe: 14-frame SVD img2vid, --frames 14
--stride 2 --size 1024x576, ~15k steps at batch 4 on 4 GPUs, --mixed-precision fp16.
"""


def _option_defaults() -> TrainConfig:
    """The library's defaults, as the command line shows and fills them: --output is required
    (no default to show), and --sample-every left out follows --checkpoint-every."""
    defaults = TrainConfig()
    defaults.output = None
    defaults.sample_every = None  # TrainConfig.__post_init__ resolves it
    return defaults


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``inbetween train`` arguments."""
    overrides = {"dual_pass": "reference"} if args.reference else {}
    return from_args(TrainConfig, args, _option_defaults(), **overrides)


def run(args: argparse.Namespace) -> None:
    from ..training import train

    train(train_config(args))


def add_command(sub) -> None:
    p = sub.add_parser(
        "train", help="fine-tune backward weights on your clips (the paper's Alg. 1)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, TrainConfig, _option_defaults())
    machinery = next((g for g in p._action_groups if g.title == "machinery"), p)
    machinery.add_argument("--reference", action="store_true",
                           help="the paper's literal two-call version (= --dual-pass reference)")
    p.set_defaults(func=run)

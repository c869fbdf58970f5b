r"""``python -m inbetweening.commands.toy_train``: train the toy models from scratch (the work
is :mod:`inbetweening.toy.training`).

    python -m inbetweening.commands.toy_train --out runs/toy            # every stage, resumable
    python -m inbetweening.commands.toy_train --out runs/toy --stage vae
    python -m inbetweening.commands.toy_train --out runs/ambiguous --world ambiguous \
        --init src/inbetweening/toy/model --forward-steps 5000   # start from the bundled model

``--bundle`` copies the result (fp16) into the package as the default model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..toy.training import (
    AutoencoderConfig, BackwardConfig, ForwardConfig, bundle, fit_autoencoder, plot_report,
    train_backward, train_forward,
)
from ..toy.world import WORLDS


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stage", choices=["vae", "forward", "backward", "all"], default="all")
    p.add_argument("--world", choices=sorted(WORLDS), default="toy",
                   help="which toy world the clips come from (default toy)")
    p.add_argument("--init", type=Path, default=None,
                   help="a trained toy model folder to start the forward stage from (its "
                        "autoencoder is kept)")
    p.add_argument("--forward-steps", type=int, default=ForwardConfig.steps)
    p.add_argument("--backward-steps", type=int, default=BackwardConfig.steps)
    p.add_argument("--bundle", action="store_true",
                   help="copy the trained model into the package (the default model)")
    p.add_argument("--docs", type=Path, default=Path("docs"),
                   help="where the loss-curve plots go (default docs/)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    world = WORLDS[a.world]
    if a.stage in ("vae", "all"):
        fit_autoencoder(a.out, AutoencoderConfig(), world, a.init)
    if a.stage in ("forward", "all"):
        train_forward(a.out, ForwardConfig(steps=a.forward_steps), world, a.device, a.init)
    if a.stage in ("backward", "all"):
        train_backward(a.out, BackwardConfig(steps=a.backward_steps), world, a.device)
    if a.stage == "all" or a.bundle:
        plot_report(a.out, a.docs)
    if a.bundle:
        bundle(a.out)


if __name__ == "__main__":
    main()

"""The paper's rotation ablation (its Table 1, "w/o RA"), on ground truth, in one resumable
command. Three arms of backward weights, each trained with the bundled toy models' recipe
(``BackwardConfig``: 1,500 steps, batch 4, lr 3e-4, every 100 steps a checkpoint):

``rotation``        to_v / to_out.0 with the forward model's rotated maps (the paper);
``no-rotation``     to_q, to_k, to_v, to_out.0 without the maps (the paper's "w/o RA");
``no-rotation-vo``  to_v / to_out.0 without the maps: the capacity of ``rotation``, no rotation.

on the ambiguous world (each vehicle slow or fast; its bundled forward model ``toy-ambiguous``;
400 training clips) and today's world (``toy``; 100 clips, the paper's count), two training seeds
each. For every trained model:

- the held-out denoising loss (the training objective on 16 held-out clips at sigma 0.5, 1, 2, 5
  and 10, with fixed noise) at step 0 and at every checkpoint, to show the arms converged;
- ``gi`` on 24 held-out pairs of its world x 3 sampling seeds at 25 steps, with no re-injection
  (``reinject-0``) and with the published re-injection (``reinject-5``: 5 on the first half of
  the steps): the tracker's metrics and the blending measure;
- the mechanism: on the same noisy latents for every arm (per pair and sampling seed: pure
  noise at the first sigma; the true clip's latent plus noise at sigma 2.5, 6, 15 and 40), the
  forward-only (w = 1) and backward-only (w = 0) clean estimates, decoded and tracked: each
  vehicle's speed class and middle-frame position in each direction, and how often the two
  directions agree (benchmarks/rotation_probe.py).

    python benchmarks/rotation.py --out runs/rotation2 --threads 1 --publish   # the whole study
    python benchmarks/rotation.py --out runs/rotation-tiny --steps 20 --checkpoint-every 10 \\
        --pairs 2 --seeds 0 --sampling-seeds 0 --loss-clips 4                 # a look at it
    python benchmarks/rotation.py --out runs/rotation2 --report   # the tables of what is done

Every piece is written as it is done (training checkpoints, loss records, evaluation records,
mechanism records), so running the same command again continues where it stopped. After each
model the report is rewritten from what is there: OUT/results.json, OUT/table.md, OUT/loss.png,
OUT/contact_sheet.png (benchmarks/rotation_report.py); ``--publish`` also copies them to
benchmarks/results/rotation.{md,json}, docs/rotation-loss.png and
docs/rotation-contact-sheet.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from rotation_report import ARMS

from inbetweening.backward import WEIGHTS_FILENAME
from inbetweening.toy.training import TRAIN_SEED, BackwardConfig, write_clips
from inbetweening.evaluation import evaluate, make_toy_set
from inbetweening.toy.models import NAMED_MODELS
from inbetweening.toy.world import HELD_OUT_SEED, WORLDS
from inbetweening.train_config import TrainConfig
from inbetweening.training import train

REPO = Path(__file__).resolve().parent.parent
# world -> (its bundled forward model, training clips)
WORLD_RUNS = {"ambiguous": ("toy-ambiguous", 400), "toy": ("toy", 100)}
# evaluation setting -> re-injections on the first half of the 25 steps
SETTINGS = {"reinject-0": 0, "reinject-5": 5}
SAMPLING = {"steps": 25, "reinject_fraction": 0.5, "reinject_at": "first", "sampler": "euler",
            "fuse": "average"}
LOSS_CLIPS_SEED = HELD_OUT_SEED + 200  # the held-out loss's clips (not the evaluation pairs)


def cell_name(world: str, seed: int, arm: str) -> str:
    return f"{world}/seed-{seed}/{arm}"


def model_path(world: str) -> Path:
    return NAMED_MODELS[WORLD_RUNS[world][0]]


def training_clips(out: Path, world: str, seed: int) -> Path:
    """The training clips of (world, seed): a different draw of the training stream per seed,
    the same for every arm."""
    clips = WORLD_RUNS[world][1]
    return write_clips(out / "data" / world / f"clips-{clips}-seed-{seed}", clips, WORLDS[world],
                       seed=TRAIN_SEED + 7 + 1000 * seed)


def train_config(out: Path, world: str, seed: int, arm: str, cfg: BackwardConfig) -> TrainConfig:
    """The training of one cell, as the bundled toy models' backward weights were trained, every
    checkpoint kept (the held-out loss scores them)."""
    geometry = WORLDS[world]
    return TrainConfig(
        data=str(training_clips(out, world, seed)),
        output=str(out / "weights" / cell_name(world, seed, arm) / "run"),
        model=str(model_path(world)), variant=arm, frames=geometry.frames, stride=1,
        size=(geometry.size, geometry.size), steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr,
        p_mean=cfg.p_mean, p_std=cfg.p_std, cond_aug=cfg.cond_aug, clips=cfg.windows,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.steps // cfg.checkpoint_every + 1, sample_every=0,
        device="cpu", seed=seed, resume="latest", progress=False)


def train_cell(tc: TrainConfig) -> Path:
    """The cell's backward weights (trained, or found trained)."""
    done = Path(tc.output).parent / WEIGHTS_FILENAME
    if not done.is_file():
        shutil.copyfile(train(tc), done)
    return done


def held_out_set(out: Path, world: str, pairs: int) -> Path:
    folder = out / "sets" / world
    if not (folder / "manifest.json").is_file():
        make_toy_set(folder, pairs, world_name=world)
    return folder


def results_folder(out: Path, name: str, setting: str, seed: int) -> Path:
    return out / "results" / name / setting / f"seed-{seed}"


def evaluate_cell(out: Path, world: str, weights: Path, name: str, pairs: int,
                  seeds: list[int], settings=tuple(SETTINGS)) -> None:
    for setting in settings:
        count = SETTINGS[setting]
        for seed in seeds:
            evaluate(held_out_set(out, world, pairs), "gi",
                     results_folder(out, name, setting, seed), model=str(model_path(world)),
                     backward=str(weights), device="cpu", quiet=True, seed=seed,
                     options={**SAMPLING, "reinject": count})


def loss_cell(out: Path, world: str, tc: TrainConfig, loss_clips: int, every: int) -> None:
    """The held-out loss of the cell's checkpoints (OUT/loss/CELL.json)."""
    from rotation_probe import loss_batches, score_checkpoints

    from inbetweening.loading import load_pipeline

    geometry = WORLDS[world]
    clips = write_clips(out / "data" / world / f"loss-clips-{loss_clips}", loss_clips, geometry,
                        seed=LOSS_CLIPS_SEED)
    pipe = load_pipeline(str(model_path(world)), None, "cpu", quiet=True)
    batches = loss_batches(pipe, clips, geometry.frames, geometry.size, tc)
    name = str(Path(tc.output).parent.relative_to(out / "weights"))
    score_checkpoints(pipe, tc.variant, Path(tc.output), batches, tc,
                      out / "loss" / f"{name}.json", every)


def mechanism_cell(out: Path, world: str, weights: Path, name: str, pairs: int,
                   seeds: list[int]) -> None:
    """The two directions alone on the probe latents (OUT/mechanism/CELL.json)."""
    from rotation_probe import probe_model

    from inbetweening.evaluation.sets import load_set
    from inbetweening.loading import load_pipeline

    record = out / "mechanism" / f"{name}.json"
    if record.is_file():
        return
    pipe = load_pipeline(str(model_path(world)), str(weights), "cpu", quiet=True)
    probe_model(pipe, load_set(held_out_set(out, world, pairs)), seeds, record)


def report(a, cells: list[tuple[str, int, str]]) -> dict:
    """The report of what OUT holds (benchmarks/rotation_report.py): OUT/results.json,
    OUT/table.md, OUT/loss.png and OUT/contact_sheet.png."""
    import rotation_report as rr

    from inbetweening.evaluation.results import write_json
    from inbetweening.evaluation.sets import load_set

    sets = {w: load_set(a.out / "sets" / w) for w in a.worlds
            if (a.out / "sets" / w / "manifest.json").is_file()}
    folders = {(w, setting, arm, s, k): results_folder(a.out, cell_name(w, s, arm), setting, k)
               for w, s, arm in cells if w in sets for setting in SETTINGS
               for k in a.sampling_seeds}
    done = rr.gather_runs(folders, {w: [p.id for p in b.pairs] for w, b in sets.items()})
    mechanism, curves = {}, {}
    for w, s, arm in cells:
        for kind, store in (("mechanism", mechanism), ("loss", curves)):
            f = a.out / kind / f"{cell_name(w, s, arm)}.json"
            if f.is_file():
                data = json.loads(f.read_text())
                store[(w, s, arm)] = data if kind == "mechanism" else {
                    int(k): v for k, v in data.items()}
    paired, per_pair = rr.paired_table(done)
    mech, mech_paired = rr.mechanism_tables(mechanism, {w: WORLDS[w].speed_split()
                                                        for w in a.worlds})
    result = {"settings": {"sampling": SAMPLING, "reinjections": SETTINGS,
                           "training": {w: {"model": m, "clips": c}
                                        for w, (m, c) in WORLD_RUNS.items()},
                           "steps": a.steps, "pairs": a.pairs,
                           "sampling_seeds": a.sampling_seeds},
              "runs": [{"world": k[0], "setting": k[1], "arm": k[2], "train_seed": k[3],
                        "sampling_seed": k[4]} for k in sorted(done)],
              "table": rr.summary_table(done), "paired": paired, "per_pair": per_pair,
              "mechanism": mech, "mechanism_paired": mech_paired,
              "loss": rr.loss_summary(curves),
              "loss_curves": [{"world": w, "seed": s, "arm": arm, "curve": c}
                              for (w, s, arm), c in sorted(curves.items())]}
    write_json(a.out / "results.json", result)
    (a.out / "table.md").write_text(rr.markdown(result))
    rr.plot_losses(curves, a.out / "loss.png")
    if "ambiguous" in sets:
        arms = {arm: results_folder(a.out, cell_name("ambiguous", a.seeds[0], arm),
                                    "reinject-5", a.sampling_seeds[0]) for arm in ARMS}
        rr.contact(arms, sets["ambiguous"], a.out / "contact_sheet.png")
    return result


def grid(a) -> list[tuple[str, int, str]]:
    """(world, training seed, arm) of every cell, in the order they run."""
    seeds = {"ambiguous": a.seeds, "toy": a.toy_seeds or a.seeds}
    return [(w, s, arm) for w in a.worlds for s in seeds[w] for arm in ARMS if arm in a.arms]


def run_cell(a, cfg: BackwardConfig, world: str, seed: int, arm: str) -> None:
    name = cell_name(world, seed, arm)
    tc = train_config(a.out, world, seed, arm, cfg)
    weights = train_cell(tc)
    loss_cell(a.out, world, tc, a.loss_clips, a.loss_every)
    mechanism_cell(a.out, world, weights, name, a.pairs, a.sampling_seeds)
    evaluate_cell(a.out, world, weights, name, a.pairs, a.sampling_seeds, a.settings)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--out", type=Path, default=Path("runs/rotation2"))
    p.add_argument("--worlds", type=lambda s: s.split(","), default=list(WORLD_RUNS))
    p.add_argument("--seeds", type=ints, default=[0, 1], help="training seeds")
    p.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS),
                   help="the arms to run (two processes can run different arms)")
    p.add_argument("--toy-seeds", type=ints, default=None,
                   help="training seeds on today's world (default: --seeds)")
    p.add_argument("--sampling-seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=BackwardConfig.steps)
    p.add_argument("--checkpoint-every", type=int, default=BackwardConfig.checkpoint_every)
    p.add_argument("--pairs", type=int, default=24, help="held-out pairs per world")
    p.add_argument("--settings", type=lambda s: s.split(","), default=list(SETTINGS),
                   help=f"the evaluation settings to run ({', '.join(SETTINGS)}); a report "
                   "shows every one that has run")
    p.add_argument("--loss-clips", type=int, default=16, help="held-out clips of the loss")
    p.add_argument("--loss-every", type=int, default=1, help="score every N-th checkpoint")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", action="store_true", help="only write the report of what is done")
    p.add_argument("--publish", action="store_true",
                   help="also write benchmarks/results/rotation.{md,json} and the PNGs in docs/")
    a = p.parse_args(argv)
    for given, known, what in ((a.worlds, WORLD_RUNS, "world"), (a.settings, SETTINGS, "setting"),
                               (a.arms, ARMS, "arm")):
        unknown = [w for w in given if w not in known]
        if unknown:
            p.error(f"unknown {what} {unknown[0]!r}; choose from {', '.join(known)}")
    return a


def main(argv=None) -> None:
    a = parse(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    cfg = replace(BackwardConfig(), steps=a.steps, checkpoint_every=a.checkpoint_every)
    cells = grid(a)
    if not a.report:
        for i, (world, seed, arm) in enumerate(cells):
            print(f"[{i + 1}/{len(cells)}] {cell_name(world, seed, arm)}", flush=True)
            run_cell(a, cfg, world, seed, arm)
            report(a, cells)
    result = report(a, cells)
    if a.publish:
        shutil.copyfile(a.out / "table.md", REPO / "benchmarks/results/rotation.md")
        shutil.copyfile(a.out / "results.json", REPO / "benchmarks/results/rotation.json")
        for src, dst in (("loss.png", "rotation-loss.png"),
                         ("contact_sheet.png", "rotation-contact-sheet.png")):
            if (a.out / src).is_file():
                shutil.copyfile(a.out / src, REPO / "docs" / dst)
    print((a.out / "table.md").read_text())
    print(json.dumps({"runs": len(result["runs"])}))


if __name__ == "__main__":
    main()

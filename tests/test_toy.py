"""The toy world, its autoencoder and `inbetween demo`."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from inbetweening import cli
from inbetweening.toy.autoencoder import PatchAutoencoder
from inbetweening.toy.world import HELD_OUT_SEED, WorldConfig, make_clip, make_clips


def test_clips_are_a_pure_function_of_seed_and_index():
    a = make_clips(5, 3, start=10)
    b = make_clips(5, 3, start=10)
    c = make_clip(5, 11)
    assert torch.equal(a.video, b.video) and torch.equal(a.video[1], c.video[0])
    assert not torch.equal(a.video[0], a.video[1])
    assert a.video.shape == (3, 8, 3, 64, 64) and 0 <= a.video.min() and a.video.max() <= 1


def test_vehicles_drive_the_way_they_face_and_reversed_clips_do_not():
    clips = make_clips(HELD_OUT_SEED, 20, stay_in_view=True)
    for i in range(len(clips)):
        for s in np.flatnonzero(clips.present[i].numpy()):
            steps = clips.centers[i, s, 1:] - clips.centers[i, s, :-1]  # (F-1, 2)
            heading = torch.tensor([math.cos(clips.headings[i, s]), math.sin(clips.headings[i, s])])
            along = steps @ heading
            assert (along > 1.9).all()  # at least min_speed, every frame, along the heading
            back = clips.reversed()
            rev_steps = back.centers[i, s, 1:] - back.centers[i, s, :-1]
            assert (rev_steps @ heading < -1.9).all()  # reversed: tail first


def test_ground_truth_centres_sit_on_the_vehicle_colour():
    cfg = WorldConfig()
    clip = make_clip(HELD_OUT_SEED, 3, stay_in_view=True)
    for s in np.flatnonzero(clip.present[0].numpy()):
        color = clip.colors[0, s]
        for f in range(cfg.frames):
            x, y = clip.centers[0, s, f].round().long().tolist()
            pixel = clip.video[0, f, :, y, x]
            assert (pixel - color).abs().max() < 0.05


def test_stay_in_view_keeps_every_vehicle_inside_and_apart():
    """make_clip's own conditions, on the geometric centre (the body centre plus stripe / 2 along
    the heading): every corner in view with a pixel to spare, i.e. the centre more than
    hypot(length, width) / 2 + 1 from each border, and the centres of two vehicles of a clip at
    least length + 2 apart in every frame."""
    cfg = WorldConfig()
    clips = make_clips(HELD_OUT_SEED, 30, stay_in_view=True)
    margin = math.hypot(cfg.length, cfg.width) / 2 + 1
    direction = torch.stack([clips.headings.cos(), clips.headings.sin()], -1)  # (B, S, 2)
    geometric = clips.centers.double() + cfg.stripe / 2 * direction.double()[:, :, None]
    centers = geometric[clips.present]  # (S, F, 2)
    eps = 1e-4  # the centres are stored in float32
    assert (centers > margin - eps).all() and (centers < cfg.size - margin + eps).all()
    # The bound is tight: some vehicle comes within 1.5 pixels of it (so a looser margin shows).
    slack = torch.minimum(centers - margin, cfg.size - margin - centers).min()
    assert slack < 1.5, slack
    pairs = 0
    for i in range(len(clips)):
        idx = np.flatnonzero(clips.present[i].numpy())
        for a in idx:
            for b in idx[idx > a]:
                gap = (geometric[i, a] - geometric[i, b]).norm(dim=-1)  # (F,)
                assert (gap >= cfg.length + 2 - eps).all(), (i, gap.min())
                pairs += 1
    assert pairs >= 5  # clips with two vehicles are common enough to test "apart"


def test_patch_autoencoder_fits_round_trips_and_saves(tmp_path):
    frames = make_clips(0, 40).video.flatten(0, 1) * 2 - 1
    held = make_clips(1, 4).video.flatten(0, 1) * 2 - 1
    ae = PatchAutoencoder(latent_channels=32, patch_size=8)
    before = ae.decode(ae.encode(held).latent_dist.mode()).sample
    stats = ae.fit(frames)
    z = ae.encode(held).latent_dist.mode()
    rec = ae.decode(z, num_frames=8).sample
    assert z.shape == (32, 32, 8, 8)
    psnr = -10 * torch.log10(((rec - held) ** 2).mean() / 4)
    psnr_before = -10 * torch.log10(((before - held) ** 2).mean() / 4)
    assert psnr > 28 and psnr > psnr_before + 5, (psnr, psnr_before)
    assert 0.9 < stats["variance_kept"] < 1
    # A projection: encoding a decoded latent gives it back; the basis is orthonormal.
    torch.testing.assert_close(ae.encode(rec).latent_dist.mode(), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ae.basis.T @ ae.basis, torch.eye(32), atol=1e-5, rtol=0)
    assert abs((z * ae.config.scaling_factor).std().item() - 1) < 0.2
    ae.save_pretrained(tmp_path / "vae")
    back = PatchAutoencoder.from_pretrained(tmp_path / "vae")
    assert torch.equal(back.basis, ae.basis) and back.config.scaling_factor == \
        ae.config.scaling_factor


def test_demo_writes_videos_sheet_and_metrics(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "--pairs", "1", "--steps", "1", "--model",
            str(tiny_model_dir / "model"), "--backward", str(tiny_model_dir / "backward.safetensors"),
            "--device", "cpu"]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in (out / "pair-0").iterdir())
    assert names == ["comparison.gif", "comparison.mp4", "forward.mp4", "gi.mp4", "trf.mp4",
                     "truth.mp4"]
    assert (out / "contact_sheet.png").stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"gi", "trf", "forward"}
    text = (out / "metrics.md").read_text()
    assert "direction consistency" in text and "(steps: gi 1, trf 1, forward 1)" in text
    assert cli.main(argv) == 2  # exists: not replaced without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0


def test_the_bundled_model_loads_in_a_fresh_process():
    """diffusers loads a component class only from modules already imported: loading the toy
    model (whose VAE is PatchAutoencoder) must not depend on what the caller imported first."""
    import subprocess
    import sys

    from inbetweening.loading import bundled_model

    model = bundled_model()
    assert model is not None, "the toy model is not bundled in this checkout"
    code = ("from inbetweening.pipeline import InbetweenPipeline\n"
            f"p = InbetweenPipeline.from_pretrained({str(model)!r})\n"
            "print(type(p.vae).__name__, p.unet.config.num_frames, sorted(p.defaults))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["PatchAutoencoder", "8"]


def test_bundled_models_are_named_and_small():
    """``--model toy`` / ``--model toy-ambiguous`` name the bundled models (a folder of that
    name in the current directory would win), and all the package's models stay under 25 MB."""
    from inbetweening.loading import resolve_model
    from inbetweening.toy import models

    assert resolve_model("toy") == models.BUNDLED_MODEL
    assert resolve_model("toy-ambiguous") == models.AMBIGUOUS_MODEL
    assert (models.AMBIGUOUS_MODEL / "backward.safetensors").is_file()
    package = models.BUNDLED_MODEL.parent
    total = sum(f.stat().st_size for folder in models.NAMED_MODELS.values()
                for f in folder.rglob("*") if f.is_file())
    assert total < 25 * 10**6, total
    assert package == models.AMBIGUOUS_MODEL.parent

"""Backward-motion fine-tuning (inbetweening.training) on tiny random SVD models."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_components
from oracles import clean_estimate, rotating_copies

from inbetweening import attention, backward, cli, conditioning, media, training
from inbetweening.data import ClipDataset
from inbetweening.methods import layer_plans
from inbetweening.pipeline import InbetweenPipeline
from inbetweening.toy.world import make_clips
from inbetweening.utils import mix_seed

FRAMES = 6  # the tiny model's frame count


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    """Three toy clips (8 frames, 64x64) as PNG frame folders."""
    root = tmp_path_factory.mktemp("clips")
    video = make_clips(0, 3).video.permute(0, 1, 3, 4, 2).numpy()
    for i, v in enumerate(video):
        media.write_video(v, root / f"clip{i}")
    return root


def small_config(data, out, **kw) -> training.TrainConfig:
    base = dict(data=str(data), output=str(out), stride=1, steps=3, checkpoint_every=100,
                sample_every=0, progress=False, device="cpu", overwrite=True)
    return training.TrainConfig(**{**base, **kw})


def fresh_pipe(seed: int = 0) -> InbetweenPipeline:
    pipe = InbetweenPipeline(**tiny_components(FRAMES, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_batch(b: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(z=r(b, FRAMES, 4, 8, 8), sigma=torch.tensor([0.4, 3.0])[:b],
                noise=r(b, FRAMES, 4, 8, 8), emb_first=r(b, 1, 32), emb_last=r(b, 1, 32),
                lat_first=r(b, 4, 8, 8), lat_last=r(b, 4, 8, 8))


def perturbed_weights(unet, variant: str) -> dict[str, torch.nn.Parameter]:
    """Trainable backward weights that differ from the base (as after some training)."""
    weights = backward.init_backward_weights(unet.requires_grad_(False), variant)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in weights.values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return weights


def gradients(unet, weights, variant, dual_pass, batch) -> list[torch.Tensor]:
    plans = layer_plans("gi", unet, variant)
    ids = conditioning.added_time_ids(7, 127, 0.02, 1)
    objective = training.BackwardObjective(unet, weights, plans, ids, dual_pass)
    for p in weights.values():
        p.grad = None
    loss, _ = objective(batch)
    loss.backward()
    return [p.grad.clone() for p in weights.values()]


def assert_close_rel(got, want, rel=1e-5):
    for a, b in zip(got, want):
        scale = b.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * scale)


def _log(run: Path) -> list[dict[str, str]]:
    """A run's log.csv rows, without the wall-clock column."""
    with (run / "log.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


# -- the training step ---------------------------------------------------------------------------

def alg1_oracle(unet, weights, batch):
    """One step of the paper's Alg. 1, written out (tests/oracles.py): two copies of the UNet.
    The forward copy (base weights) denoises the noisy clip conditioned on its FIRST frame and
    records every temporal self-attention map; the backward copy, whose to_v / to_out.0 are the
    trainable backward weights, denoises the same noisy clip reversed in time, conditioned on the
    LAST frame, each temporal layer using the recorded map rotated by 180 degrees. The loss is
    the EDM-weighted squared error of its clean estimate against the reversed clip. Returns (loss,
    the gradients of the backward weights)."""
    fwd, bwd, _ = rotating_copies(unet, {n: w.detach().clone() for n, w in weights.items()})
    bwd.requires_grad_(False)
    params = dict(bwd.named_parameters())
    for n in weights:
        params[n].requires_grad_(True)
    z, sigma = batch["z"], batch["sigma"]
    noisy = z + sigma.view(-1, 1, 1, 1, 1) * batch["noise"]
    ids = torch.tensor([[7 - 1, 127, 0.02]])
    with torch.no_grad():
        clean_estimate(fwd, noisy, sigma, batch["emb_first"], batch["lat_first"], ids)
    d = clean_estimate(bwd, noisy.flip(1), sigma, batch["emb_last"], batch["lat_last"], ids)
    per_sample = ((d - z.flip(1)) ** 2).mean(dim=(1, 2, 3, 4)) * (1 + sigma**2) / sigma**2
    loss = per_sample.mean()
    loss.backward()
    return loss.detach(), [params[n].grad.clone() for n in weights]


def test_every_training_pass_follows_alg1_literally():
    """The default step (split), the sampler's fused call and the two-call reference give the
    loss and gradients of Alg. 1 written out with two UNet copies and explicit rotated maps; and
    those depend on the forward branch."""
    unet = fresh_pipe().unet
    weights = perturbed_weights(unet, "rotation")
    batch = random_batch()
    want_loss, want = alg1_oracle(unet, weights, batch)
    plans = layer_plans("gi", unet, "rotation")
    ids = conditioning.added_time_ids(7, 127, 0.02, 1)
    for dual_pass in ("split", "fused", "reference"):
        objective = training.BackwardObjective(unet, weights, plans, ids, dual_pass)
        loss, _ = objective(batch)
        torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-5, atol=0)
        assert_close_rel(gradients(unet, weights, "rotation", dual_pass, batch), want)
    # The backward branch reads the forward branch's maps: other first-frame conditioning,
    # other gradients.
    other = dict(batch, emb_first=batch["emb_first"] + 1.0)
    changed = gradients(unet, weights, "rotation", "split", other)
    assert max((a - b).abs().max() for a, b in zip(changed, want)) > 1e-3 * max(
        b.abs().max() for b in want)


def plain_unet_gradients(unet, weights, batch) -> list[torch.Tensor]:
    """Oracle of the variants without maps: the gradients of the loss of the plain UNet with
    the backward weights substituted, on the reversed clip (no forward branch at all)."""
    for p in weights.values():
        p.grad = None
    s = batch["sigma"].view(-1, 1, 1, 1, 1)
    noisy_b, target = (batch["z"] + s * batch["noise"]).flip(1), batch["z"].flip(1)

    def substituted(*args, **kwargs):  # the UNet with the backward weights swapped in
        return torch.func.functional_call(unet, dict(weights), args, kwargs)

    with attention.phase(unet, "plain"):
        d = clean_estimate(substituted, noisy_b, batch["sigma"], batch["emb_last"],
                           batch["lat_last"], torch.tensor([[6, 127, 0.02]]))
    per = ((d - target) ** 2).mean(dim=(1, 2, 3, 4))
    (per * (1 + batch["sigma"] ** 2) / batch["sigma"] ** 2).mean().backward()
    return [p.grad.clone() for p in weights.values()]


def test_no_rotation_variant_trains_qkvo_and_uses_no_maps():
    """w/o RA: to_q, to_k, to_v, to_out.0 train, and the backward branch is simply the UNet with
    those weights swapped in (no forward branch at all)."""
    unet = fresh_pipe().unet
    weights = perturbed_weights(unet, "no-rotation")
    assert {n.rsplit("attn1.", 1)[1] for n in weights} == {
        "to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"}
    batch = random_batch()
    got = gradients(unet, weights, "no-rotation", "split", batch)
    want = plain_unet_gradients(unet, weights, batch)
    assert_close_rel(got, want)
    assert_close_rel(gradients(unet, weights, "no-rotation", "fused", batch), want)
    # The forward branch plays no part.
    other = dict(batch, emb_first=batch["emb_first"] + 1.0, lat_first=batch["lat_first"] * 0)
    assert_close_rel(gradients(unet, weights, "no-rotation", "split", other), want)


def test_no_rotation_vo_variant_trains_v_and_o_without_maps():
    """no-rotation-vo: the parameters of ``rotation`` (to_v, to_out.0), but the backward branch
    is the plain UNet with them swapped in (base q, k of its own input, no forward branch); its
    plan never rotates."""
    unet = fresh_pipe().unet
    plans = layer_plans("gi", unet, "no-rotation-vo").values()
    assert plans and not any(p.rotate for p in plans)
    assert all(p.backward_weights for p in plans)
    weights = perturbed_weights(unet, "no-rotation-vo")
    assert backward.loaded_variant(unet) == "no-rotation-vo"
    assert list(weights) == backward.backward_parameter_names(unet, "rotation")
    batch = random_batch()
    got = gradients(unet, weights, "no-rotation-vo", "split", batch)
    want = plain_unet_gradients(unet, weights, batch)
    assert_close_rel(got, want)
    for dual_pass in ("fused", "reference"):
        assert_close_rel(gradients(unet, weights, "no-rotation-vo", dual_pass, batch), want)
    # Not the rotation variant's gradients (the same tensors, used with the rotated maps).
    rotated = gradients(unet, weights, "rotation", "split", batch)
    assert max((a - b).abs().max() for a, b in zip(rotated, want)) > 1e-3 * max(
        b.abs().max() for b in want)


def test_gradient_checkpointing_gives_the_same_gradients():
    unet = fresh_pipe().unet
    weights = perturbed_weights(unet, "rotation")
    batch = random_batch()
    plain = gradients(unet, weights, "rotation", "split", batch)
    unet.enable_gradient_checkpointing()
    assert_close_rel(gradients(unet, weights, "rotation", "split", batch), plain)
    assert_close_rel(gradients(unet, weights, "rotation", "fused", batch), plain)


# -- the samples -----------------------------------------------------------------------------------

def _batches(clips_dir, pipe, **kw):
    cfg = small_config(clips_dir, "unused", **kw)
    return training.Batches(cfg, ClipDataset(clips_dir, FRAMES, (64, 64), 1), pipe, 0, 1)


def test_conditioning_noise_is_one_pixel_draw_shared_by_both_frames(clips_dir, monkeypatch):
    """The default, as published: 0.02 * one noise draw added to the first and the last frame's
    pixels, then the VAE's mode (conditioning.image_latent, as at sampling)."""
    calls = []
    image_latent = conditioning.image_latent

    def spy(vae, images, strength, noise):
        calls.append((images, strength, noise))
        return image_latent(vae, images, strength, noise)

    monkeypatch.setattr(conditioning, "image_latent", spy)
    pipe = fresh_pipe()
    batches = _batches(clips_dir, pipe)
    assert batches.cfg.cond_aug == "pixel"
    for p in range(4):
        sample = batches._sample(p)
        images, strength, noise = calls[-1]
        source, start = batches.window(p)
        x = batches.dataset.window(source, start)
        assert torch.equal(images, x[[0, -1]]) and strength == 0.02
        assert torch.equal(noise[0], noise[1]) and noise.std() > 0.5  # one draw, for both
        want = image_latent(pipe.vae, x[[0, -1]], 0.02, noise)
        torch.testing.assert_close(torch.stack([sample["lat_first"], sample["lat_last"]]), want)
    assert not torch.equal(calls[0][2], calls[1][2])  # a new draw per sample


def test_random_windows_of_the_videos_with_sampled_latents(clips_dir):
    """The default, as published: each draw a video (a permutation of the videos per epoch) at a
    random start in [0, len - span], its latents a fresh sample of the VAE's distribution; all a
    function of the seed and the position."""
    pipe = fresh_pipe()
    batches = _batches(clips_dir, pipe)
    assert batches.cfg.clips == "random"
    windows = [batches.window(p) for p in range(30)]
    for e in range(10):  # 3 videos of 8 frames; a window spans 6: starts 0, 1, 2
        assert sorted(s for s, _ in windows[3 * e:3 * e + 3]) == [0, 1, 2]
    assert {start for _, start in windows} == {0, 1, 2}
    assert len({tuple(windows[3 * e:3 * e + 3]) for e in range(10)}) > 3
    vae, sf = pipe.vae, pipe.vae.config.scaling_factor
    same = [p for p in range(1, 30) if windows[p] == windows[0]]
    zs = [batches._sample(p)["z"] for p in [0, same[0]]]
    dist = vae.encode(batches.dataset.window(*windows[0])).latent_dist
    for z in zs:  # a sample of the distribution, not its mode
        eps = (z / sf - dist.mean) / dist.std
        assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1) < 0.1, (eps.mean(), eps.std())
    assert not torch.equal(zs[0], zs[1])  # the same window drawn twice: two samples
    again = _batches(clips_dir, pipe)._sample(same[0])  # a fresh run: the same sample
    assert torch.equal(again["z"], zs[1]) and torch.equal(again["lat_last"],
                                                           batches._sample(same[0])["lat_last"])


def test_fixed_clips_with_latent_augmentation_draw_as_the_toy_model_was_trained(clips_dir):
    """--clips fixed --cond-aug latent (the bundled toy model's training): the windows of the
    data set in a permutation per epoch, latents the VAE's mode, conditioning latents the end
    frames' latent modes plus 0.02 * one draw each: the stream this tool has always drawn."""
    pipe = fresh_pipe()
    batches = _batches(clips_dir, pipe, clips="fixed", cond_aug="latent", seed=4)
    ds, vae, sf = batches.dataset, pipe.vae, pipe.vae.config.scaling_factor
    for p in range(7):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(
            mix_seed(4, 1, p // len(ds))))
        z = vae.encode(ds[int(order[p % len(ds)])]).latent_dist.mode() * sf
        g = torch.Generator().manual_seed(mix_seed(4, 2, p))
        sigma = conditioning.sample_sigmas(1, 0.7, 1.6, g)
        noise = torch.randn(z.shape, generator=g)
        lat = z[[0, -1]] / sf + 0.02 * torch.randn((2,) + z.shape[1:], generator=g)
        got = batches._sample(p)
        assert torch.equal(got["sigma"], sigma[0]) and torch.equal(got["noise"], noise)
        torch.testing.assert_close(got["z"], z, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.stack([got["lat_first"], got["lat_last"]]), lat,
                                   rtol=0, atol=1e-6)


def test_the_command_defaults_to_the_published_training(capsys):
    from inbetweening.commands.train import train_config

    parser = cli.build_parser()
    base = ["train", "--data", "d", "-o", "o"]
    cfg = train_config(parser.parse_args(base))
    assert (cfg.cond_aug, cfg.clips, cfg.size) == ("pixel", "random", None)
    cfg = train_config(parser.parse_args(base + ["--cond-aug", "latent", "--clips", "fixed"]))
    assert (cfg.cond_aug, cfg.clips) == ("latent", "fixed")
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--clips {random,fixed}" in text and "1024x576" in text


def test_an_svd_model_trains_at_1024x576_by_default(clips_dir):
    """SVD's UNet config says 768 px square; the published training ran at 1024x576. Other models
    train at their config's size; --size decides when given."""
    pipe = fresh_pipe()
    cfg = small_config(clips_dir, "unused")
    assert training._dataset(cfg, pipe)[2] == (64, 64)  # the tiny model's config: 8 x 8 latents
    pipe.unet.register_to_config(sample_size=96)
    dataset, _, size = training._dataset(cfg, pipe)
    assert size == (1024, 576) and dataset.size == (1024, 576)
    assert training._dataset(small_config(clips_dir, "unused", size=(512, 320)), pipe)[2] == (
        512, 320)


def test_the_toy_backward_stage_trains_as_the_bundled_model_was(tmp_path, monkeypatch):
    """Latent conditioning augmentation, fixed windows with cached mode latents: what the bundled
    toy model's backward weights were trained with, whatever inbetween train's defaults."""
    from inbetweening.toy import training as toy_train
    from inbetweening.toy.world import WORLDS

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        path = tmp_path / "weights.safetensors"
        path.write_bytes(b"")
        return path

    monkeypatch.setattr(toy_train, "train", fake_train)
    monkeypatch.setattr(toy_train, "write_clips", lambda folder, *a, **k: folder)
    (tmp_path / "toy").mkdir()
    toy_train.train_backward(tmp_path / "toy", toy_train.BackwardConfig(), WORLDS["toy"])
    (cfg,) = seen
    assert (cfg.cond_aug, cfg.clips, cfg.stride) == ("latent", "fixed", 1)
    assert cfg.size == (64, 64) and cfg.frames == WORLDS["toy"].frames


# -- training runs -------------------------------------------------------------------------------

def state(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_changes_only_the_backward_weights(clips_dir, tmp_path):
    pipe = fresh_pipe()
    before = {name: state(getattr(pipe, name)) for name in ("unet", "vae", "image_encoder")}
    path = training.train(small_config(clips_dir, tmp_path / "run", lr=1e-3), pipe=pipe)
    for name, tensors in before.items():
        after = getattr(pipe, name).state_dict()
        assert after.keys() == tensors.keys()
        for k, v in tensors.items():
            assert torch.equal(after[k], v), f"{name}.{k} changed"
    tensors, meta = backward.load_backward_weights_file(path)
    own = dict(pipe.unet.named_parameters())
    assert set(tensors) == set(backward.backward_parameter_names(pipe.unet, "rotation"))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    moved = [(tensors[n] - own[n]).abs().max().item() for n in tensors]
    assert min(moved) > 1e-4  # every backward tensor trained
    assert meta["variant"] == "rotation" and meta["steps"] == "3"
    assert meta["num_frames"] == str(FRAMES)


def test_loss_falls_when_overfitting_two_clips(clips_dir, tmp_path):
    data = tmp_path / "two"
    data.mkdir()
    for i in range(2):
        (data / f"clip{i}").symlink_to(clips_dir / f"clip{i}")
    cfg = small_config(data, tmp_path / "run", steps=40, batch_size=2, lr=1e-2,
                       sigma_set=(0.5, 1.0, 2.0))
    pipe = fresh_pipe()
    backward.init_backward_weights(pipe.unet.requires_grad_(False))

    def held_out_loss() -> float:
        """The loss on the same clips at noise the run never draws (micro-steps 10000+)."""
        ds = ClipDataset(data, FRAMES, (64, 64), 1)
        batches = training.Batches(cfg, ds, pipe, 0, 1)
        plans = layer_plans("gi", pipe.unet, "rotation")
        objective = training.BackwardObjective(
            pipe.unet, backward.backward_parameters(pipe.unet), plans,
            conditioning.added_time_ids(7, 127, 0.02, 1))
        with torch.no_grad():
            return sum(objective(batches(10_000 + m))[0].item() for m in range(8)) / 8

    start = held_out_loss()
    training.train(cfg, pipe=pipe)
    end = held_out_loss()
    assert end < 0.9 * start, (start, end)
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    # (that every logged loss lands in the bucket of its sigma: the next test)


# The sigma buckets of log.csv, written out: "<e" for sigma < e (first such edge), ">=20" above.
BUCKET_EDGES = (0.1, 0.5, 1.0, 2.0, 5.0, 20.0)


def _bucket_column(sigma: float) -> str:
    for e in BUCKET_EDGES:
        if sigma < e:
            return f"loss_sigma<{e:g}"
    return "loss_sigma>=20"


def test_every_logged_loss_lands_in_the_bucket_of_its_sigma(clips_dir, tmp_path, monkeypatch):
    """Each step's loss_sigma<bucket> column is the mean of the per-sample losses (as the
    objective returned them) whose sigma falls in that bucket, and is empty when none does; loss
    is the mean of all. 3 steps of 2 micro-batches of 2, sigmas in 4 buckets."""
    seen = []  # (sigma, per-sample loss) of every micro-batch, in order
    objective_forward = training.BackwardObjective.forward

    def spy(self, batch):
        loss, per_sample = objective_forward(self, batch)
        seen.append((batch["sigma"].detach().cpu().clone(), per_sample.detach().cpu().clone()))
        return loss, per_sample

    monkeypatch.setattr(training.BackwardObjective, "forward", spy)
    steps, accum = 3, 2
    cfg = small_config(clips_dir, tmp_path / "run", steps=steps, batch_size=2, grad_accum=accum,
                       lr=1e-3, sigma_set=(0.3, 0.7, 1.5, 3.0))
    training.train(cfg, pipe=fresh_pipe())
    rows = _log(tmp_path / "run")
    columns = [_bucket_column(e - 1e-9) for e in BUCKET_EDGES] + ["loss_sigma>=20"]
    assert [k for k in rows[0] if k.startswith("loss_sigma")] == columns
    assert len(rows) == steps and len(seen) == steps * accum
    hit, mixed = set(), 0
    for r, row in enumerate(rows):
        part = seen[r * accum:(r + 1) * accum]
        sigmas, losses = torch.cat([s for s, _ in part]), torch.cat([l for _, l in part])
        groups: dict[str, list[float]] = {}
        for s, loss in zip(sigmas.tolist(), losses.tolist()):
            groups.setdefault(_bucket_column(s), []).append(loss)
        for col in columns:
            if col in groups:
                want = sum(groups[col]) / len(groups[col])
                assert float(row[col]) == pytest.approx(want, rel=1e-5), (r, col)
            else:
                assert row[col] == "", (r, col)
        assert float(row["loss"]) == pytest.approx(losses.mean().item(), rel=1e-5)
        hit |= set(groups)
        mixed += len(groups) > 1
    # Not vacuous: several buckets, and steps whose samples fall in different buckets.
    assert len(hit) >= 3 and mixed >= 2, (hit, mixed)


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(clips_dir, tmp_path,
                                                            tiny_model_dir):
    kw = dict(model=str(tiny_model_dir / "model"), steps=5, checkpoint_every=2, batch_size=2, grad_accum=2, lr=1e-3, seed=3)
    whole = training.train(small_config(clips_dir, tmp_path / "whole", **kw))
    out = tmp_path / "parts"
    training.train(small_config(clips_dir, out, stop_after=3, **kw))
    # As if killed during step 4: the step-3 checkpoint never made it, the log did.
    assert [p.name for p in training.checkpoints(out)] == ["step-0000002.pt", "step-0000003.pt"]
    training.checkpoints(out)[-1].unlink()
    assert not (out / "backward.safetensors").exists()
    resumed = training.train(small_config(clips_dir, out, resume="latest", overwrite=False, **kw))
    a, _ = backward.load_backward_weights_file(whole)
    b, _ = backward.load_backward_weights_file(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    logs = [[(r["step"], r["loss"]) for r in _log(run)] for run in (tmp_path / "whole", out)]
    assert logs[0] == logs[1] and len(logs[0]) == 5


def test_gradient_accumulation_equals_a_bigger_batch(clips_dir, tmp_path, tiny_model_dir):
    kw = dict(model=str(tiny_model_dir / "model"), steps=3, lr=1e-3)
    big = training.train(small_config(clips_dir, tmp_path / "big", batch_size=2, **kw))
    acc = training.train(small_config(clips_dir, tmp_path / "acc", batch_size=1, grad_accum=2,
                                      **kw))
    # The same samples and the same gradient at every step: losses and gradient norms (before
    # clipping) as logged. A wrong loss scale shows here; AdamW would hide it from the weights.
    # Bounds of two print steps of the log (loss to 6 significant digits, grad_norm to 4).
    big_log, acc_log = (_log(p.parent) for p in (big, acc))
    assert len(big_log) == len(acc_log) == 3
    for x, y in zip(big_log, acc_log):
        for col, rel in (("loss", 1e-4), ("grad_norm", 2e-3)):
            assert float(y[col]) == pytest.approx(float(x[col]), rel=rel)
    # The weights: a batch of 2 sums its gradients in another order than two micro-batches, and
    # AdamW's 1/sqrt(v) blows that rounding up to ~1 % of lr where a gradient is near zero, so
    # they agree to a tenth of lr (1e-3 here), not to the last bit.
    a, _ = backward.load_backward_weights_file(big)
    b, _ = backward.load_backward_weights_file(acc)
    own = dict(fresh_pipe().unet.named_parameters())
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4)
        assert (a[k] - own[k]).abs().max() > 1e-3


def test_mixed_precision_keeps_the_backward_weights_fp32(clips_dir, tmp_path, tiny_model_dir):
    cfg = small_config(clips_dir, tmp_path / "run", model=str(tiny_model_dir / "model"),
                       mixed_precision="bf16", steps=2)
    pipe = training.load_base(cfg, torch.device("cpu"), torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    path = training.train(cfg, pipe=pipe)
    live = backward.backward_parameters(pipe.unet)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in live.values())
    assert pipe.unet.dtype == torch.bfloat16
    tensors, _ = backward.load_backward_weights_file(path)
    assert all(torch.isfinite(t).all() for t in tensors.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = {
    "torchrun": lambda port: [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node",
                              "2", "--master_port", str(port)],
    "accelerate": lambda port: [str(Path(sys.executable).parent / "accelerate"), "launch",
                                "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_port", str(port)],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_on_the_cpu_write_one_consistent_file(launcher, clips_dir, tmp_path,
                                                           tiny_model_dir):
    """The two commands of the command's --help; batch 1 on each of 2 processes equals, bit for
    bit, batch 1 with 2-step accumulation on one process at the same thread count (the gradient
    of each clip is computed alike, and averaging two of them is exact)."""
    model = str(tiny_model_dir / "model")
    args = ["train", "--device", "cpu", "--model", model, "--data", str(clips_dir),
            "--stride", "1", "--steps", "3", "--checkpoint-every", "3", "--sample-every", "0",
            "--lr", "1e-3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*LAUNCHERS[launcher](_free_port()), "-m", "inbetweening.cli", *args,
                          "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 process(es)" in run.stdout
    assert run.stdout.count("wrote ") == 1 and "2 process(es) agreed" in run.stdout
    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == ["backward.safetensors", "checkpoints",
                                                     "log.csv"]
    assert [p.name for p in training.checkpoints(two)] == ["step-0000003.pt"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 gives each of the two processes
    try:
        assert cli.main(args + ["-o", str(tmp_path / "one"), "--batch-size", "1",
                                "--grad-accum", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    a, _ = backward.load_backward_weights_file(two / "backward.safetensors")
    b, _ = backward.load_backward_weights_file(tmp_path / "one" / "backward.safetensors")
    own = dict(fresh_pipe().unet.named_parameters())
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert (a[k] - own[k]).abs().max() > 1e-3  # it trained
    assert _log(two) == _log(tmp_path / "one")


# -- the command ---------------------------------------------------------------------------------

def test_command_writes_weights_checkpoints_log_and_samples_that_interpolate_loads(
        clips_dir, tmp_path, tiny_model_dir, capsys):
    model = str(tiny_model_dir / "model")
    out = tmp_path / "run"
    args = ["train", "--model", model, "--data", str(clips_dir), "-o", str(out), "--stride", "1",
            "--steps", "3", "--checkpoint-every", "1", "--sample-steps", "2", "--device", "cpu",
            "--variant", "no-rotation", "--no-progress"]
    assert cli.main(args) == 0
    assert "3 clips of 6 frames" in capsys.readouterr().out
    assert [p.name for p in training.checkpoints(out)] == ["step-0000002.pt", "step-0000003.pt"]
    samples = sorted((out / "samples").iterdir())
    assert [p.name for p in samples] == [f"step-000000{i}.mp4" for i in (1, 2, 3)]
    video, _ = media.read_video(samples[-1])
    assert video.shape == (FRAMES, 64, 2 * 64 + 4, 3)  # true clip | gap | generated
    tensors, meta = backward.load_backward_weights_file(out / "backward.safetensors")
    assert meta["variant"] == "no-rotation" and meta["base_model"] == model
    # The same command again would clobber the run: refused; --resume continues it.
    assert cli.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(args + ["--resume", "--steps", "4", "--sample-every", "0"]) == 0
    assert "resuming from" in capsys.readouterr().out and "step-0000003.pt" in str(
        training.checkpoints(out))
    assert [r["step"] for r in _log(out)] == ["1", "2", "3", "4"]
    _, meta = backward.load_backward_weights_file(out / "backward.safetensors")
    assert meta["steps"] == "4"
    video_out = tmp_path / "video.gif"
    keys = [str(clips_dir / "clip0" / f"frame_{i:04d}.png") for i in (0, 7)]
    assert cli.main(["interpolate", *keys, "--model", model, "--backward",
                     str(out / "backward.safetensors"), "--steps", "1", "--seed", "0",
                     "-o", str(video_out)]) == 0
    assert video_out.is_file()


def test_no_rotation_vo_run_saves_its_variant_and_resumes_only_as_itself(
        clips_dir, tmp_path, tiny_model_dir, capsys):
    """`inbetween train --variant no-rotation-vo` writes a file that loads back as that variant
    (its tensors are those of `rotation`: only the metadata tells them apart), and its
    checkpoints do not resume as another variant."""
    model = str(tiny_model_dir / "model")
    out = tmp_path / "run"
    args = ["train", "--model", model, "--data", str(clips_dir), "-o", str(out), "--stride", "1",
            "--steps", "2", "--checkpoint-every", "1", "--sample-every", "0", "--device", "cpu",
            "--no-progress"]
    assert cli.main(args + ["--variant", "no-rotation-vo"]) == 0
    tensors, meta = backward.load_backward_weights_file(out / "backward.safetensors")
    assert meta["variant"] == "no-rotation-vo"
    pipe = fresh_pipe()
    assert sorted(tensors) == sorted(backward.backward_parameter_names(pipe.unet, "rotation"))
    assert pipe.load_backward_weights(out / "backward.safetensors") == "no-rotation-vo"
    assert backward.loaded_variant(pipe.unet) == "no-rotation-vo"
    capsys.readouterr()
    assert cli.main(args + ["--variant", "rotation", "--resume", "--steps", "3"]) == 2
    assert "another model or variant" in capsys.readouterr().err


def test_the_command_offers_the_backward_variants():
    """train_config lists the variants without importing torch; they are backward.VARIANTS."""
    from inbetweening import train_config

    assert train_config.VARIANTS == tuple(backward.VARIANTS)


def _not_svd_model(tiny_model_dir, root: Path) -> Path:
    """A diffusers folder whose UNet is an image UNet (UNet2DConditionModel)."""
    import json
    import shutil

    from diffusers import UNet2DConditionModel

    folder = root / "image-model"
    shutil.copytree(tiny_model_dir / "model", folder, ignore=shutil.ignore_patterns("unet"))
    UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8).save_pretrained(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("case, message", [
    ("empty", "no videos or frame folders"),
    ("missing", "data folder not found"),
    ("unreadable", "2 unreadable"),
    ("short", "too short.*try --stride 1"),
    ("not-svd", "no temporal self-attention layers.*SVD UNet"),
    ("not-a-model", "not a diffusers model folder"),
])
def test_bad_input_is_a_one_line_error(case, message, tmp_path, tiny_model_dir, capsys):
    import re

    data, model = tmp_path / "data", str(tiny_model_dir / "model")
    data.mkdir()
    stride = "1"
    if case == "missing":
        data = tmp_path / "nowhere"
    elif case == "unreadable":
        (data / "a.mp4").write_bytes(b"junk")
        (data / "b.gif").write_text("GIF89a but not really")
    elif case == "short":
        media.write_video(make_clips(0, 1).video[0, :4].permute(0, 2, 3, 1).numpy(), data / "s")
        stride = "2"  # 6 frames at stride 2 need 11; the clip has 4 (stride 1 would need 6)
        media.write_video(make_clips(0, 1).video[0, :7].permute(0, 2, 3, 1).numpy(), data / "t")
    elif case == "not-svd":
        media.write_video(make_clips(0, 1).video[0].permute(0, 2, 3, 1).numpy(), data / "c")
        model = str(_not_svd_model(tiny_model_dir, tmp_path))
    elif case == "not-a-model":
        model = str(data)
    out = tmp_path / "out"
    code = cli.main(["train", "--model", model, "--data", str(data), "-o", str(out),
                     "--stride", stride, "--steps", "2", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and re.search(message, err[-1]), err
    assert not (out / "backward.safetensors").exists() and not (out / "checkpoints").exists()

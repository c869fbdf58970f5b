"""The method records (inbetweening.methods): each method's own published settings, the order in
which settings are resolved, and that adding a method is one record (plus, for a new kind of
sampler, one sampler function)."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

from inbetweening import methods, runners
from inbetweening.methods import GI_SETTINGS, Method, resolve_settings
from inbetweening.utils import InbetweeningError

TOY = {"num_inference_steps": 25, "reinject_count": 3, "fps": 7}  # the toy models' recommendation


def settings_of(name, model=None, **given):
    return resolve_settings(name, given, model)[0]


def predictions(name, model=None, **given):
    return runners.predictions_per_video(methods.method(name), settings_of(name, model, **given))


# -- each method at its own published settings ------------------------------------------------------
@pytest.mark.parametrize("model", [None, TOY], ids=["svd", "toy"])
def test_forward_is_plain_svd(model):
    """SVD's pipeline: 25 Euler steps, no re-injection, whatever the model recommends for GI."""
    s = settings_of("forward", model)
    assert (s["num_inference_steps"], s["reinject_count"], s["sampler"]) == (25, 0, "euler")
    assert predictions("forward", model) == 25


@pytest.mark.parametrize("model", [None, TOY], ids=["svd", "toy"])
def test_trf_runs_its_release_50_steps_with_jumps(model):
    s = settings_of("trf", model)
    assert (s["num_inference_steps"], s["renoise_scale"]) == (50, 0.95)
    assert predictions("trf", model) == 55  # 50 steps + 5 redone after the jump back at step 9


@pytest.mark.parametrize("name", ["vibid", "gi-sequential", "mpd"])
@pytest.mark.parametrize("model", [None, TOY], ids=["svd", "toy"])
def test_the_sequential_methods_run_vibids_release_settings(name, model):
    s = settings_of(name, model)
    assert (s["num_inference_steps"], s["cfgpp_scale"], s["keyframe_noise"],
            s["keyframe_latent"]) == (25, 1.0, "independent", "sample")
    assert s["fps"] == (9 if name == "mpd" else 7)  # MPD's release: fps id 8 (fps - 1)
    assert predictions(name, model) == (65 if name == "mpd" else 50)


@pytest.mark.parametrize("name", ["gi", "gi-noft", "trf-avg"])
def test_gi_and_its_ablations_run_the_paper_recipe_or_the_models(name):
    s = settings_of(name)
    assert {k: s[k] for k in GI_SETTINGS} == GI_SETTINGS
    assert (s["keyframe_noise"], s["renoise_scale"]) == ("shared", 1.0)
    assert predictions(name) == 175
    assert predictions(name, TOY) == 61  # 25 steps, 3 re-injections on the first 12
    fast, _ = resolve_settings(name, {}, TOY, "fast")
    assert runners.predictions_per_video(methods.method(name), fast) == 10


def test_recipes_apply_to_the_methods_made_for_them_and_say_so_for_the_others():
    s, notes = resolve_settings("gi", {}, TOY, "fast")
    assert (s["num_inference_steps"], notes) == (7, [])
    for name in ("trf", "vibid", "mpd", "gi-sequential", "forward"):
        s, notes = resolve_settings(name, {}, TOY, "fast")
        assert s == settings_of(name, TOY)  # its own settings stand ...
        assert len(notes) == 1 and "fast" in notes[0] and name in notes[0]  # ... and it says so
    with pytest.raises(InbetweeningError, match="unknown recipe"):
        resolve_settings("gi", {}, None, "slow")


def test_what_the_call_sets_wins_over_everything():
    s = settings_of("trf", TOY, num_inference_steps=25, renoise_scale=1.0)
    assert (s["num_inference_steps"], s["renoise_scale"]) == (25, 1.0)
    s, _ = resolve_settings("gi", {"reinject_count": 0, "fps": None}, TOY, "paper")
    assert (s["num_inference_steps"], s["reinject_count"], s["fps"]) == (50, 0, 7)
    with pytest.raises(InbetweeningError, match="keyframe_noise"):
        settings_of("gi", keyframe_noise="sometimes")


def test_the_pipeline_runs_each_method_at_its_settings(tiny_pipe, keyframes):
    """What the records say is what the pipeline does: prediction counts, and the per-keyframe
    noise and sampled keyframe latents of ViBiD's release (they change the video)."""
    run = dict(num_frames=4, output_type="latent", generator=torch.Generator().manual_seed(0))
    tiny_pipe(*keyframes, method="forward", **run)
    assert tiny_pipe.num_predictions == 25
    a = tiny_pipe(*keyframes, method="vibid", num_inference_steps=2, **{
        **run, "generator": torch.Generator().manual_seed(0)}).frames
    assert tiny_pipe.num_predictions == 4
    b = tiny_pipe(*keyframes, method="vibid", num_inference_steps=2, keyframe_noise="shared",
                  keyframe_latent="mode", **{**run, "generator": torch.Generator().manual_seed(0)})
    assert (a - b.frames).abs().max() > 1e-3


def test_keyframe_noise_per_keyframe_and_sampled_latents(tiny_pipe, keyframes):
    from inbetweening import peers

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        images, shared = tiny_pipe.keyframe_conditions(keyframes, 64, 64, "crop", 0.02, g, "cpu")
        g.manual_seed(1)
        _, own = tiny_pipe.keyframe_conditions(keyframes, 64, 64, "crop", 0.02, g, "cpu",
                                               shared_noise=False)
        torch.testing.assert_close(own[0].latent, shared[0].latent)  # the first draw is shared
        assert (own[1].latent - shared[1].latent).abs().max() > 1e-4  # the end's is its own
        mode = peers.clean_latent(tiny_pipe.vae, images[0])
        one = peers.clean_latent(tiny_pipe.vae, images[0], torch.Generator().manual_seed(2))
        two = peers.clean_latent(tiny_pipe.vae, images[0], torch.Generator().manual_seed(2))
    assert torch.equal(one, two) and (one - mode).abs().max() > 1e-4


# -- adding a method (docs/methods.md) --------------------------------------------------------------
def test_a_method_of_an_existing_kind_is_one_record(tiny_pipe, keyframes, monkeypatch):
    record = Method("gi-linear", "GI with linear fusion weights (the release's weighted_average)",
                    kind="recurrence", backward="finetuned",
                    settings={**GI_SETTINGS, "fuse": "linear"}, tunable=True)
    monkeypatch.setattr(methods, "METHOD_RECORDS",
                        MappingProxyType({**methods.METHOD_RECORDS, record.name: record}))
    run = dict(num_frames=4, num_inference_steps=3, reinject_count=1, output_type="latent")
    got = tiny_pipe(*keyframes, method="gi-linear", generator=torch.Generator().manual_seed(0),
                    **run).frames
    want = tiny_pipe(*keyframes, method="gi", fuse="linear",
                     generator=torch.Generator().manual_seed(0), **run).frames
    assert torch.equal(got, want)


def sample_twice(denoise, x, sigmas, *, generator=None, callback=None):
    """docs/methods.md's example of a new kind of sampler."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = denoise(x, s)
        if i % 2 == 0:
            d = (d + denoise(x, s)) / 2
        x = x + (x - d) / s * (s_next - s)
        if callback is not None and (r := callback(i, x)) is not None:
            x = r
    return x


def test_a_new_kind_of_sampler_is_one_sampler_and_its_kind(tiny_pipe, keyframes, monkeypatch):
    kind = runners.Kind(
        run=lambda job: lambda wrap, x: sample_twice(
            wrap(job.fused("average", symmetric=True)), x, job.sigmas, generator=job.generator,
            callback=job.callback),
        predictions=lambda s: s["num_inference_steps"] + (s["num_inference_steps"] + 1) // 2)
    monkeypatch.setitem(runners.KINDS, "twice", kind)
    record = Method("gi-twice", "GI's fused estimate, predicted twice every other step",
                    kind="twice", backward="finetuned")
    monkeypatch.setattr(methods, "METHOD_RECORDS",
                        MappingProxyType({**methods.METHOD_RECORDS, record.name: record}))
    got = tiny_pipe(*keyframes, method="gi-twice", num_frames=4, num_inference_steps=3,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    assert tiny_pipe.num_predictions == 3 + 2
    # the sampler called directly on the pipeline's pieces, drawn in the pipeline's order
    from inbetweening import backward, conditioning
    from inbetweening.denoisers import InbetweenDenoiser, fuse_weights, guidance_per_frame

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, (start, end) = tiny_pipe.keyframe_conditions(keyframes, 64, 64, "crop", 0.02, g, "cpu")
        tiny_pipe.scheduler.set_timesteps(3)
        sigmas = tiny_pipe.scheduler.sigmas.float()
        x = tiny_pipe.initial_latent((1, 4, 4, 8, 8), g, None, "cpu")
        plans = methods.layer_plans("gi", tiny_pipe.unet, backward.loaded_variant(tiny_pipe.unet))
        denoise = InbetweenDenoiser(tiny_pipe.unet, start, end,
                                    conditioning.added_time_ids(7, 127, 0.02, 1),
                                    guidance_per_frame(4, 1.0, 3.0, True),
                                    fuse_weights(4, "average"), plans)
        want = sample_twice(denoise, x, sigmas, generator=g)
    assert torch.equal(got, want)

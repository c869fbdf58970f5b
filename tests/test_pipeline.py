"""InbetweenPipeline on a tiny random SVD: the fused path against the literal reference, seeds,
fidelity to diffusers' own SVD pipeline, memory options and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inbetweening.methods import METHODS
from inbetweening.utils import InbetweeningError

RUN = dict(num_frames=6, num_inference_steps=4, output_type="pt")


def _run(pipe, keyframes, seed=0, **kw):
    args = {**RUN, **kw}
    return pipe(*keyframes, generator=torch.Generator().manual_seed(seed), **args).frames


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["no-cfg", "cfg"])
def test_fused_equals_reference(tiny_pipe, keyframes, method, guidance):
    fused = _run(tiny_pipe, keyframes, method=method, dual_pass="fused", max_guidance_scale=guidance)
    ref = _run(tiny_pipe, keyframes, method=method, dual_pass="reference",
               max_guidance_scale=guidance)
    assert fused.shape == (1, 6, 3, 64, 64)
    assert (fused - ref).abs().max().item() <= 1e-4


def test_methods_differ(tiny_pipe, keyframes):
    """Each method is a different computation (so the equality above is not vacuous)."""
    outs = {m: _run(tiny_pipe, keyframes, method=m) for m in METHODS}
    for a in METHODS:
        for b in METHODS:
            if a < b:
                assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)


def test_no_rotation_backward_weights(tiny_pipe, keyframes):
    from conftest import perturb_backward

    from inbetweening import backward

    names = backward.backward_parameter_names(tiny_pipe.unet, "no-rotation")
    own = dict(tiny_pipe.unet.named_parameters())
    tiny_pipe.load_backward_weights({n: own[n].detach() + 0.05 * torch.randn_like(own[n])
                                     for n in names})
    assert backward.loaded_variant(tiny_pipe.unet) == "no-rotation"
    fused = _run(tiny_pipe, keyframes, method="gi", max_guidance_scale=3.0)
    ref = _run(tiny_pipe, keyframes, method="gi", dual_pass="reference", max_guidance_scale=3.0)
    assert (fused - ref).abs().max().item() <= 1e-4
    # Not the base model's backward direction (trf: no rotation, base weights): the four
    # backward tensors are in use.
    trf = _run(tiny_pipe, keyframes, method="trf", max_guidance_scale=3.0)
    assert (fused - trf).abs().max().item() > 1e-3
    perturb_backward(tiny_pipe)


def test_no_rotation_vo_backward_weights(tiny_pipe, keyframes, tmp_path):
    """v, o backward weights without the rotated maps: the fused path equals the reference; the
    video is neither the rotation variant's (same tensors, rotated maps) nor the base model's
    (trf); saved and loaded again, it is still that variant."""
    from inbetweening import backward

    weights = {n: p.detach().clone()
               for n, p in backward.backward_parameters(tiny_pipe.unet).items()}
    rotation = _run(tiny_pipe, keyframes, method="gi", max_guidance_scale=3.0)
    assert tiny_pipe.load_backward_weights(weights, variant="no-rotation-vo") == "no-rotation-vo"
    fused = _run(tiny_pipe, keyframes, method="gi", max_guidance_scale=3.0)
    ref = _run(tiny_pipe, keyframes, method="gi", dual_pass="reference", max_guidance_scale=3.0)
    assert (fused - ref).abs().max().item() <= 1e-4
    assert (fused - rotation).abs().max().item() > 1e-3
    trf = _run(tiny_pipe, keyframes, method="trf-avg", max_guidance_scale=3.0)
    assert (fused - trf).abs().max().item() > 1e-3
    path = tiny_pipe.save_backward_weights(tmp_path / "vo.safetensors")
    tiny_pipe.load_backward_weights(weights)  # a dict names no variant: rotation, by its names
    assert backward.loaded_variant(tiny_pipe.unet) == "rotation"
    assert tiny_pipe.load_backward_weights(path) == "no-rotation-vo"
    assert torch.equal(_run(tiny_pipe, keyframes, method="gi", max_guidance_scale=3.0), fused)


def test_same_seed_same_video_bitwise(tiny_pipe, keyframes):
    a = _run(tiny_pipe, keyframes, seed=11)
    b = _run(tiny_pipe, keyframes, seed=11)
    c = _run(tiny_pipe, keyframes, seed=12)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def _unet_batches(pipe) -> list[int]:
    """The batch size of every UNet call from now on (a forward pre-hook on the UNet)."""
    sizes: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    return sizes


def test_split_fused_batch_gives_the_same_video(tiny_pipe, keyframes):
    """Under CFG a prediction is 4 rows (2 per direction): one call of 4 by default, two calls
    of 2 (a forward and a backward row each) with max_unet_batch=2; the same video."""
    sizes = _unet_batches(tiny_pipe)
    whole = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, max_unet_batch=0)
    predictions = 4 + 5 * 2  # 4 steps, 5 re-injections on each of the first 2
    assert sizes == [4] * predictions
    sizes.clear()
    split = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, max_unet_batch=2)
    assert sizes == [2] * (2 * predictions)
    ref = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, dual_pass="reference")
    assert (whole - split).abs().max().item() <= 1e-5
    assert (whole - ref).abs().max().item() <= 1e-4


def test_forward_method_reproduces_diffusers_svd_pipeline(keyframes):
    """`forward` is plain SVD: same seed, same frames as diffusers' StableVideoDiffusionPipeline."""
    from conftest import tiny_components
    from diffusers import StableVideoDiffusionPipeline

    from inbetweening.inputs import to_pil
    from inbetweening.pipeline import InbetweenPipeline

    components = tiny_components()
    ours = InbetweenPipeline(**components)
    theirs = StableVideoDiffusionPipeline(**components)
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    image = to_pil(keyframes[0])
    kw = dict(height=64, width=64, num_frames=6, num_inference_steps=5, output_type="np")
    a = ours(image, method="forward", generator=torch.Generator().manual_seed(5), **kw).frames
    b = theirs(image, generator=torch.Generator().manual_seed(5), **kw).frames
    assert a.shape == b.shape == (1, 6, 64, 64, 3)
    assert np.abs(a - b).max() <= 1e-4


def test_model_cpu_offload_hooks_give_the_same_video(tiny_pipe, keyframes):
    plain = _run(tiny_pipe, keyframes)
    tiny_pipe.enable_model_cpu_offload(device="cpu")
    assert all(hasattr(getattr(tiny_pipe, n), "_hf_hook") for n in ("unet", "vae", "image_encoder"))
    offloaded = _run(tiny_pipe, keyframes)
    assert (plain - offloaded).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_fp32(tiny_pipe, keyframes, dtype):
    full = _run(tiny_pipe, keyframes, num_inference_steps=3)
    tiny_pipe.to(dtype=dtype)
    assert tiny_pipe.unet.dtype == tiny_pipe.vae.dtype == dtype
    half = _run(tiny_pipe, keyframes, num_inference_steps=3)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().mean().item() < 0.05
    assert (half - full).abs().max().item() > 1e-4  # it did run in half precision


def test_output_types_and_decode_chunks(tiny_pipe, keyframes):
    """Every output type is the same video, and decode_chunk_size=k decodes k frames at a time:
    the temporal VAE decoder mixes the frames of one call, so chunks of 2 give other frames than
    one call for all 6, and each chunk equals decoding its 2 frames alone."""
    latents = _run(tiny_pipe, keyframes, output_type="latent")
    assert latents.shape == (1, 6, 4, 8, 8)
    chunked = _run(tiny_pipe, keyframes, decode_chunk_size=2)
    assert chunked.shape == (1, 6, 3, 64, 64)
    vae = tiny_pipe.vae

    def decode(z):  # (k, C, h, w) latents -> (k, 3, H, W) in [0, 1], in one decoder call
        x = vae.decode(z / vae.config.scaling_factor, num_frames=z.shape[0]).sample
        return (x / 2 + 0.5).clamp(0, 1)

    with torch.no_grad():
        at_once = decode(latents[0])
        in_pairs = torch.cat([decode(latents[0, a:a + 2]) for a in (0, 2, 4)])
    assert (at_once - in_pairs).abs().max() > 1e-2  # the decoder does mix frames
    torch.testing.assert_close(chunked[0], in_pairs, atol=1e-5, rtol=0)
    arr = _run(tiny_pipe, keyframes, output_type="np")  # decode_chunk_size: all frames
    assert arr.shape == (1, 6, 64, 64, 3)
    np.testing.assert_allclose(arr[0], at_once.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=0)
    pil = _run(tiny_pipe, keyframes, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 6 and pil[0][0].size == (64, 64)
    pixels = np.stack([np.asarray(im, dtype=np.float32) for im in pil[0]])
    assert np.abs(pixels - arr[0] * 255).max() <= 1.0


def test_callback_on_step_end_and_linear_fuse(tiny_pipe, keyframes):
    steps = []

    def cb(pipe, i, t, tensors):
        steps.append(i)
        assert t == pipe.scheduler.timesteps[i]
        return {"latents": tensors["latents"]}

    avg = _run(tiny_pipe, keyframes, callback_on_step_end=cb, output_type="latent")
    assert steps == [0, 1, 2, 3]
    # What the callback returns replaces the latent: after the last step, the output.
    def fill(pipe, i, t, tensors):
        return {"latents": torch.full_like(tensors["latents"], 0.25)} if i == 3 else None

    out = _run(tiny_pipe, keyframes, callback_on_step_end=fill, output_type="latent")
    assert torch.equal(out, torch.full((1, 6, 4, 8, 8), 0.25))
    lin = _run(tiny_pipe, keyframes, fuse="linear", output_type="latent")
    assert (avg - lin).abs().max() > 1e-3


@pytest.mark.parametrize("kw, message", [
    (dict(height=60), "multiple of 8"),
    (dict(num_frames=2), "3 to 12 frames"),
    (dict(num_frames=13), "3 to 12 frames"),
    (dict(method="nope"), "unknown method"),
    (dict(output_type="gif"), "output_type"),
])
def test_bad_arguments(tiny_pipe, keyframes, kw, message):
    args = {**RUN, **kw}
    with pytest.raises(InbetweeningError, match=message):
        tiny_pipe(*keyframes, **args)


def test_keyframes_of_different_aspect_are_refused(tiny_pipe):
    with pytest.raises(InbetweeningError, match="different aspect ratios"):
        tiny_pipe(torch.rand(3, 64, 64), torch.rand(3, 64, 128), **RUN)


def test_gi_without_backward_weights_is_refused(keyframes):
    from conftest import tiny_components

    from inbetweening.pipeline import InbetweenPipeline

    pipe = InbetweenPipeline(**tiny_components())
    with pytest.raises(InbetweeningError, match="needs backward weights"):
        pipe(*keyframes, method="gi", **RUN)
    assert _run(pipe, keyframes, method="trf").shape == (1, 6, 3, 64, 64)


# -- the samplers and the peers through the pipeline ---------------------------------------------
@pytest.mark.parametrize("sampler,at", [("heun", "first"), ("dpmpp-2m", "first"),
                                        ("euler", "middle"), ("dpmpp-2m", "alternate")])
def test_samplers_fused_equals_reference_and_counts(tiny_pipe, keyframes, sampler, at):
    """Every sampler and re-injection placement through the pipeline: the fused path equals the
    literal two-call reference, the UNet is called ``num_predictions`` times, and the video is
    not the default recipe's."""
    from inbetweening.sampling import predictions

    kw = dict(max_guidance_scale=3.0, sampler=sampler, reinject_at=at, reinject_count=2,
              reinject_fraction=0.5)
    sizes = _unet_batches(tiny_pipe)
    fused = _run(tiny_pipe, keyframes, **kw)
    assert len(sizes) == tiny_pipe.num_predictions == predictions(sampler, 4, 2, 0.5,
                                                                  reinject_at=at)
    ref = _run(tiny_pipe, keyframes, dual_pass="reference", **kw)
    assert (fused - ref).abs().max().item() <= 1e-4
    plain = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, reinject_count=2,
                 reinject_fraction=0.5)
    assert (fused - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("method", ["trf", "vibid", "gi-sequential", "mpd"])
def test_peer_methods_run_their_own_samplers(tiny_pipe, keyframes, method):
    """The pipeline's video of a peer method is its sampler (tested against each paper's
    algorithm in test_peers.py) over the pipeline's own conditioning, with every draw from the
    caller's generator, in the pipeline's order: keyframe noise, initial latent, sampler."""
    from inbetweening import backward, conditioning, methods, peers, runners

    got = _run(tiny_pipe, keyframes, seed=3, method=method, output_type="latent")
    record = methods.method(method)
    settings, _ = tiny_pipe.call_settings(method, **RUN)
    assert tiny_pipe.num_predictions == runners.predictions_per_video(record, settings)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        images, conds = tiny_pipe.keyframe_conditions(
            keyframes, 64, 64, "crop", 0.02, g, "cpu",
            shared_noise=settings["keyframe_noise"] == "shared")  # vibid, mpd: independent
        ids = conditioning.added_time_ids(settings["fps"], 127, 0.02, 1, dtype=torch.float32,
                                          device="cpu")  # mpd: its release's fps id 8
        plans = methods.layer_plans(method, tiny_pipe.unet,
                                    backward.loaded_variant(tiny_pipe.unet))
        sampled = g if settings["keyframe_latent"] == "sample" else None  # vibid, mpd: sampled
        latents = tuple(peers.clean_latent(tiny_pipe.vae, im, sampled) for im in images)
        tiny_pipe.scheduler.set_timesteps(4)
        sigmas = tiny_pipe.scheduler.sigmas.float()
        x = tiny_pipe.initial_latent((1, 6, 4, 8, 8), g, None, "cpu")
        job = runners.Job(model=tiny_pipe.unet, method=record, settings=settings,
                          start=conds[0], end=conds[1], ids=ids, sigmas=sigmas, generator=g,
                          plans=plans, clean_latents=latents)
        want = runners.KINDS[record.kind].run(job)(lambda d: d, x)
    assert torch.equal(got, want)
    other = _run(tiny_pipe, keyframes, seed=4, method=method, output_type="latent")
    assert (got - other).abs().max() > 1e-3  # the seed reaches every draw


def test_gi_sequential_without_backward_weights_is_refused(keyframes):
    from conftest import tiny_components

    from inbetweening.pipeline import InbetweenPipeline

    pipe = InbetweenPipeline(**tiny_components())
    with pytest.raises(InbetweeningError, match="needs backward weights"):
        pipe(*keyframes, method="gi-sequential", **RUN)
    assert _run(pipe, keyframes, method="vibid").shape == (1, 6, 3, 64, 64)


@pytest.mark.parametrize("kw, message", [(dict(sampler="lms"), "unknown sampler"),
                                         (dict(reinject_at="last"), "reinject_at")])
def test_bad_sampler_arguments(tiny_pipe, keyframes, kw, message):
    with pytest.raises(InbetweeningError, match=message):
        tiny_pipe(*keyframes, **{**RUN, **kw})


def test_gi_noft_rotates_the_forward_maps_in_the_up_blocks_only(tiny_pipe, keyframes):
    """The paper's "w/o FT": the base model backwards, attending with the forward maps rotated by
    180 degrees in the decoder's (up) blocks and with its own maps elsewhere. One prediction of
    the pipeline's denoiser against the literal two-copy version (tests/oracles.py) with explicit
    maps injected in the up blocks only."""
    from oracles import clean_estimate, rotating_copies

    from inbetweening import conditioning, methods
    from inbetweening.denoisers import InbetweenDenoiser, fuse_weights

    plans = methods.layer_plans("gi-noft", tiny_pipe.unet, None)
    rotated = sorted(n for n, p in plans.items() if p.rotate)
    assert rotated and rotated == sorted(n for n in plans if n.startswith("up_blocks."))
    assert not any(p.backward_weights for p in plans.values())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, (start, end) = tiny_pipe.keyframe_conditions(keyframes, 64, 64, "crop", 0.02, g, "cpu")
        ids = conditioning.added_time_ids(7, 127, 0.02, 1)
        x, sigma = torch.randn(1, 6, 4, 8, 8, generator=g) * 3, torch.tensor(3.0)
        got = InbetweenDenoiser(tiny_pipe.unet, start, end, ids, None,
                                fuse_weights(6, "average"), plans)(x, sigma)
        base = {n: w for n, w in tiny_pipe.unet.named_parameters()
                if n.endswith(("attn1.to_v.weight", "attn1.to_out.0.weight"))}
        fwd, bwd, _ = rotating_copies(tiny_pipe.unet, base,
                                      only=lambda name: name.startswith("up_blocks."))
        d_fwd = clean_estimate(fwd, x, sigma, start.embedding, start.latent, ids)
        d_bwd = clean_estimate(bwd, x.flip(1), sigma, end.embedding, end.latent, ids)
    torch.testing.assert_close(got, 0.5 * d_fwd + 0.5 * d_bwd.flip(1), rtol=1e-4, atol=1e-5)

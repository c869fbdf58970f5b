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
    perturb_backward(tiny_pipe)


def test_same_seed_same_video_bitwise(tiny_pipe, keyframes):
    a = _run(tiny_pipe, keyframes, seed=11)
    b = _run(tiny_pipe, keyframes, seed=11)
    c = _run(tiny_pipe, keyframes, seed=12)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_split_fused_batch_gives_the_same_video(tiny_pipe, keyframes):
    whole = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, max_unet_batch=0)
    split = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, max_unet_batch=2)
    ref = _run(tiny_pipe, keyframes, max_guidance_scale=3.0, dual_pass="reference")
    assert (whole - split).abs().max().item() <= 1e-5
    assert (whole - ref).abs().max().item() <= 1e-4


def test_forward_method_reproduces_diffusers_svd_pipeline(keyframes):
    """`forward` is plain SVD: same seed, same frames as diffusers' StableVideoDiffusionPipeline."""
    from conftest import tiny_components
    from diffusers import StableVideoDiffusionPipeline

    from inbetweening.pipeline import InbetweenPipeline, to_pil

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
    offloaded = _run(tiny_pipe, keyframes)
    assert (plain - offloaded).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_fp32(tiny_pipe, keyframes, dtype):
    full = _run(tiny_pipe, keyframes, num_inference_steps=3)
    tiny_pipe.to(dtype=dtype)
    half = _run(tiny_pipe, keyframes, num_inference_steps=3)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().mean().item() < 0.05


def test_output_types_and_decode_chunks(tiny_pipe, keyframes):
    pil = _run(tiny_pipe, keyframes, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 6 and pil[0][0].size == (64, 64)
    arr = _run(tiny_pipe, keyframes, output_type="np")
    assert arr.shape == (1, 6, 64, 64, 3) and 0 <= arr.min() and arr.max() <= 1
    chunked = _run(tiny_pipe, keyframes, decode_chunk_size=2)
    assert chunked.shape == (1, 6, 3, 64, 64)
    latents = _run(tiny_pipe, keyframes, output_type="latent")
    assert latents.shape == (1, 6, 4, 8, 8)


def test_callback_on_step_end_and_linear_fuse(tiny_pipe, keyframes):
    steps = []

    def cb(pipe, i, t, tensors):
        steps.append(i)
        return {"latents": tensors["latents"]}

    avg = _run(tiny_pipe, keyframes, callback_on_step_end=cb)
    assert steps == [0, 1, 2, 3]
    lin = _run(tiny_pipe, keyframes, fuse="linear")
    assert (avg - lin).abs().max() > 1e-3


@pytest.mark.parametrize("kw, message", [
    (dict(height=60), "multiple of 64"),
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

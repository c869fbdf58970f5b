"""InbetweenPipeline as a diffusers pipeline: SVD's default size, the published noise and
guidance, saving and loading (also by diffusers' own loader), from_pipe, torch.compile, and the
call arguments of diffusers' SVD pipeline (latents, several videos, generator lists, batched
tensor keyframes, callback properties and interrupt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_components, tiny_unet

from inbetweening import attention, backward, conditioning
from inbetweening import folders, runners
from inbetweening.inputs import to_pil
from inbetweening.pipeline import InbetweenPipeline
from inbetweening.utils import InbetweeningError

# Short runs: 2 steps, one re-injection on the first (3 predictions), so that every noise source
# (augmentation, initial latent, re-injection) is used; no guidance (half the UNet rows).
RUN = dict(num_frames=4, num_inference_steps=2, reinject_count=1, max_guidance_scale=1.0,
           output_type="pt")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(pipe, keyframes, seed=0, **kw):
    return pipe(*keyframes, generator=kw.pop("generator", None) or _gen(seed),
                **{**RUN, **kw}).frames


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- 1. default size ------------------------------------------------------------------------------

def _svd_sized_pipe():
    """The tiny components with a UNet configured as SVD-XT's is: sample_size 96 (768 px with
    the VAE's factor 8) and 25 frames."""
    from diffusers import UNetSpatioTemporalConditionModel

    config = {**tiny_unet(num_frames=25).config, "sample_size": 96}
    components = {**tiny_components(), "unet": UNetSpatioTemporalConditionModel.from_config(config)}
    return _quiet(InbetweenPipeline(**components))


@pytest.mark.parametrize("hw, latent_hw", [((48, 64), (72, 128)), ((64, 48), (128, 72))],
                         ids=["landscape", "portrait"])
def test_svd_models_default_to_1024x576_by_the_start_keyframe(hw, latent_hw, monkeypatch):
    """The whole call at the default size; the UNet's work (25 frames of 72x128 latents) is
    stubbed out, as only the sizes are tested here."""
    pipe = _svd_sized_pipe()
    monkeypatch.setattr(pipe.unet, "forward",
                        lambda sample, *args, **kwargs: (torch.zeros_like(sample[:, :, :4]),))
    start = torch.rand(3, *hw, generator=_gen(1))
    latents = pipe(start, method="forward", num_inference_steps=1, max_guidance_scale=1.0,
                   output_type="latent", generator=_gen(0)).frames
    assert latents.shape == (1, 25, 4, *latent_hw)
    width, height = pipe.default_size(start)
    assert (height // 8, width // 8) == latent_hw


def test_default_size_rule():
    pipe = _svd_sized_pipe()
    assert pipe.default_size() == (1024, 576)
    assert pipe.default_size(torch.rand(3, 64, 64)) == (1024, 576)  # square: landscape
    assert pipe.default_size(np.zeros((100, 60, 3), np.uint8)) == (576, 1024)
    assert pipe.default_size(torch.rand(2, 3, 60, 100)) == (1024, 576)  # a batch: the first
    toy = InbetweenPipeline(**tiny_components())  # sample_size 8: its config's square
    assert toy.default_size() == toy.default_size(torch.rand(3, 90, 40)) == (64, 64)


# -- 2. guidance, 3. keyframe noise ----------------------------------------------------------------

class _Seen(Exception):
    """Ends a call once the denoiser is built (the test needs no sampling)."""


def test_guidance_is_symmetrised_only_under_average_fusion(tiny_pipe, keyframes, monkeypatch):
    seen = []

    class Spy(runners.InbetweenDenoiser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.guidance)
            raise _Seen

    monkeypatch.setattr(runners, "InbetweenDenoiser", Spy)
    for fuse in ("average", "linear"):
        with pytest.raises(_Seen):
            _run(tiny_pipe, keyframes, fuse=fuse, min_guidance_scale=1.0, max_guidance_scale=3.0)
    g = torch.linspace(1.0, 3.0, 4)
    torch.testing.assert_close(seen[0], (g + g.flip(0)) / 2, rtol=0, atol=0)
    torch.testing.assert_close(seen[1], g, rtol=0, atol=0)  # the published weighted_average


def test_one_augmentation_noise_for_both_keyframes(tiny_pipe, keyframes, monkeypatch):
    """As published: one draw of the keyframe's shape, the first from the generator, added to
    both keyframes."""
    noises = []
    real = conditioning.image_latent

    def spy(vae, images, strength, noise):
        noises.append(noise.clone())
        return real(vae, images, strength, noise)

    monkeypatch.setattr(conditioning, "image_latent", spy)
    _run(tiny_pipe, keyframes, seed=4, num_inference_steps=1)
    assert len(noises) == 2
    first = torch.randn((1, 3, 64, 64), generator=_gen(4))
    assert torch.equal(noises[0], first) and torch.equal(noises[1], first)


# -- 4. save_pretrained ---------------------------------------------------------------------------

_DIFFUSERS_LOADER = """
import json, os, sys, torch
from diffusers import DiffusionPipeline
from inbetweening import backward
torch.set_num_threads(int(os.environ.get("INBETWEENING_TEST_THREADS", "2")))
folder, out = sys.argv[1], sys.argv[2]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
kw = json.loads(sys.argv[3])
frames = pipe(*torch.load(out + "/keyframes.pt"), generator=torch.Generator().manual_seed(5),
              **kw).frames
torch.save(frames, out + "/frames.pt")
info = dict(cls=type(pipe).__name__, module=type(pipe).__module__, defaults=pipe.defaults,
            feature_extractor=type(pipe.feature_extractor).__name__,
            variant=backward.loaded_variant(pipe.unet), torchvision="torchvision" in sys.modules)
json.dump(info, open(out + "/info.json", "w"))
"""


def _load_with_diffusers(folder, keyframes, tmp_path) -> tuple[torch.Tensor, dict]:
    """Frames (seed 5, RUN) of ``DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`` in a fresh process, offline."""
    torch.save(keyframes, tmp_path / "keyframes.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    args = [sys.executable, "-c", _DIFFUSERS_LOADER, str(folder), str(tmp_path), json.dumps(RUN)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "frames.pt"), json.loads((tmp_path / "info.json").read_text())


def test_save_pretrained_loads_back_with_both_loaders(tiny_pipe, keyframes, tmp_path):
    tiny_pipe.defaults = {"num_inference_steps": 3, "max_guidance_scale": 2.0}
    folder = tmp_path / "model"
    tiny_pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == [folders.PIPELINE_MODULE, "InbetweenPipeline"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    assert json.loads((folder / "inbetweening.json").read_text()) == tiny_pipe.defaults
    assert (folder / "backward.safetensors").is_file()
    want = _run(tiny_pipe, keyframes, seed=5)

    ours = _quiet(InbetweenPipeline.from_pretrained(folder))
    assert ours.defaults == tiny_pipe.defaults
    assert backward.loaded_variant(ours.unet) == "rotation"
    assert torch.equal(_run(ours, keyframes, seed=5), want)

    frames, info = _load_with_diffusers(folder, keyframes, tmp_path)
    assert torch.equal(frames, want)
    assert info["cls"] == "InbetweenPipeline" and info["module"] == "inbetweening.pipeline"
    assert info["defaults"] == tiny_pipe.defaults and info["variant"] == "rotation"
    assert info["feature_extractor"].startswith("CLIPImageProcessor")


def test_save_pretrained_without_backward_weights(tmp_path):
    pipe = InbetweenPipeline(**tiny_components())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "backward.safetensors").write_bytes(b"stale")
    pipe.save_pretrained(folder)
    assert not (folder / "backward.safetensors").exists()
    again = InbetweenPipeline.from_pretrained(folder)
    assert backward.loaded_variant(again.unet) is None and again.defaults == {}


def test_from_pretrained_takes_dtype_or_torch_dtype_without_warning(tiny_model_dir):
    folder = tiny_model_dir / "model"
    for name in ("dtype", "torch_dtype"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = InbetweenPipeline.from_pretrained(folder, **{name: torch.bfloat16})
        assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
        assert not [str(w.message) for w in caught if "dtype" in str(w.message)]
    with pytest.raises(InbetweeningError, match="not both"):
        InbetweenPipeline.from_pretrained(folder, dtype=torch.float16, torch_dtype=torch.float16)


# -- 5. from_pipe, 6. torch.compile ---------------------------------------------------------------

def test_from_pipe_of_a_diffusers_svd_pipeline(keyframes):
    from diffusers import StableVideoDiffusionPipeline

    svd = _quiet(StableVideoDiffusionPipeline(**tiny_components()))
    pipe = _quiet(InbetweenPipeline.from_pipe(svd))
    assert isinstance(pipe, InbetweenPipeline) and pipe.unet is svd.unet
    assert len(attention.installed(pipe.unet)) == len(attention.controlled_layers(svd.unet))
    image = to_pil(keyframes[0])
    kw = dict(height=64, width=64, num_frames=4, num_inference_steps=2, output_type="np")
    a = pipe(image, method="forward", generator=_gen(5), **kw).frames
    b = svd(image, generator=_gen(5), **kw).frames
    assert np.abs(a - b).max() <= 1e-4


def test_compiled_unet_gives_the_same_video(tiny_pipe, keyframes, tmp_path):
    """``pipe.unet = torch.compile(pipe.unet)``: the temporal layers are found through the
    wrapper. The "eager" backend (Dynamo's tracing, no code generation) keeps the test short; the
    default inductor backend works too (measured by hand)."""
    import torch._dynamo

    torch._dynamo.reset()
    want = _run(tiny_pipe, keyframes)
    layers = len(attention.installed(tiny_pipe.unet))
    tiny_pipe.unet = torch.compile(tiny_pipe.unet, backend="eager")
    assert len(attention.installed(tiny_pipe.unet)) == layers > 0
    got = _run(tiny_pipe, keyframes)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert (got - want).abs().max().item() <= 1e-5
    saved = tiny_pipe.save_backward_weights(tmp_path / "b.safetensors")
    assert tiny_pipe.load_backward_weights(saved) == "rotation"
    torch._dynamo.reset()


# -- 7. diffusers' call arguments ------------------------------------------------------------------

def test_given_latents_as_in_diffusers_svd(keyframes):
    """A given initial latent is used (scaled by the initial sigma) as diffusers' SVD uses it."""
    from diffusers import StableVideoDiffusionPipeline

    components = tiny_components()
    ours = _quiet(InbetweenPipeline(**components))
    theirs = _quiet(StableVideoDiffusionPipeline(**components))
    image = to_pil(keyframes[0])
    latents = torch.randn((1, 4, 4, 8, 8), generator=_gen(9))
    kw = dict(height=64, width=64, num_frames=4, num_inference_steps=2, max_guidance_scale=1.0,
              output_type="np")
    a = ours(image, method="forward", generator=_gen(5), latents=latents, **kw).frames
    b = theirs(image, generator=_gen(5), latents=latents, **kw).frames
    assert np.abs(a - b).max() <= 1e-4
    drawn = ours(image, method="forward", generator=_gen(5), **kw).frames
    assert np.abs(a - drawn).max() > 1e-3


def test_several_videos_each_equal_to_its_own_run(tiny_pipe, keyframes):
    singles = [_run(tiny_pipe, keyframes, seed=s) for s in (1, 2)]
    both = _run(tiny_pipe, keyframes, num_videos_per_prompt=2, generator=[_gen(1), _gen(2)])
    assert both.shape == (2, 4, 3, 64, 64)
    assert torch.equal(both[:1], singles[0]) and torch.equal(both[1:], singles[1])
    # One generator serves both videos in turn: the first is the one-video run.
    shared = _run(tiny_pipe, keyframes, seed=1, num_videos_per_prompt=2)
    assert torch.equal(shared[:1], singles[0]) and (shared[1] - shared[0]).abs().max() > 1e-3


def test_batched_tensor_keyframes(tiny_pipe, keyframes):
    """(B, 3, H, W) keyframes in [0, 1]: video b is the run of keyframe pair b; B = 1 is the
    run of the (3, H, W) keyframes."""
    start, end = keyframes
    other = torch.rand(3, 64, 64, generator=_gen(8)), torch.rand(3, 64, 64, generator=_gen(9))
    both = _run(tiny_pipe, (torch.stack([start, other[0]]), torch.stack([end, other[1]])),
                generator=[_gen(0), _gen(1)])
    assert torch.equal(both[:1], _run(tiny_pipe, (start[None], end[None]), seed=0))
    assert torch.equal(both[1:], _run(tiny_pipe, other, seed=1))


def test_keyframe_pairs():
    """A batch of one start or end keyframe goes with each keyframe of the other batch."""
    from inbetweening.inputs import keyframe_pairs

    a, b, c = (PIL.Image.new("RGB", (8, 8), v) for v in ("red", "green", "blue"))
    assert keyframe_pairs([a, b], c) == [(a, c), (b, c)]
    assert keyframe_pairs(a, [b, c]) == [(a, b), (a, c)]
    assert keyframe_pairs(a, None) == [(a, None)]
    with pytest.raises(InbetweeningError, match="2 start and 3 end"):
        keyframe_pairs([a, b], [a, b, c])


def _noop(pipe, i, t, tensors):
    return None


@pytest.mark.parametrize("kw, message", [
    (dict(generator=[_gen(0), _gen(1)]), "2 generators for 1 videos"),
    (dict(num_videos_per_prompt=2, generator=[_gen(0)]), "1 generators for 2 videos"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
    (dict(latents=torch.zeros(1, 4, 4, 4, 4)), "latents must have the shape"),
    (dict(callback_on_step_end=_noop, callback_on_step_end_tensor_inputs=["latents", "noise"]),
     "'noise'"),
    (dict(start=torch.rand(1, 1, 3, 64, 64)), "keyframe tensor must be"),
    (dict(start=torch.rand(2, 3, 64, 64), end=torch.rand(3, 3, 64, 64)), "2 start and 3 end"),
])
def test_bad_call_arguments(tiny_pipe, keyframes, kw, message):
    start, end = kw.pop("start", keyframes[0]), kw.pop("end", keyframes[1])
    kw.setdefault("generator", _gen(0))
    with pytest.raises(InbetweeningError, match=message):
        tiny_pipe(start, end, **{**RUN, **kw})


def test_callback_properties_and_interrupt(tiny_pipe, keyframes):
    seen = []

    def stop_after_first(pipe, i, t, tensors):
        seen.append((i, pipe.num_timesteps, pipe.guidance_scale, pipe.interrupt))
        pipe._interrupt = True
        return {"latents": torch.full_like(tensors["latents"], 0.5)}

    out = _run(tiny_pipe, keyframes, num_inference_steps=3, max_guidance_scale=2.5,
               output_type="latent", num_videos_per_prompt=2,
               callback_on_step_end=stop_after_first)
    assert seen == [(0, 3, 2.5, False)]  # no further step, no second video
    assert torch.equal(out, torch.full((1, 4, 4, 8, 8), 0.5))
    assert tiny_pipe.interrupt
    again = _run(tiny_pipe, keyframes, output_type="latent")  # the next call starts afresh
    assert not tiny_pipe.interrupt and again.shape == (1, 4, 4, 8, 8)

"""How each kind of method runs (:attr:`inbetweening.methods.Method.kind`): from one video's pieces
(:class:`Job`) to its sampler's call, and how many predictions it makes. The pipeline dispatches
here and nowhere else: a method of an existing kind is only a record in
:mod:`~inbetweening.methods`; a new kind is a sampler (:mod:`~inbetweening.sampling`,
:mod:`~inbetweening.peers`) plus its :class:`Kind` in :data:`KINDS`.

=============  ==================================================================================
recurrence     :func:`sampling.SAMPLERS` (Euler, Heun, DPM++(2M) with noise re-injection: the
               paper's Alg. 2) over :class:`~inbetweening.denoisers.InbetweenDenoiser`, guidance
               symmetrised for two directions averaged
trf            :func:`peers.sample_trf` (Euler with jumps back) over the fused denoiser with
               linear fusion and each direction's own guidance
sequential     :func:`peers.sample_sequential` (ViBiD) over two path denoisers: the start frame's
               and the end frame's (GI's rotated backward path for a fine-tuned method)
mpd            :func:`peers.sample_mpd` over the same two path denoisers
=============  ==================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import peers
from .conditioning import KeyframeCondition
from .denoisers import (
    InbetweenDenoiser, PlainPath, RotatedBackward, fuse_weights, guidance_per_frame,
)
from .methods import Method
from .sampling import SAMPLERS, predictions


@dataclass(frozen=True)
class Job:
    """One video's pieces: the model, the method and its resolved ``settings``
    (:func:`methods.resolve_settings`), the keyframe conditions (``end`` None for one direction),
    the added time ids, the sigma schedule, the generator every draw comes from, the layer
    ``plans`` of the backward direction, the pass and row cap, the keyframes' clean latents (for
    the kinds with the last-frame constraint, else None) and the per-step ``callback``."""

    model: torch.nn.Module
    method: Method
    settings: dict
    start: KeyframeCondition
    end: KeyframeCondition | None
    ids: torch.Tensor
    sigmas: torch.Tensor
    generator: torch.Generator | None
    plans: dict | None
    dual_pass: str = "fused"
    max_rows: int | None = None
    clean_latents: tuple[torch.Tensor, torch.Tensor] | None = None
    callback: Callable | None = None

    @property
    def num_frames(self) -> int:
        return self.settings["num_frames"]

    def guidance(self, symmetric: bool) -> torch.Tensor | None:
        s = self.settings
        return guidance_per_frame(self.num_frames, s["min_guidance_scale"],
                                  s["max_guidance_scale"], symmetric)

    def fused(self, fuse: str, symmetric: bool) -> InbetweenDenoiser:
        return InbetweenDenoiser(self.model, self.start, self.end, self.ids,
                                 self.guidance(symmetric), fuse_weights(self.num_frames, fuse),
                                 self.plans, self.dual_pass, self.max_rows)

    def paths(self):
        """(forward, backward) path denoisers guided with CFG++ at the settings' scale."""
        scale = self.settings["cfgpp_scale"]
        forward = PlainPath(self.model, self.start, self.ids, scale, max_rows=self.max_rows)
        if self.method.backward == "finetuned":
            return forward, RotatedBackward(self.model, self.start, self.end, self.ids, scale,
                                            self.plans, self.dual_pass, self.max_rows)
        return forward, PlainPath(self.model, self.end, self.ids, scale, max_rows=self.max_rows)


Run = Callable[[Callable, torch.Tensor], torch.Tensor]  # run(wrap, x): wrap wraps each denoiser


def _run_recurrence(job: Job) -> Run:
    s = job.settings
    denoise = job.fused(s["fuse"], symmetric=job.end is not None and s["fuse"] == "average")
    sample = SAMPLERS[s["sampler"]]
    return lambda wrap, x: sample(
        wrap(denoise), x, job.sigmas, generator=job.generator,
        reinject_count=s["reinject_count"], reinject_fraction=s["reinject_fraction"],
        reinject_at=s["reinject_at"], callback=job.callback)


def _run_trf(job: Job) -> Run:
    denoise = job.fused("linear", symmetric=False)
    return lambda wrap, x: peers.sample_trf(
        wrap(denoise), x, job.sigmas, generator=job.generator,
        noise_scale=job.settings["renoise_scale"], callback=job.callback)


def _path_sampler(sampler) -> Callable[[Job], Run]:
    """The runner of a sampler over the two path denoisers and the last-frame constraint's
    keyframe latents (ViBiD's, MPD's)."""
    def run(job: Job) -> Run:
        forward, backward = job.paths()
        start, end = job.clean_latents
        return lambda wrap, x: sampler(
            wrap(forward), wrap(backward), x, job.sigmas, generator=job.generator,
            start_latent=start, end_latent=end, callback=job.callback)
    return run


@dataclass(frozen=True)
class Kind:
    """A kind of sampler: ``run(job)`` gives ``run(wrap, x)``, ``predictions(settings)`` the
    denoiser calls (the wrapped ones) per video; ``clean_latents``: it needs the keyframes' clean
    latents (the last-frame constraint)."""

    run: Callable[[Job], Run]
    predictions: Callable[[dict], int]
    clean_latents: bool = False


KINDS = {
    "recurrence": Kind(_run_recurrence, lambda s: predictions(
        s["sampler"], s["num_inference_steps"], s["reinject_count"], s["reinject_fraction"],
        reinject_at=s["reinject_at"])),
    "trf": Kind(_run_trf, lambda s: peers.trf_predictions(s["num_inference_steps"])),
    "sequential": Kind(_path_sampler(peers.sample_sequential),
                       lambda s: peers.sequential_predictions(s["num_inference_steps"]),
                       clean_latents=True),
    "mpd": Kind(_path_sampler(peers.sample_mpd), lambda s: peers.mpd_predictions(s["num_inference_steps"]),
                clean_latents=True),
}


def predictions_per_video(method: Method, settings: dict) -> int:
    """Denoiser calls per video of ``method`` with ``settings``."""
    return KINDS[method.kind].predictions(settings)

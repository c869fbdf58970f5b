"""``evaluate``: every method on every pair, resumable, shared among processes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import time
from pathlib import Path

from ..locate import model_inputs, resolve_model
from ..methods import BACKWARD_METHODS
from ..methods import METHODS as DIFFUSION_METHODS
from ..options import SamplingOptions, check_seed
from ..utils import InbetweeningError, check_writable, why_protected
from .report import write_report
from .results import (
    SETTINGS, Settings, load_record, record_path, save_npz, video_path, write_json,
)
from .scoring import (
    SET_BY_THE_SET, FeatureNets, generate, pair_seed, parse_methods, sampling_call, score,
)
from .sets import BenchmarkSet, load_set


# What evaluation imports beyond the library (``pip install 'inbetweening[eval]'``): SSIM,
# the flow baseline and the toy sets' blending score (OpenCV), the plots.
EVAL_EXTRA = ("torchmetrics", "cv2", "matplotlib")


def check_eval_extra() -> None:
    """Refuse at once, in one line, an install without the ``eval`` extra (rather than fail
    after the first video is made)."""
    missing = [name for name in EVAL_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise InbetweeningError(f"evaluation needs the eval extra (no {', '.join(missing)} in "
                                "this install): pip install 'inbetweening[eval]'")


def _options(options) -> SamplingOptions:
    if isinstance(options, SamplingOptions):
        return options.check()
    try:
        return SamplingOptions(**(options or {})).check()
    except TypeError:
        known = [f.name for f in dataclasses.fields(SamplingOptions) if f.name not in SET_BY_THE_SET]
        raise InbetweeningError(f"unknown sampling options {sorted(options)}; known: "
                                f"{', '.join(known)}") from None


def _settings(bset: BenchmarkSet, model, backward, seed: int,
              options: SamplingOptions) -> Settings:
    source = resolve_model(model)
    sampling = {k: v for k, v in dataclasses.asdict(options).items() if k not in SET_BY_THE_SET}
    return Settings(set_root=str(bset.root.resolve()), set_digest=bset.digest,
                    model=str(source) if source is not None else None,
                    backward=str(Path(backward).resolve()) if backward else None,
                    seed=int(seed), sampling=json.loads(json.dumps(sampling)))


def _check_results_folder(out: Path, settings: Settings, overwrite: bool, inputs) -> None:
    """``out`` must be new, or hold results of the same settings (resumed), or hold results and be
    overwritten; never what the run reads (``inputs``), a folder holding it or inside it."""
    if out.exists() and not out.is_dir():
        raise InbetweeningError(f"{out} exists and is not a folder")
    if why := why_protected(out, inputs):
        raise InbetweeningError(f"will not write results into {out}: {why}")
    check_writable(out)
    settings_path = out / SETTINGS
    if settings_path.is_file() and not overwrite:
        try:
            old = json.loads(settings_path.read_text())
        except ValueError:
            raise InbetweeningError(f"{settings_path} is not readable JSON; give another --out "
                                    "or --overwrite") from None
        diff = [k for k, v in settings.as_dict().items()
                if not isinstance(old, dict) or old.get(k) != v]
        if diff:
            raise InbetweeningError(f"{out} holds results made with other settings (different "
                                    f"{', '.join(diff)}); give another --out or --overwrite")
    elif out.is_dir() and any(out.iterdir()) and not settings_path.is_file():
        raise InbetweeningError(f"{out} is a folder that does not hold evaluation results; give "
                                "another --out")


def _load_model(methods, bset, options, model, backward, device, dtype, state, quiet,
                compile=False, memory=None):
    """The pipeline for the diffusion methods among ``methods`` (None if there are none), with
    every method's call checked against it before any work."""
    diffusion = [m for m in methods if m in DIFFUSION_METHODS]
    if not diffusion:
        return None
    from .. import backward as bw
    from ..loading import load_pipeline

    dev = device if device is not None or state.num_processes == 1 else state.device
    pipe = load_pipeline(model, backward, dev, dtype, quiet=quiet or not state.is_main_process,
                         compile=compile, memory=memory)
    pipe.set_progress_bar_config(disable=True)
    for m in BACKWARD_METHODS:
        if m in diffusion and bw.loaded_variant(pipe.unet) is None:
            raise InbetweeningError(f"method {m!r} needs backward weights (--backward FILE, or a "
                                    "model folder with backward.safetensors)")
    for m in diffusion:  # frame count, size and steps the model can take
        s, notes = pipe.call_settings(**sampling_call(options, m, bset, pipe))
        for note in notes if not quiet and state.is_main_process else ():
            print(f"note: {note}")
        pipe.check_inputs(s["height"], s["width"], s["num_frames"], m, s["num_inference_steps"],
                          s["sampler"], s["reinject_at"])
    return pipe


def _prepare_results_folder(out: Path, settings: Settings, overwrite: bool) -> None:
    if overwrite:
        for name in ("records", "videos", "plots", "metrics.json", "metrics.md", SETTINGS):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS, settings.as_dict())


def _done(out: Path, method: str, pair_id: str) -> bool:
    """Whether the record of (method, pair) is there and readable (a damaged one is redone)."""
    try:
        record = load_record(out, method, pair_id)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("pair") == pair_id and video_path(
        out, method, pair_id).is_file()


def _run_pairs(out, bset, methods, pipe, options, seed, nets, state, quiet, on_record) -> int:
    """Generate and score this process's share of the (pair, method) records still to do."""
    from tqdm.auto import tqdm

    todo = [(p, m) for p in bset.pairs for m in methods if not _done(out, m, p.id)]
    mine = todo[state.process_index::state.num_processes]
    done = len(bset.pairs) * len(methods) - len(todo)
    if state.is_main_process and done and not quiet:
        print(f"resuming: {done} of {len(bset.pairs) * len(methods)} results already in {out}")
    desc = "evaluate" if state.num_processes == 1 else f"evaluate [{state.process_index}]"
    for pair, method in tqdm(mine, desc=desc, position=state.process_index, disable=quiet):
        t0 = time.perf_counter()
        video = generate(method, pair, bset, pipe=pipe, options=options, seed=seed)
        seconds = time.perf_counter() - t0
        save_npz(video_path(out, method, pair.id), video)
        diffusion = method in DIFFUSION_METHODS
        record = {"pair": pair.id, "method": method,
                  "seed": pair_seed(seed, pair.id) if diffusion else None,
                  **score(video, pair, bset, nets.lpips),
                  "predictions": pipe.num_predictions if diffusion else 0,
                  "seconds": seconds}
        write_json(record_path(out, method, pair.id), record)
        if on_record is not None:
            on_record(method, pair.id)
    return len(mine)


def evaluate(set_path, methods, out, *, model=None, backward=None, device=None, dtype=None,
             seed: int = 0, options: SamplingOptions | dict | None = None, lpips=None,
             inception=None, fvd=None, overwrite: bool = False, on_record=None,
             quiet: bool = False, compile: bool = False,
             memory: str | None = None) -> dict | None:
    """Run ``methods`` on every pair of the set at ``set_path``; write records, ``metrics.json``,
    ``metrics.md`` and plots under ``out``. Returns the metrics (on the main process; None on the
    others). Everything the user gave is checked before any work. ``options``: the sampling
    options (:class:`~inbetweening.options.SamplingOptions`, or a dict of its fields); the
    method, frame count and size come from the set. ``on_record(method, pair_id)`` is called
    after each record is written. ``compile``: ``torch.compile`` the UNet. ``memory``: a memory
    setting (:mod:`inbetweening.memory`)."""
    from ..loading import distributed_state

    check_eval_extra()
    check_seed(seed)
    bset = load_set(set_path)
    methods = parse_methods(methods if isinstance(methods, str) else ",".join(methods))
    options = _options(options)
    nets = FeatureNets.load(lpips, inception, fvd)
    out = Path(out)
    settings = _settings(bset, model, backward, seed, options)
    _check_results_folder(out, settings, overwrite,
                          [bset.root, *model_inputs(model, backward)])
    state = distributed_state(device)
    pipe = _load_model(methods, bset, options, model, backward, device, dtype, state, quiet,
                       compile, memory)

    if state.is_main_process:
        _prepare_results_folder(out, settings, overwrite)
    state.wait_for_everyone()
    t0 = time.time()
    count = _run_pairs(out, bset, methods, pipe, options, seed, nets, state, quiet, on_record)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    result = write_report(out, bset, methods, settings, nets)
    if not quiet:
        print(f"{count} results in {time.time() - t0:.1f} s; wrote {out / 'metrics.json'}, "
              f"{out / 'metrics.md'}, {out / 'plots'}")
    return result

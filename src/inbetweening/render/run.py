"""``inbetween render``: the shots of a manifest, shared among processes, resumable."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .. import media
from ..keyframes import check_keyframes, check_options, interpolate
from ..options import SamplingOptions
from ..utils import InbetweeningError, check_target
from .manifest import RECORDS, SUMMARY, Shot, raise_row_errors, read_manifest
from .records import (
    DONE, FAILED, RENDERING, load_record, same_settings, write_record, write_summary,
)


def check_render_folder(out: Path) -> Path:
    """``out`` must be new, empty, or a render folder (then the render goes on there)."""
    if not (out.exists() or out.is_symlink()):
        return check_target(out, False, folder=True)  # (its parents: folders)
    if not out.is_dir():
        raise InbetweeningError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not ((out / RECORDS).is_dir() or (out / SUMMARY).is_file()):
        raise InbetweeningError(f"{out} is a folder that does not hold a render; give another "
                                "output folder")
    return out


def made_with(model, backward) -> dict:
    """The model's part of every shot's settings: which model and backward weights."""
    from ..loading import resolve_model

    source = resolve_model(model)
    if isinstance(source, Path):
        source = source.resolve()
    return {"model": str(source) if source is not None else None,
            "backward": str(Path(backward).resolve()) if backward else None}


def _differences(record: dict, shot: Shot, made: dict) -> str:
    old = {"seed": record.get("seed"), **(record.get("settings") or {})}
    new = {"seed": shot.seed, **shot.settings(), **made}
    names = [k for k in new if k != "sampling" and old.get(k) != new[k]]
    old_sampling = old.get("sampling") if isinstance(old.get("sampling"), dict) else {}
    names += [k for k, v in new["sampling"].items() if old_sampling.get(k) != v]
    return ", ".join(names) or "settings"


def shots_to_render(out: Path, manifest: Path, shots: list[Shot], made: dict,
                    overwrite: bool) -> list[Shot]:
    """The shots whose output is not in ``out`` yet (with these settings), in the manifest's
    order. An output that is there but was made with other settings, or not by a render, is
    refused (one line per row) unless ``overwrite``; a shot that was being rendered when its
    process stopped, or failed, is rendered again."""
    todo, errors = [], []
    for shot in shots:
        target = out / shot.output
        record = load_record(out, shot.output)
        same = same_settings(record, shot, made)
        try:  # the output's kind against what is there, and never one of the keyframes
            media.check_output(target, True, shot.paths)
        except InbetweeningError as e:
            errors.append((shot.line, [("output", str(e))]))
            continue
        there = target.exists() or target.is_symlink()
        if there and same and record["status"] == DONE:
            continue
        if there and not same and not overwrite:
            why = (f"was rendered with other settings ({_differences(record, shot, made)})"
                   if record else "was not made by inbetween render")
            errors.append((shot.line, [("output", f"{target} {why}; pass --overwrite to "
                                                  "render it again")]))
            continue
        todo.append(shot)
    raise_row_errors(manifest, errors)
    return todo


def check_shots_on(pipe, manifest: Path, shots: list[Shot]) -> None:
    """Every shot's settings against the loaded model (frames, size, backward weights ...):
    one line per row the model cannot take."""
    said: dict[SamplingOptions, str | None] = {}
    errors = []
    for shot in shots:
        if shot.options not in said:
            try:
                check_options(pipe, shot.options)
                said[shot.options] = None
            except InbetweeningError as e:
                said[shot.options] = str(e)
        if said[shot.options]:
            errors.append((shot.line, [(None, said[shot.options])]))
    raise_row_errors(manifest, errors)


def render_shot(pipe, shot: Shot, out: Path, made: dict, on_segment=None) -> dict:
    """Render one shot into ``out`` and record it; a shot that fails (a keyframe that cannot be
    read, memory ...) is recorded as failed, with the reason, and nothing is written for it."""
    write_record(out, shot, made, RENDERING, pid=os.getpid())
    t0 = time.perf_counter()
    try:
        images = [media.read_image(p) for p in shot.paths]
        check_keyframes(images, shot.loop)
        video = interpolate(pipe, images, shot.options, seed=shot.seed, loop=shot.loop,
                            side_by_side=shot.side_by_side, on_segment=on_segment)
        media.write_video(video.frames, out / shot.output, fps=video.fps, overwrite=True,
                          inputs=shot.paths)
    except Exception as e:  # noqa: BLE001 - one shot's failure must not stop the others
        error = str(e) if isinstance(e, InbetweeningError) else f"{type(e).__name__}: {e}"
        return write_record(out, shot, made, FAILED, error=error,
                            seconds=round(time.perf_counter() - t0, 3))
    f, h, w = video.frames.shape[:3]
    return write_record(out, shot, made, DONE, seconds=round(time.perf_counter() - t0, 3),
                        predictions=video.predictions, frames=f, size=f"{w}x{h}", fps=video.fps)


def _line(record: dict) -> str:
    where = f"line {record['line']} {record['output']}"
    if record["status"] == DONE:
        return (f"{where}: {record['frames']} frames, {record['size']}, {record['seconds']:.1f} s, "
                f"{record['predictions']} predictions")
    return f"{where}: failed: {record['error']}"


def _render_mine(pipe, out: Path, manifest: Path, shots: list[Shot], mine: list[Shot],
                 made: dict, state, quiet: bool) -> None:
    """Render this process's shots, one after another; the summary is brought up to date after
    each. Progress: a bar of this process's shots, and one of the steps of the shot at hand."""
    from tqdm.auto import tqdm

    rank, many = state.process_index, state.num_processes > 1
    bar = tqdm(mine, desc=f"render [{rank}]" if many else "render", unit="shot", position=rank,
               disable=quiet, dynamic_ncols=True)
    for shot in bar:
        bar.set_postfix_str(shot.output)
        pipe.set_progress_bar_config(desc=shot.output, leave=False, disable=quiet,
                                     position=state.num_processes + rank, dynamic_ncols=True)

        def on_segment(i, n, shot=shot):
            if n > 1:
                bar.set_postfix_str(f"{shot.output}, segment {i + 1}/{n}")

        record = render_shot(pipe, shot, out, made, on_segment)
        counts = write_summary(out, manifest, shots, made)["counts"]
        if not quiet:  # (the count of all processes' shots: the render's overall progress)
            finished = counts.get(DONE, 0) + counts.get(FAILED, 0)
            said = f"{_line(record)} [{finished}/{len(shots)} shots]"
            bar.write(f"[{rank}] {said}" if many else said)


def _prepare(manifest: Path, out: Path, options, seed: int, model, backward, overwrite: bool):
    """Everything checked before any work: the output folder, every row of the manifest, the
    outputs already there. Returns (shots, shots still to render, the model's settings)."""
    check_render_folder(out)
    shots = read_manifest(manifest, options, seed)
    made = made_with(model, backward)
    return shots, shots_to_render(out, manifest, shots, made, overwrite), made


def render(manifest, out, *, model=None, backward=None, device=None, dtype=None,
           options: SamplingOptions | None = None, seed: int = 0, overwrite: bool = False,
           compile: bool = False, quiet: bool = False,
           memory: str | None = None) -> dict | None:
    """Render every shot of ``manifest`` (see :mod:`inbetweening.render.manifest`) into the
    folder ``out``, with the model loaded once; returns the summary (``out/render.json``) on the
    main process, None on the others. Under ``accelerate launch`` or ``torchrun`` the processes
    share the shots still to render. Shots already in ``out`` with the same settings are kept;
    every row is checked before any work (InbetweeningError, one line per bad row); a shot that
    fails is recorded as failed (``summary["counts"]["failed"]``) and the others go on.
    ``options``: the sampling options of the rows' empty cells; ``seed``: the seed of rows
    without one; ``overwrite``: render again outputs made with other settings; ``memory``: a
    memory setting (:mod:`inbetweening.memory`)."""
    manifest, out = Path(manifest), Path(out)
    try:  # (what needs no model is checked before torch is imported: a mistake is said at once)
        shots, todo, made = _prepare(manifest, out, options, seed, model, backward, overwrite)
    except InbetweeningError:
        if os.environ.get("RANK", "0") != "0":  # the main process says what is wrong, once
            raise SystemExit(2) from None
        raise
    from ..loading import distributed_state, load_pipeline

    state = distributed_state(device)
    try:
        pipe = None
        if todo:
            # (several processes on "cuda": each its own GPU, as the launcher numbers them)
            many = state.num_processes > 1 and device in (None, "cuda")
            dev = state.device if many else device
            pipe = load_pipeline(model, backward, dev, dtype, compile=compile, memory=memory,
                                 quiet=quiet or not state.is_main_process)
            check_shots_on(pipe, manifest, todo)
    except InbetweeningError:
        if not state.is_main_process:  # the main process says what is wrong, once
            raise SystemExit(2) from None
        raise
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if len(todo) < len(shots) and not quiet:
            print(f"resuming: {len(shots) - len(todo)} of {len(shots)} shots already in {out}")
    state.wait_for_everyone()
    t0 = time.time()
    mine = todo[state.process_index::state.num_processes]
    if mine:
        _render_mine(pipe, out, manifest, shots, mine, made, state, quiet)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    summary = write_summary(out, manifest, shots, made)
    if not quiet:
        counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items())
        print(f"{len(todo)} shots rendered in {time.time() - t0:.1f} s ({counts}); wrote "
              f"{out / SUMMARY}")
    return summary

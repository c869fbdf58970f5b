"""The evaluation harness: keyframe-pair sets, every method on every pair, metrics, table, plots.

    inbetween benchmark make --videos DIR --out SET --gap 25 [--pairs-per-video K]
    inbetween benchmark toy --n 16 --out SET            # held-out toy clips with true tracks
    inbetween evaluate SET --methods gi,trf,gi-noft,forward,flow,crossfade --out RESULTS

A *set* is a folder with ``manifest.json`` (readable JSON: the frame count and size, and for each
pair its id, keyframe files, the folder of the true clip's frames (PNG) and, for toy sets, the
ground truth of every vehicle: colour, heading, speed and centre in every frame).

``evaluate`` writes one record per (pair, method) as soon as it is done (``records/``, with the
generated frames in ``videos/``), so an interrupted run continues where it stopped; at the end
``metrics.json`` (``{"methods": {METHOD: {METRIC: mean}}, "pairs": [...]}``), ``metrics.md`` (the
table) and ``plots/*.png``. Every pair is generated with its own seed, derived from ``--seed`` and
the pair's id, so the results do not depend on which process does which pair or in which order:
under ``accelerate launch --multi_gpu --num_processes N -m inbetweening.cli evaluate ...`` (on
GPUs, or on the CPU: accelerate then runs N CPU processes; its ``--cpu`` flag would start only
one) or ``torchrun --nproc-per-node N -m inbetweening.cli evaluate ...`` the processes share the
pairs and the table is the one a single process makes.
"""

from __future__ import annotations

import importlib

from ..baselines import BASELINES
from ..methods import METHODS

ALL_METHODS = METHODS + tuple(BASELINES)
DEFAULT_METHODS = "gi,trf,gi-noft,forward,flow,crossfade"

# module of each public name, imported when first used (the command line imports only this file)
_EXPORTS = {
    "sets": ("BenchmarkSet", "Pair", "load_set", "make_toy_set", "make_video_set",
             "model_geometry", "pair_starts", "MANIFEST", "SET_FORMAT"),
    "results": ("Settings", "readable_json", "record_path", "video_path"),
    "scoring": ("FeatureNets", "generate", "pair_seed", "parse_methods", "sampling_call", "score",
                "distribution_metrics"),
    "report": ("METRICS", "aggregate", "markdown_table", "write_plots", "write_report"),
    "run": ("evaluate",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)

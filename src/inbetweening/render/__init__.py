"""Many shots: ``inbetween render MANIFEST -o OUT``.

A manifest (CSV or JSON lines, :mod:`.manifest`) lists shots: keyframes, an output name and any
sampling setting of ``inbetween interpolate``. Each shot is rendered exactly as ``interpolate``
renders it (:func:`inbetweening.keyframes.interpolate`), with its own seed, so its video does not
depend on the process that renders it, nor on the order. Under ``accelerate launch
--num_processes N`` or ``torchrun --nproc-per-node N`` the processes share the shots; a rerun
renders only what is missing (:mod:`.run`). ``OUT/render.json`` sums up every shot (:mod:`.records`).
"""

from .manifest import COLUMNS, Shot, read_manifest
from .run import render

__all__ = ["COLUMNS", "Shot", "read_manifest", "render"]

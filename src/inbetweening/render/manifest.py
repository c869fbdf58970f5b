"""The manifest of ``inbetween render``: one shot a row, as CSV (a header row of column names) or
JSON lines (one object a line).

Columns: ``keyframes`` (image paths, relative to the manifest's folder: ``;``-separated in CSV; in
JSON a list, or a ``;``-separated string), ``output`` (a name under the output folder: NAME.mp4,
.gif, .webp, .zip, or a name without a suffix for a folder of PNG frames), and, each optional,
``seed``, ``loop``, ``side_by_side`` and every sampling option of
:class:`~inbetweening.options.SamplingOptions` (method, recipe, frames, steps, size, fps,
guidance, ...: new options become columns by themselves), with the values the command line
takes (``64x64``, ``1,3``, ``true``). ``-`` and ``_`` are the same in a column's name. An empty
cell (in JSON a missing or null key) takes the command line's value.

:func:`read_manifest` checks every row before anything is rendered and names each bad row with
its line and columns.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import media
from ..keyframes import segment_pairs
from ..options import SamplingOptions, check_seed, field_type
from ..inputs import check_aspects
from ..utils import InbetweeningError

SHOT_COLUMNS = ("keyframes", "output", "seed", "loop", "side_by_side")
OPTION_FIELDS = {f.name: f for f in dataclasses.fields(SamplingOptions)}
COLUMNS = SHOT_COLUMNS + tuple(OPTION_FIELDS)
# Names under the output folder that the render keeps for itself.
SUMMARY = "render.json"
RECORDS = ".render"
MOST_ERRORS = 50  # bad rows listed one by one; the rest are counted


@dataclass(frozen=True)
class Shot:
    """One row: ``output`` (a '/'-separated path under the output folder), its ``keyframes`` as
    written and as ``paths`` (resolved against the manifest's folder), the sampling ``options``
    (the command line's, under the row's), the ``seed``, ``loop`` and ``side_by_side``."""

    line: int
    output: str
    keyframes: tuple[str, ...]
    paths: tuple[Path, ...]
    options: SamplingOptions
    seed: int
    loop: bool = False
    side_by_side: bool = False

    def settings(self) -> dict:
        """What, with the model, makes this shot's video (JSON values): compared on a rerun."""
        sampling = json.loads(json.dumps(dataclasses.asdict(self.options)))
        return {"keyframes": list(self.keyframes), "seed": self.seed, "loop": self.loop,
                "side_by_side": self.side_by_side, "sampling": sampling}


class RowError(Exception):
    """What is wrong with one row: ``problems`` as (column or None, message)."""

    def __init__(self, problems: list[tuple[str | None, str]]):
        super().__init__(problems)
        self.problems = problems


def row_error_line(manifest: Path, line: int, problems: list[tuple[str | None, str]]) -> str:
    """One line saying all that is wrong with one row."""
    said = "; ".join(f"column {c}: {m}" if c else m for c, m in problems)
    return f"{manifest.name} line {line}: {said}"


def raise_row_errors(manifest: Path, errors: list[tuple[int, list]]) -> None:
    """One error line per bad row (the first :data:`MOST_ERRORS`, then a count), if any."""
    if not errors:
        return
    lines = [row_error_line(manifest, line, problems) for line, problems in errors[:MOST_ERRORS]]
    if len(errors) > MOST_ERRORS:
        lines.append(f"{manifest.name}: and {len(errors) - MOST_ERRORS} more bad rows")
    raise InbetweeningError("\n".join(lines))


def column_name(name) -> str:
    return str(name).strip().lower().replace("-", "_")


def _csv_rows(path: Path, text: str):
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header:
        raise InbetweeningError(f"{path}: no header row (the column names)")
    names = [column_name(n) for n in header]
    unknown = [n for n in names if n not in COLUMNS]
    twice = sorted({n for n in names if names.count(n) > 1})
    if unknown or twice:
        said = [f"unknown columns {', '.join(unknown)} (known: {', '.join(COLUMNS)})"] * \
            bool(unknown) + [f"columns given twice: {', '.join(twice)}"] * bool(twice)
        raise InbetweeningError(f"{path.name} line 1: {'; '.join(said)}")
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(names):
            yield line, RowError([(None, f"{len(cells)} cells but {len(names)} columns")])
            continue
        yield line, dict(zip(names, cells))


def _json_rows(path: Path, text: str):
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as e:
            yield line, RowError([(None, f"not JSON ({e.msg})")])
            continue
        if not isinstance(row, dict):
            yield line, RowError([(None, "not a JSON object ({\"column\": value, ...})")])
            continue
        names = [column_name(n) for n in row]
        unknown = [n for n in names if n not in COLUMNS]
        if unknown or len(set(names)) < len(names):
            yield line, RowError([(n, "unknown column") for n in unknown] or
                                 [(None, "a column given twice")])
            continue
        yield line, dict(zip(names, row.values()))


def manifest_rows(path: Path):
    """(line, {column: value}) for each row of a CSV or JSON-lines manifest, or (line, RowError)
    for a row that cannot be read as one."""
    if not path.is_file():
        raise InbetweeningError(f"{path}: no such manifest file")
    kind = path.suffix.lower()
    if kind not in (".csv", ".jsonl", ".ndjson"):
        raise InbetweeningError(f"{path}: a manifest is a .csv or a .jsonl (JSON lines) file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InbetweeningError(f"{path}: cannot read the manifest ({e})") from None
    return list(_csv_rows(path, text) if kind == ".csv" else _json_rows(path, text))


def _given(value) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def field_value(kind: type, value, parse=None):
    """A cell as the command line would read it (a JSON value of the right type as it is);
    InbetweeningError when it is not one."""
    if parse is not None:
        return parse(value if isinstance(value, str) else str(value))
    text = value.strip() if isinstance(value, str) else None
    if kind is bool:
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if isinstance(value, bool) or (text is not None and text.lower() in words):
            return value if isinstance(value, bool) else words[text.lower()]
        raise InbetweeningError(f"must be true or false, not {value!r}")
    if kind in (int, float) and not isinstance(value, bool):
        numbers = (int,) if kind is int else (int, float)
        if isinstance(value, numbers):
            return kind(value)
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
        raise InbetweeningError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                f"not {value!r}")
    if kind is str and text is not None:
        return text
    raise InbetweeningError(f"must be {kind.__name__}, not {value!r}")


def _options(row: dict, defaults: SamplingOptions, problems: list) -> SamplingOptions:
    """The command line's options under the row's; each bad cell is a problem of its column."""
    values = {}
    for name, f in OPTION_FIELDS.items():
        if not _given(row.get(name)):
            continue
        try:
            value = field_value(field_type(SamplingOptions, f), row[name], f.metadata.get("parse"))
            SamplingOptions(**{name: value}).check()
            values[name] = value
        except InbetweeningError as e:
            problems.append((name, str(e)))
    try:
        return defaults.replace(**values).check()
    except InbetweeningError as e:
        problems.append((None, str(e)))
        return defaults


def _cell(row: dict, name: str, kind: type, default, problems: list):
    if not _given(row.get(name)):
        return default
    try:
        value = field_value(kind, row[name])
        return check_seed(value) if name == "seed" else value
    except InbetweeningError as e:
        problems.append((name, str(e)))
        return default


def _keyframes(row: dict, base: Path, loop: bool, problems: list) -> tuple[tuple, tuple]:
    """The keyframes as written and as paths; each is an image file (its header is read, not its
    pixels) and their aspect ratios agree."""
    value = row.get("keyframes")
    items = value if isinstance(value, list) else str(value or "").split(";")
    if not all(isinstance(k, str) for k in items):
        problems.append(("keyframes", "give file names (text)"))
        return (), ()
    written = tuple(k.strip() for k in items if k.strip())
    paths = tuple(base / k for k in written)
    try:
        segment_pairs(len(written), loop)
        check_aspects([media.image_size(p) for p in paths])
    except InbetweeningError as e:
        problems.append(("keyframes", str(e)))
    return written, paths


def _output(row: dict, problems: list) -> str:
    """The output's path under the output folder, '/'-separated; of a kind the writers know."""
    text = str(row.get("output") or "").strip()
    name = PurePosixPath(text.replace("\\", "/"))
    if not text:
        problems.append(("output", "give the output's name (e.g. shot1.mp4)"))
    elif name.is_absolute() or ".." in name.parts or ":" in name.parts[0]:
        problems.append(("output", f"{text} is not a name under the output folder"))
    elif name.parts[0] in (SUMMARY, RECORDS):
        problems.append(("output", f"{name.parts[0]} is the render's own"))
    else:
        try:
            media.output_kind(name)
        except InbetweeningError as e:
            problems.append(("output", str(e)))
    return name.as_posix()


def read_shot(line: int, row: dict, base: Path, defaults: SamplingOptions, seed: int) -> Shot:
    """The shot of one row, or RowError with every problem of the row."""
    problems: list = []
    loop = _cell(row, "loop", bool, False, problems)
    shot = Shot(line=line, output=_output(row, problems),
                keyframes=(), paths=(), options=_options(row, defaults, problems),
                seed=_cell(row, "seed", int, seed, problems), loop=loop,
                side_by_side=_cell(row, "side_by_side", bool, False, problems))
    written, paths = _keyframes(row, base, loop, problems)
    if problems:
        raise RowError(problems)
    return dataclasses.replace(shot, keyframes=written, paths=paths)


def _clashes(shots: list[Shot]) -> list[tuple[int, list]]:
    """Rows whose output is another row's, lies inside another row's folder of frames or would
    be the folder of another's (names compared without case, as some file systems do)."""
    first: dict[str, Shot] = {}
    holders: dict[str, Shot] = {}  # a folder -> the first output inside it
    errors = []
    for shot in shots:
        key = shot.output.casefold()
        parents = [p.as_posix().casefold() for p in PurePosixPath(shot.output).parents]
        if key in first:
            said = f"{shot.output} is also the output of line {first[key].line}"
        elif any(p in first for p in parents):
            other = next(first[p] for p in parents if p in first)
            said = f"{shot.output} is inside {other.output}, the output of line {other.line}"
        elif key in holders:
            other = holders[key]
            said = f"{shot.output} holds {other.output}, the output of line {other.line}"
        else:
            first[key] = shot
            for p in parents:
                holders.setdefault(p, shot)
            continue
        errors.append((shot.line, [("output", said)]))
    return errors


def read_manifest(manifest, defaults: SamplingOptions | None = None, seed: int = 0) -> list[Shot]:
    """The shots of a manifest, every row checked first: an InbetweeningError of one line per
    bad row (line number, columns, what is wrong) when any is bad. ``defaults``: the options a
    row's empty cells take; ``seed``: the seed of rows without one."""
    path = Path(manifest)
    defaults = (defaults or SamplingOptions()).check()
    shots, errors = [], []
    for line, row in manifest_rows(path):
        try:
            if isinstance(row, RowError):
                raise row
            shots.append(read_shot(line, row, path.parent, defaults, check_seed(seed)))
        except RowError as e:
            errors.append((line, e.problems))
    errors = sorted(errors + _clashes(shots), key=lambda e: e[0])
    raise_row_errors(path, errors)
    if not shots:
        raise InbetweeningError(f"{path}: the manifest has no shots (rows)")
    return shots

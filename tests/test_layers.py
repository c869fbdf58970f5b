"""The package's imports run one way: from the command line down to the model, never back up, and
never in a circle (function-local imports included). Read from the source, not from sys.modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import inbetweening

ROOT = Path(inbetweening.__file__).parent

# Lowest level first. A module may import its own level or a lower one.
LAYERS = [
    ["utils"],
    ["options", "methods", "media", "conditioning", "backbones", "attention", "baselines",
     "metrics", "locate", "inputs", "toy.world", "toy.autoencoder", "memory"],
    ["backward", "sampling", "peers", "denoisers", "runners", "folders", "encoding", "data",
     "toy.models", "toy.tracker", "toy.blending", "footprint"],
    ["pipeline"],
    ["loading", "capacity", "keyframes"],
    # the application layer: the work commands do, then the commands, then the entry point
    ["train_config", "training", "toy.training", "evaluation", "evaluation.*", "render",
     "render.*", "demo", "app", "page"],
    ["commands", "commands.*"],
    ["cli", "__main__"],
]
MODEL_LAYER = {"attention", "backbones", "backward", "capacity", "conditioning", "denoisers",
               "encoding", "folders", "footprint", "inputs", "locate", "memory", "methods",
               "sampling", "peers", "pipeline", "runners"}
APPLICATION = {"cli", "app", "page", "evaluation", "training", "demo", "commands", "render"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def level(name: str) -> int:
    for i, names in enumerate(LAYERS):
        for pattern in names:
            if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return i
    raise AssertionError(f"module {name!r} is in no layer: add it to LAYERS")


def imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its code."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1] if node.level > 1 else package
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}".removeprefix(
                    "inbetweening.") in modules or (prefix == "" and a.name in modules)
                    else prefix for a in node.names]
            for t in targets:
                t = t.removeprefix("inbetweening.") if t.startswith("inbetweening") else (
                    t if t in modules else None)
                if t in (None, "inbetweening", ""):
                    continue
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    found.add(t)
        graph[name] = found
    graph.pop("", None)  # the package's own __init__: a facade of lazy names
    return graph


def test_every_module_has_a_level_and_imports_run_down():
    upward = [f"{a} (level {level(a)}) imports {b} (level {level(b)})"
              for a, targets in imports().items() for b in sorted(targets) if level(b) > level(a)]
    assert not upward, "\n".join(upward)


def test_the_model_layer_imports_nothing_of_the_application():
    for a, targets in imports().items():
        if a in MODEL_LAYER:
            assert not {t.split(".")[0] for t in targets} & APPLICATION, (a, targets)


def test_no_import_cycles():
    graph = imports()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_only_the_entry_point_imports_the_cli():
    users = [a for a, targets in imports().items() if "cli" in targets and a != "__main__"]
    assert users == []


def test_the_command_line_starts_without_the_deep_learning_libraries():
    code = ("import sys, inbetweening.cli as c; c.build_parser(); print(' '.join(m for m in "
            "('torch', 'diffusers', 'transformers', 'gradio', 'cv2', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_library_the_cli_and_training_need_no_evaluation_extra(tiny_model_dir):
    """OpenCV, matplotlib and torchmetrics (the ``eval`` extra) are not needed to generate or
    train: a process where they cannot be imported still loads a model and makes a video."""
    code = (
        "import sys\n"
        "for m in ('cv2', 'matplotlib', 'torchmetrics'): sys.modules[m] = None\n"
        "import torch, inbetweening.training, inbetweening.commands.train\n"
        "from inbetweening.loading import load_pipeline\n"
        f"pipe = load_pipeline({str(tiny_model_dir / 'model')!r}, None, 'cpu', None, quiet=True)\n"
        "out = pipe(torch.rand(3, 64, 64), torch.rand(3, 64, 64), num_frames=4,\n"
        "           num_inference_steps=1, method='trf', output_type='np').frames[0]\n"
        "print(out.shape)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("(4, 64, 64, 3)")


def test_every_import_of_the_package_names_one_of_its_modules():
    """``from .x import y`` must name a module that exists (a wrong level imports nothing until
    the line runs, and function-local imports run late)."""
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    wrong = []
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + [node.module])
                if target not in modules:
                    wrong.append(f"{name}: from {'.' * node.level}{node.module}")
    assert not wrong, wrong


# -- the code's shape: rooms of a readable size, private names kept at home ---------------------
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 60, 250


def _definitions():
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield module_name(path), node


def test_no_function_over_60_lines_and_no_class_over_250():
    """Counted from the definition line to the last line of the body, docstrings included."""
    big = []
    for name, node in _definitions():
        lines = node.end_lineno - node.lineno + 1
        limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
        if lines > limit:
            big.append(f"{name}.{node.name}: {lines} lines (at most {limit})")
    assert not big, "\n".join(big)


def test_no_private_name_is_imported_from_another_module():
    """(of this package's modules; other libraries' are their business)"""
    found = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("inbetweening")):
                found += [f"{module_name(path)}: from {'.' * node.level}{node.module or ''} "
                          f"import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found

"""Backward weights: the small set of tensors that turns a forward SVD into a backward one.

The backward model differs from the forward one only in the value and output projections of the
temporal self-attention layers (``to_v`` and ``to_out.0`` weights: 1.63 % of SVD-XT). The
variants (:data:`VARIANTS`):

``rotation``        the paper: to_v / to_out.0, trained and used with the forward model's
                    attention maps rotated by 180 degrees;
``no-rotation``     the paper's "w/o RA" ablation: to_q, to_k, to_v, to_out.0, trained and used
                    without the maps (the backward rows attend with their own q, k);
``no-rotation-vo``  to_v / to_out.0 only (the parameters of ``rotation``), without the maps (the
                    base q, k of the backward rows' own input): separates the rotation from the
                    capacity ``no-rotation`` adds.

They live on the layers' attention processors (one UNet in memory) and travel as a safetensors
file holding only those tensors, keyed by their names in the UNet, with metadata that names the
variant (``rotation`` and ``no-rotation-vo`` hold the same tensors; a file without the entry, or
a dict of tensors, is taken as ``no-rotation`` if it holds to_q, else ``rotation``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .attention import NO_ROTATION_TENSORS, ROTATION_TENSORS, install, installed
from .attention import controlled_layers, unwrap
from .locate import WEIGHTS_FILENAME  # noqa: F401 (the file name, with the torch-free lookups)
from .utils import InbetweeningError, atomic_path, check_target

FORMAT = "inbetweening-backward-weights"
VARIANTS = {"rotation": ROTATION_TENSORS, "no-rotation": NO_ROTATION_TENSORS,
            "no-rotation-vo": ROTATION_TENSORS}
_ALL_TENSORS = tuple(dict.fromkeys(r for rel in VARIANTS.values() for r in rel))


def _check_variant(variant: str) -> tuple[str, ...]:
    if variant not in VARIANTS:
        raise InbetweeningError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def variant_of_names(names) -> str:
    """The variant of backward tensors that do not say theirs (a dict, an old file): the tensor
    names tell ``no-rotation`` (to_q present) from the rest, taken as ``rotation``."""
    return "no-rotation" if any(n.endswith(".to_q.weight") for n in names) else "rotation"


def backward_parameter_names(unet, variant: str = "rotation") -> list[str]:
    """Names (in the UNet's state dict) of the tensors a backward model of ``variant`` trains."""
    rel = _check_variant(variant)
    return [f"{layer}.{r}" for layer in controlled_layers(unet) for r in rel]


def loaded_variant(unet) -> str | None:
    """The variant of the backward weights loaded on ``unet``, or None."""
    loaded = [p for p in installed(unet).values() if p.weights]
    return loaded[0].variant if loaded else None


def backward_parameters(unet, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The backward tensors by name.

    If backward weights are loaded on ``unet`` (see :func:`set_backward_weights`), those: the
    tensors to train, or the ones in use. Otherwise the UNet's own tensors under those names,
    i.e. what a fine-tune starts from (works on the meta device, for counting).
    """
    loaded = loaded_variant(unet)
    if loaded is not None and variant in (None, loaded):
        return {f"{layer}.{k}": t for layer, p in installed(unet).items()
                for k, t in p.weights.items()}
    own = dict(unwrap(unet).named_parameters())
    return {n: own[n] for n in backward_parameter_names(unet, variant or "rotation")}


def init_backward_weights(unet, variant: str = "rotation", dtype=torch.float32,
                          requires_grad: bool = True) -> dict[str, torch.nn.Parameter]:
    """Start backward weights as copies of the base weights (the paper fine-tunes a copy of the
    UNet) and load them. Returns the new parameters by name."""
    own = dict(unwrap(unet).named_parameters())
    params = {n: torch.nn.Parameter(own[n].detach().to(dtype).clone(), requires_grad=requires_grad)
              for n in backward_parameter_names(unet, variant)}
    set_backward_weights(unet, params, variant)
    return params


def validate(unet, tensors: dict[str, torch.Tensor], variant: str | None = None) -> str:
    """Check that ``tensors`` are backward weights of ``variant`` (None: as their names tell,
    :func:`variant_of_names`) for ``unet``; return the variant.

    Raises InbetweeningError naming exactly what is missing, unexpected or of the wrong shape.
    """
    variant = variant or variant_of_names(tensors)
    expected = backward_parameter_names(unet, variant)  # (checks the variant's name)
    own = dict(unwrap(unet).named_parameters())
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in set(expected)]
    wrong = [f"{n}: file {tuple(tensors[n].shape)} vs model {tuple(own[n].shape)}"
             for n in expected if n in tensors and tensors[n].shape != own[n].shape]
    not_real = [f"{n} ({tensors[n].dtype})" for n in expected if n in tensors
                and not (tensors[n].is_floating_point() and not tensors[n].is_complex())]
    not_finite = [n for n in expected if n in tensors and tensors[n].is_floating_point()
                  and tensors[n].device.type != "meta"  # no values to check (counting)
                  and not torch.isfinite(tensors[n]).all()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
    if not_real:
        problems.append(f"{len(not_real)} not of real floating-point numbers (e.g. {not_real[0]})")
    if not_finite:
        problems.append(f"{len(not_finite)} holding NaN or infinite values (e.g. {not_finite[0]})")
    if problems:
        raise InbetweeningError(
            f"backward weights do not fit this UNet ({len(expected)} tensors expected for the "
            f"{variant} variant): " + "; ".join(problems))
    return variant


def set_backward_weights(unet, tensors: dict[str, torch.Tensor],
                         variant: str | None = None) -> str:
    """Validate and load backward weights of ``variant`` (None: as their names tell) onto
    ``unet``'s temporal attention processors (installing them if needed). The tensors are used
    as given (not copied), so parameters being trained stay the ones the processors use.
    Returns the variant."""
    variant = validate(unet, tensors, variant)
    procs = install(unet)
    for layer, proc in procs.items():
        proc.weights = {r: tensors[f"{layer}.{r}"] for r in VARIANTS[variant]}
        proc.variant = variant
    return variant


def clear_backward_weights(unet) -> None:
    for proc in installed(unet).values():
        proc.weights, proc.variant = {}, None


def save_backward_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *,
                          variant: str | None = None, metadata: dict[str, str] | None = None,
                          dtype=None, overwrite: bool = True, inputs=()) -> Path:
    """Write backward weights of ``variant`` as safetensors (only those tensors), atomically,
    with the variant in the metadata; ``inputs``: what the file must never replace (see
    :func:`utils.check_target`). ``variant`` None: ``metadata``'s, else as the tensor names tell
    (:func:`variant_of_names`)."""
    names = list(tensors)
    variant = variant or (metadata or {}).get("variant") or variant_of_names(names)
    wanted = set(_check_variant(variant))
    kinds = {next((r for r in _ALL_TENSORS if n.endswith("." + r)), n) for n in names}
    if kinds != wanted:
        raise InbetweeningError(f"these are not {variant} backward weights (that variant holds "
                                f"{', '.join(sorted(wanted))} of every layer)")
    out = {n: t.detach().to("cpu", dtype or t.dtype).contiguous() for n, t in tensors.items()}
    meta = {"format": FORMAT, "version": "1",
            "dtype": str(next(iter(out.values())).dtype).removeprefix("torch."),
            "layers": str(len({n.rsplit(".to_", 1)[0] for n in names}))}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    meta["variant"] = variant
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        save_file(out, str(tmp), metadata=meta)
    return path


def load_backward_weights_file(path: str | os.PathLike, device="cpu",
                               dtype=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a backward-weights file; returns (tensors, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise InbetweeningError(f"backward weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InbetweeningError(
                    f"{path} is not a backward-weights file (no '{FORMAT}' metadata); to import "
                    "the paper authors' released UNet use `inbetween convert-official`")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise InbetweeningError(f"cannot read {path} as safetensors: {e}") from None
    for name, t in tensors.items():
        if not t.is_floating_point() or t.is_complex():
            raise InbetweeningError(f"{path}: {name} is not of real floating-point numbers "
                                    f"({t.dtype})")
        if not torch.isfinite(t).all():
            raise InbetweeningError(f"{path}: {name} holds NaN or infinite values")
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    return tensors, meta


# -- importing the paper authors' released checkpoint ------------------------------------------

def _unet_weight_files(folder: Path) -> list[Path]:
    folder = folder / "unet" if (folder / "unet").is_dir() else folder
    for stem in ("diffusion_pytorch_model", "diffusion_pytorch_model.fp16"):
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single]
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InbetweeningError(f"{index}: not a safetensors index (no readable "
                                        "weight_map)") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise InbetweeningError(f"{index} names missing shards: {', '.join(missing[:3])}")
            return [folder / s for s in shards]
    raise InbetweeningError(f"no diffusers UNet safetensors weights in {folder}")


def _read_unet_tensors(folder: Path, wanted) -> dict[str, torch.Tensor]:
    """Read only the tensors whose names satisfy ``wanted`` from a UNet folder (no full load)."""
    out = {}
    for file in _unet_weight_files(Path(folder)):
        try:
            with safe_open(str(file), framework="pt") as f:
                for k in f.keys():
                    if wanted(k):
                        out[k] = f.get_tensor(k)
        except (SafetensorError, OSError, ValueError) as e:
            raise InbetweeningError(f"cannot read {file} as safetensors: {e}") from None
    return out


def _unet_num_frames(folder: Path) -> int | None:
    folder = folder / "unet" if (folder / "unet").is_dir() else folder
    cfg = folder / "config.json"
    return json.loads(cfg.read_text()).get("num_frames") if cfg.is_file() else None


def convert_official(finetuned: str | os.PathLike, output: str | os.PathLike, *,
                     img2vid: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                     base_name: str | None = None, dtype=torch.float16,
                     overwrite: bool = False) -> Path:
    """Import the authors' released backward UNet (a full diffusers UNet folder fine-tuned from
    the 14-frame img2vid) as a backward-weights file.

    With ``base`` (e.g. SVD-XT's UNet) and ``img2vid`` (the model it was fine-tuned from), the
    weights are moved onto the base as the authors do: ``base + (finetuned - img2vid)``, for the
    to_v / to_out.0 weights only. Without them, the fine-tuned tensors are taken as they are (for
    use with img2vid itself).
    """
    if (img2vid is None) != (base is None):
        raise InbetweeningError("give both --img2vid and --base (to move the weights onto another "
                                "base model), or neither")
    inputs = [p for p in (finetuned, img2vid, base) if p is not None]
    check_target(output, overwrite, folder=False, inputs=inputs)
    wanted = lambda k: any(k.endswith(f".temporal_transformer_blocks.0.attn1.{r}")  # noqa: E731
                           for r in ROTATION_TENSORS)
    ft = _read_unet_tensors(Path(finetuned), wanted)
    if not ft:
        raise InbetweeningError(f"{finetuned} holds no temporal self-attention weights")
    if base is not None:
        src = _read_unet_tensors(Path(img2vid), wanted)
        dst = _read_unet_tensors(Path(base), wanted)
        for name, other in (("img2vid", src), ("base", dst)):
            missing = sorted(set(ft) - set(other))
            if missing:
                raise InbetweeningError(f"the {name} UNet lacks {len(missing)} of the fine-tuned "
                                        f"tensors (e.g. {missing[0]})")
            bad = [k for k in ft if other[k].shape != ft[k].shape]
            if bad:
                raise InbetweeningError(f"the {name} UNet's {bad[0]} has shape "
                                        f"{tuple(other[bad[0]].shape)}, the fine-tuned one "
                                        f"{tuple(ft[bad[0]].shape)}")
        out = {k: dst[k].float() + (ft[k].float() - src[k].float()) for k in ft}
        frames = _unet_num_frames(Path(base))
    else:
        out = {k: v.float() for k, v in ft.items()}
        frames = _unet_num_frames(Path(finetuned))
    meta = {"source": "official:svd_reverse_motion_with_attnflip",
            "base_model": base_name or str(base if base is not None else finetuned),
            "num_frames": str(frames)}
    return save_backward_weights(output, out, metadata=meta, dtype=dtype, overwrite=overwrite,
                                 inputs=inputs)

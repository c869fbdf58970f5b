"""What makes a folder this package's model, and how diffusers' loaders meet it.

A folder written by :meth:`ModelFolder.save_pretrained` holds the components, the backward weights
(``backward.safetensors``), the model's recommended call settings (``inbetweening.json``) and a
one-line module (``inbetween_pipeline.py``) that ``model_index.json`` names, so that diffusers' own
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` builds the pipeline too.
:class:`ModelFolder` is the pipeline's part that knows this (``InbetweenPipeline`` inherits it
before ``DiffusionPipeline``).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from . import attention, backward
from .utils import InbetweeningError

BACKWARD_FILENAME = backward.WEIGHTS_FILENAME  # a model folder may carry its backward weights
# ... and recommended call settings (e.g. the toy model's step count), as a JSON object.
DEFAULTS_FILENAME = "inbetweening.json"
# The module a saved folder holds for diffusers' generic loader, and its whole text.
PIPELINE_MODULE = "inbetween_pipeline"
PIPELINE_MODULE_TEXT = (
    '"""Lets diffusers\' DiffusionPipeline.from_pretrained(this folder, trust_remote_code=True)\n'
    'build the InbetweenPipeline of the installed inbetweening package."""\n\n'
    "from inbetweening.pipeline import InbetweenPipeline  # noqa: F401\n")


def import_own_components(folder: Path) -> None:
    """Import the modules of this package that a model folder's ``model_index.json`` names
    (the toy model's VAE is ``inbetweening.toy.autoencoder.PatchAutoencoder``): diffusers finds a
    component class only in modules already imported."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # not a local folder, or diffusers will say what is wrong with it
    for value in index.values() if isinstance(index, dict) else ():
        if isinstance(value, list) and value and str(value[0]).startswith(__package__ + "."):
            importlib.import_module(value[0])


def dtype_kwargs(kwargs: dict) -> dict:
    """``from_pretrained`` keyword arguments with the dtype (given as ``dtype`` or
    ``torch_dtype``) under the name this diffusers knows without a warning: diffusers renamed
    ``torch_dtype`` to ``dtype`` (and resolves the old name with ``_resolve_dtype``). None given:
    float32, diffusers' own default, for every component (transformers 5 would load the image
    encoder in the dtype it was saved in, e.g. the toy models' fp16, and the pipeline would
    encode keyframes in another precision than the command line, which asks for float32)."""
    kwargs = dict(kwargs)
    given = [v for v in (kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
             if v is not None] or [torch.float32]
    if len(given) > 1:
        raise InbetweeningError("give the dtype once: dtype or torch_dtype, not both")
    try:
        from diffusers.utils import _resolve_dtype  # noqa: F401
    except ImportError:
        kwargs["torch_dtype"] = given[0]
    else:
        kwargs["dtype"] = given[0]
    return kwargs


def finish_model_index(folder: Path, class_name: str) -> None:
    """Point a saved ``model_index.json`` at the folder's pipeline module, as diffusers' loader
    wants a class from outside the library ([module, class]), and name the feature extractor by
    the class every transformers version has: without torchvision transformers 5 saves
    ``CLIPImageProcessorPil``, which ``CLIPImageProcessor`` falls back to when loading anyway."""
    import transformers

    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index["_class_name"] = [PIPELINE_MODULE, class_name]
    library, name = index.get("feature_extractor") or (None, None)
    base = str(name).removesuffix("Pil")
    if library == "transformers" and base != name and hasattr(transformers, base):
        index["feature_extractor"] = [library, base]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def align_weights(module: torch.nn.Module, alignment: int = 64) -> None:
    """Give each CPU weight of ``module`` its own memory aligned as torch allocates it. Weights
    loaded from a file may stay views into the memory-mapped file at any offset, where the CPU's
    matrix kernels take another path and round differently (~1e-6): a loaded pipeline then makes
    other frames than the same weights built in memory. Aligned, the two agree exactly."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()


class ModelFolder:
    """Loading and saving the model of an ``InbetweenPipeline``: diffusers' ``from_pretrained`` /
    ``save_pretrained`` plus the backward weights and the recommended settings of a folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, backward=None, **kwargs):
        """Load an SVD model (a local diffusers folder, a hub id, or a bundled toy model's name:
        ``toy``, ``toy-ambiguous``) and, if given, backward weights (a file, a hub id: see
        :func:`inbetweening.locate.resolve_backward`, or a dict of tensors). A local model folder
        holding ``backward.safetensors`` (like the bundled toy models, or a folder
        :meth:`save_pretrained` wrote) gets those weights unless others are given, and its
        ``inbetweening.json`` as ``defaults``. The dtype may be given as ``dtype`` or
        ``torch_dtype``: it is passed on under the name the installed diffusers takes."""
        from .locate import NAMED_MODELS

        source = pretrained_model_name_or_path
        if str(source) in NAMED_MODELS and not Path(str(source)).exists():
            source = NAMED_MODELS[str(source)]
        import_own_components(Path(str(source)))
        pipe = super().from_pretrained(source, **dtype_kwargs(kwargs))
        if backward is not None:
            pipe.load_backward_weights(backward)
        return pipe

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """diffusers reads ``model_index.json`` here. A saved folder names this class as [its
        module file, class] for diffusers' generic loader; loading through this class itself
        needs no code from the folder, so the pair reads as the class's own name."""
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name") if isinstance(config, dict) else None
        if isinstance(name, (list, tuple)) and list(name)[:1] == [PIPELINE_MODULE]:
            config["_class_name"] = cls.__name__
        return config

    def register_to_config(self, **kwargs):
        """diffusers' config update. Every diffusers loader (``from_pretrained`` of this class or
        of ``DiffusionPipeline``, ``from_pipe``) records its source here as ``_name_or_path``
        once the pipeline is built: a local folder's extras are loaded then."""
        super().register_to_config(**kwargs)
        if kwargs.get("_name_or_path") is not None:
            for component in self.components.values():
                if isinstance(component, torch.nn.Module):
                    align_weights(component)
            self._load_extras(Path(str(kwargs["_name_or_path"])))

    def _load_extras(self, folder: Path) -> None:
        """A model folder's recommended settings, and its backward weights unless some are loaded
        already (``from_pipe``)."""
        if (folder / DEFAULTS_FILENAME).is_file():
            self.defaults = json.loads((folder / DEFAULTS_FILENAME).read_text())
        weights = folder / BACKWARD_FILENAME
        if weights.is_file() and backward.loaded_variant(self.unet) is None:
            self.load_backward_weights(weights)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' save, plus what makes the folder this model (see the module docstring):
        the backward weights when some are loaded (else a stale ``backward.safetensors`` is
        removed), ``defaults`` as ``inbetweening.json``, and the pipeline module that
        ``model_index.json`` names. Loads back with :meth:`from_pretrained`, or with
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``."""
        if kwargs.get("push_to_hub"):
            raise InbetweeningError("save to a folder, then upload it: push_to_hub would upload "
                                    "the folder before its backward weights are written")
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        weights = folder / BACKWARD_FILENAME
        if backward.loaded_variant(self.unet) is not None:
            self.save_backward_weights(weights)
        elif weights.is_file():
            weights.unlink()
        (folder / DEFAULTS_FILENAME).write_text(json.dumps(self.defaults, indent=2) + "\n")
        (folder / f"{PIPELINE_MODULE}.py").write_text(PIPELINE_MODULE_TEXT)
        finish_model_index(folder, type(self).__name__)

    def load_backward_weights(self, path_or_dict: str | os.PathLike | dict,
                              variant: str | None = None) -> str:
        """Load backward weights (a backward-weights file, a hub id, or a dict keyed exactly as
        :func:`inbetweening.backward_parameters` names them) of ``variant`` (None: the one the
        file's metadata names, else as the tensor names tell). Returns the variant."""
        if isinstance(path_or_dict, dict):
            tensors, meta = path_or_dict, {}
        else:
            from .locate import resolve_backward

            tensors, meta = backward.load_backward_weights_file(resolve_backward(path_or_dict))
        tensors = {k: v.to(self.unet.device, self.unet.dtype) for k, v in tensors.items()}
        variant = backward.set_backward_weights(attention.unwrap(self.unet), tensors,
                                                variant or meta.get("variant"))
        self.backward_metadata = dict(meta)
        return variant

    def save_backward_weights(self, path: str | os.PathLike, overwrite: bool = True,
                              **metadata) -> Path:
        """Write the loaded backward weights (with their metadata and ``metadata``) to ``path``."""
        unet = attention.unwrap(self.unet)
        if backward.loaded_variant(unet) is None:
            raise InbetweeningError("no backward weights are loaded")
        tensors = backward.backward_parameters(unet)
        meta = {"num_frames": unet.config.num_frames, **self.backward_metadata, **metadata}
        return backward.save_backward_weights(path, tensors, variant=backward.loaded_variant(unet),
                                              metadata=meta, overwrite=overwrite)

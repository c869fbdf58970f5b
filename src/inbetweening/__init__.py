"""Generative inbetweening: the video between keyframes with Stable Video Diffusion, by
dual-directional sampling with a backward-motion fine-tuned UNet (Wang et al., ICLR 2025).

    from inbetweening import InbetweenPipeline
    pipe = InbetweenPipeline.from_pretrained("path/to/svd-xt", backward="backward.safetensors")
    frames = pipe(start, end, generator=torch.Generator().manual_seed(0)).frames[0]
"""

import importlib

__version__ = "0.1.0"

# The public names, imported when first used: importing the package (or its command line) does not
# import torch or diffusers.
_EXPORTS = {
    "InbetweenPipeline": "pipeline", "InbetweenPipelineOutput": "pipeline",
    "InbetweeningError": "utils", "METHODS": "methods", "SamplingOptions": "options",
    "backward_parameter_names": "backward", "backward_parameters": "backward",
    "convert_official": "backward", "load_backward_weights_file": "backward",
    "save_backward_weights": "backward", "inbetween_sequence": "keyframes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'inbetweening' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

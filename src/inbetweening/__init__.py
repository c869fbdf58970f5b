"""Generative inbetweening: the video between keyframes with Stable Video Diffusion, by
dual-directional sampling with a backward-motion fine-tuned UNet (Wang et al., ICLR 2025).

    from inbetweening import InbetweenPipeline
    pipe = InbetweenPipeline.from_pretrained("path/to/svd-xt", backward="backward.safetensors")
    frames = pipe(start, end, generator=torch.Generator().manual_seed(0)).frames[0]
"""

from transformers.utils import logging as _transformers_logging

# diffusers' SVD module asks transformers for CLIPImageProcessor, which without torchvision falls
# back to the PIL processor with a warning; the fallback is what we want, so say nothing.
_verbosity = _transformers_logging.get_verbosity()
_transformers_logging.set_verbosity_error()
try:
    from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion  # noqa
    from transformers import CLIPImageProcessor  # noqa: F401
finally:
    _transformers_logging.set_verbosity(_verbosity)

from .backward import (
    backward_parameter_names, backward_parameters, convert_official, load_backward_weights_file,
    save_backward_weights,
)
from .keyframes import inbetween_sequence
from .methods import METHODS
from .pipeline import InbetweenPipeline, InbetweenPipelineOutput
from .utils import InbetweeningError

__version__ = "0.1.0"

__all__ = [
    "InbetweenPipeline", "InbetweenPipelineOutput", "InbetweeningError", "METHODS",
    "backward_parameter_names", "backward_parameters", "convert_official", "inbetween_sequence",
    "load_backward_weights_file", "save_backward_weights",
]

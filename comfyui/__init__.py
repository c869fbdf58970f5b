"""ComfyUI nodes for generative inbetweening (the ``inbetweening`` package): put this folder in
ComfyUI/custom_nodes/ (a copy or a link, under any name) and install the package into ComfyUI's
Python (``pip install /path/to/inbetweening``). The example workflow: example_workflows/ (UI
format; ComfyUI lists it under Templates) and api_workflows/ (API format, for POST /prompt)."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

"""Lets PyPI's torchvision import beside the CPU build of torch, in the e2e test's ComfyUI
environment only (`make comfyui-e2e` installs this module with a .pth line that imports it).

ComfyUI 0.8 imports torchvision at start. No CPU build of torchvision can be installed from the
package registries, and PyPI's (the CUDA build) cannot load its compiled operators without
CUDA's torch libraries; torchvision's Python then still imports except for two fake-tensor
registrations (nms, qnms) made without checking that the operators exist. Declaring those two
operators' schemas first lets it import: everything in Python (transforms, models) works, the
compiled operators raise if called. The core nodes and ours never call them.

The schemas are declared lazily, when torchvision is first imported, so that torch is not
imported before ComfyUI's main.py has set up its environment.
"""

import importlib.abc
import sys

SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
           "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_libraries = []


class _DeclareOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in SCHEMAS:
            library.define(schema)
        _libraries.append(library)
        return None  # the ordinary finders import torchvision itself


sys.meta_path.insert(0, _DeclareOnImport())

"""Half precision on the bundled toy model: --dtype fp16 and bf16 work end to end, and give about
the frames fp32 gives (the toy autoencoder computes in fp32 whatever its weights' dtype)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inbetweening import cli, media


def generate(keyframes, out, dtype):
    argv = ["interpolate", *map(str, keyframes), "-o", str(out), "--steps", "3", "--reinject", "0",
            "--seed", "1", "--device", "cpu"] + (["--dtype", dtype] if dtype else [])
    assert cli.main(argv) == 0
    return media.read_video(out)[0].astype(float)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_works_on_the_toy_model(dtype, toy_keyframe_files, tmp_path, monkeypatch):
    from inbetweening import loading

    loaded = []
    load = loading.load_pipeline

    def spy(*args, **kwargs):  # the pipeline the command line ran
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(loading, "load_pipeline", spy)
    full = generate(toy_keyframe_files, tmp_path / "fp32", None)
    half = generate(toy_keyframe_files, tmp_path / dtype, dtype)
    assert loaded[0].unet.dtype == torch.float32
    assert loaded[1].unet.dtype == loaded[1].image_encoder.dtype == loading.DTYPES[dtype]
    assert half.shape == full.shape == (8, 64, 64, 3)
    diff = np.abs(half - full)
    assert diff.mean() < 8  # (of 255) the same video, to half precision ...
    assert diff.max() > 0  # ... computed in half precision

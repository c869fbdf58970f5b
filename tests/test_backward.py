"""Backward weights: what they are, their file format, validation and the official converter."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_unet
from safetensors.torch import save_file

from inbetweening import backward
from inbetweening.utils import InbetweeningError


def test_svd_xt_backward_parameters_on_the_meta_device():
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(sample_size=96)  # class defaults = XT's config
    params = backward.backward_parameters(unet)
    layers = {n.rsplit(".to_", 1)[0] for n in params}
    total = sum(p.numel() for p in unet.parameters())
    count = sum(p.numel() for p in params.values())
    assert len(layers) == 16 and len(params) == 32
    assert total == 1_524_623_082 and count == 24_780_800
    assert round(100 * count / total, 2) == 1.63
    qkvo = backward.backward_parameters(unet, "no-rotation")
    assert round(100 * sum(p.numel() for p in qkvo.values()) / total, 2) == 3.25


def test_init_set_and_read_back():
    unet = tiny_unet()
    params = backward.init_backward_weights(unet)
    assert backward.loaded_variant(unet) == "rotation"
    # Copies of the base weights (the paper fine-tunes a copy): equal, but not the same storage.
    own = dict(unet.named_parameters())
    assert params.keys() == set(backward.backward_parameter_names(unet))
    for n, p in params.items():
        assert torch.equal(p, own[n]) and p.data_ptr() != own[n].data_ptr()
    got = backward.backward_parameters(unet)
    assert got.keys() == params.keys() and all(got[k] is params[k] for k in got)
    assert all(p.requires_grad for p in got.values())
    backward.clear_backward_weights(unet)
    assert backward.loaded_variant(unet) is None


def test_backward_weights_on_a_compiled_unet():
    """``torch.compile`` wraps the UNet (parameter names gain ``_orig_mod.``): the backward
    weights are named, started, validated and read back as on the UNet it wraps."""
    unet = tiny_unet()
    compiled = torch.compile(unet, backend="eager")
    assert backward.backward_parameter_names(compiled) == backward.backward_parameter_names(unet)
    params = backward.init_backward_weights(compiled)
    own = dict(unet.named_parameters())
    assert all(torch.equal(p, own[n]) for n, p in params.items())
    assert backward.loaded_variant(compiled) == "rotation"
    assert backward.backward_parameters(compiled).keys() == params.keys()
    backward.set_backward_weights(compiled, {n: p.detach() + 1 for n, p in params.items()})
    backward.clear_backward_weights(compiled)
    assert backward.backward_parameters(compiled, "no-rotation").keys() == set(
        backward.backward_parameter_names(unet, "no-rotation"))


def test_file_round_trip_with_metadata(tmp_path):
    unet = tiny_unet()
    params = backward.init_backward_weights(unet)
    path = backward.save_backward_weights(tmp_path / "b.safetensors", params, dtype=torch.float16,
                                          metadata={"base_model": "tiny", "num_frames": 6})
    tensors, meta = backward.load_backward_weights_file(path)
    assert meta["variant"] == "rotation" and meta["base_model"] == "tiny"
    assert meta["num_frames"] == "6" and meta["dtype"] == "float16" and meta["layers"] == "6"
    assert tensors.keys() == params.keys()
    assert all(t.dtype == torch.float16 for t in tensors.values())
    for n, p in params.items():  # the values, rounded to float16
        assert torch.equal(tensors[n], p.detach().half())
    assert backward.set_backward_weights(unet, tensors) == "rotation"
    with pytest.raises(InbetweeningError, match="already exists"):
        backward.save_backward_weights(path, params, overwrite=False)


def test_the_variant_travels_in_the_file(tmp_path):
    """rotation and no-rotation-vo hold the same tensors: the file's metadata names the variant,
    and loading reads it; a file or dict that names none is taken by its tensor names."""
    unet = tiny_unet()
    params = backward.init_backward_weights(unet, "no-rotation-vo")
    assert backward.loaded_variant(unet) == "no-rotation-vo"
    assert list(params) == backward.backward_parameter_names(unet, "rotation")
    vo = backward.save_backward_weights(tmp_path / "vo.safetensors", params,
                                        variant="no-rotation-vo")
    rot = backward.save_backward_weights(tmp_path / "rot.safetensors", params, variant="rotation")
    for path, variant in ((vo, "no-rotation-vo"), (rot, "rotation")):
        tensors, meta = backward.load_backward_weights_file(path)
        assert meta["variant"] == variant
        other = tiny_unet()
        assert backward.set_backward_weights(other, tensors, meta["variant"]) == variant
        assert backward.loaded_variant(other) == variant
    # What names no variant (a dict, a file from before the metadata was read) goes by names.
    assert backward.set_backward_weights(unet, {n: p.detach() for n, p in params.items()}) == (
        "rotation")
    backward.clear_backward_weights(unet)
    assert backward.loaded_variant(unet) is None
    # A variant that does not fit the tensors, or an unknown one, is refused.
    with pytest.raises(InbetweeningError, match="missing"):
        backward.set_backward_weights(unet, params, "no-rotation")
    with pytest.raises(InbetweeningError, match="unknown variant"):
        backward.set_backward_weights(unet, params, "sideways")
    with pytest.raises(InbetweeningError, match="not no-rotation backward weights"):
        backward.save_backward_weights(tmp_path / "x.safetensors", params, variant="no-rotation")


def test_validation_says_exactly_what_does_not_fit():
    unet = tiny_unet()
    good = {n: p.detach() for n, p in backward.backward_parameters(unet).items()}
    first = next(iter(good))
    missing = dict(good)
    del missing[first]
    with pytest.raises(InbetweeningError, match=rf"1 missing \(e\.g\. {first}\)"):
        backward.validate(unet, missing)
    extra = {**good, "mid_block.foo.weight": torch.zeros(1)}
    with pytest.raises(InbetweeningError, match="1 unexpected"):
        backward.validate(unet, extra)
    other = tiny_unet(channels=(64, 128))  # another architecture: same names, other shapes
    theirs = {n: p.detach() for n, p in backward.backward_parameters(other).items()}
    with pytest.raises(InbetweeningError, match=r"of the wrong shape .*file \(64, 64\) vs model "
                                                 r"\(32, 32\)"):
        backward.validate(unet, theirs)


def test_not_a_backward_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(InbetweeningError, match="not a backward-weights file"):
        backward.load_backward_weights_file(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(InbetweeningError, match="cannot read"):
        backward.load_backward_weights_file(junk)
    with pytest.raises(InbetweeningError, match="not found"):
        backward.load_backward_weights_file(tmp_path / "missing.safetensors")


def test_convert_official_moves_the_delta_onto_another_base(tmp_path):
    img2vid, xt = tiny_unet(seed=1), tiny_unet(seed=2)
    finetuned = tiny_unet(seed=1)
    names = backward.backward_parameter_names(finetuned)
    with torch.no_grad():
        own = dict(finetuned.named_parameters())
        for n in names:
            own[n].add_(torch.randn_like(own[n]) * 0.1)
        own["conv_in.weight"].add_(1.0)  # outside the backward weights: must be ignored
    for name, m in (("img2vid", img2vid), ("xt", xt), ("ft", finetuned)):
        m.save_pretrained(tmp_path / name / "unet")
    out = backward.convert_official(tmp_path / "ft", tmp_path / "b.safetensors",
                                    img2vid=tmp_path / "img2vid" / "unet", base=tmp_path / "xt",
                                    base_name="xt", dtype=torch.float32)
    tensors, meta = backward.load_backward_weights_file(out)
    assert sorted(tensors) == sorted(names) and meta["base_model"] == "xt"
    a, b, c = (dict(m.named_parameters()) for m in (xt, finetuned, img2vid))
    for n in names:
        torch.testing.assert_close(tensors[n], a[n] + (b[n] - c[n]))
    assert backward.set_backward_weights(xt, tensors) == "rotation"
    # Without a base, the fine-tuned tensors are taken as they are.
    same = backward.convert_official(tmp_path / "ft" / "unet", tmp_path / "c.safetensors",
                                     dtype=torch.float32)
    tensors, _ = backward.load_backward_weights_file(same)
    for n in names:
        torch.testing.assert_close(tensors[n], b[n])
    with pytest.raises(InbetweeningError, match="give both"):
        backward.convert_official(tmp_path / "ft", tmp_path / "d.safetensors", base=tmp_path / "xt")
    with pytest.raises(InbetweeningError, match="no diffusers UNet"):
        backward.convert_official(tmp_path, tmp_path / "e.safetensors")

"""The temporal attention control: the rotation identity, and the fused path against the paper's
literal computation, written out here independently of the processor's code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_unet

from inbetweening import attention
from inbetweening.attention import LayerPlan, TemporalAttentionProcessor


def test_rotated_map_equals_flipped_queries_and_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 7, 16, generator=g, dtype=torch.float64) for _ in range(3))
    a = (q @ k.transpose(-1, -2) / 4).softmax(-1)
    rotated = a.flip(-2, -1) @ v
    fused = F.scaled_dot_product_attention(q.flip(-2), k.flip(-2), v)
    torch.testing.assert_close(fused, rotated, atol=1e-12, rtol=0)
    assert not torch.allclose(fused, a @ v, atol=1e-3)


def _layer():
    unet = tiny_unet()
    name, attn = next(iter(attention.controlled_layers(unet).items()))
    return name, attn


def _manual(attn, xf, xb, wv_b, wo_b, flip_dims, wq=None, wk=None):
    """The paper's backward attention, literally: the forward map A from the forward rows (base
    Q, K, unless ``wq``, ``wk`` are given), rotated by flipping ``flip_dims``, applied to the
    backward rows' values."""
    h = attn.heads
    def heads(t):
        n, f, c = t.shape
        return t.view(n, f, h, c // h).transpose(1, 2)
    wq = attn.to_q.weight if wq is None else wq
    wk = attn.to_k.weight if wk is None else wk
    q, k = heads(xf @ wq.T), heads(xf @ wk.T)
    a = (q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)).softmax(-1)
    if flip_dims:
        a = a.flip(*flip_dims)
    o = (a @ heads(xb @ wv_b.T)).transpose(1, 2).reshape(xb.shape)
    return o @ wo_b.T + attn.to_out[0].bias


@pytest.mark.parametrize("phase", ["fused", "reference"])
def test_backward_rows_use_the_rotated_forward_map(phase):
    """Fails if the flip is dropped, applied to one axis only, or taken from the wrong rows."""
    name, attn = _layer()
    g = torch.Generator().manual_seed(1)
    rows, frames, ch = 6, 5, attn.to_q.in_features
    xf, xb = torch.randn(rows, frames, ch, generator=g), torch.randn(rows, frames, ch, generator=g)
    wv = attn.to_v.weight + 0.1 * torch.randn(attn.to_v.weight.shape, generator=g)
    wo = attn.to_out[0].weight + 0.1 * torch.randn(attn.to_out[0].weight.shape, generator=g)
    proc = TemporalAttentionProcessor(name)
    proc.plan = LayerPlan(rotate=True, backward_weights=True)
    proc.weights = {"to_v.weight": wv, "to_out.0.weight": wo}
    with torch.no_grad():
        if phase == "fused":
            proc.phase = "fused"
            out = proc(attn, torch.cat([xf, xb]))
            out_f, out_b = out[:rows], out[rows:]
        else:
            proc.phase = "record"
            out_f = proc(attn, xf)
            proc.phase = "inject"
            out_b = proc(attn, xb)
        expected = _manual(attn, xf, xb, wv, wo, (-2, -1))
        torch.testing.assert_close(out_b, expected, atol=1e-5, rtol=1e-5)
        # The forward rows are plain attention with the base weights.
        plain = _manual(attn, xf, xf, attn.to_v.weight, attn.to_out[0].weight, None)
        torch.testing.assert_close(out_f, plain, atol=1e-5, rtol=1e-5)
        for wrong in (None, (-1,), (-2,)):
            assert (out_b - _manual(attn, xf, xb, wv, wo, wrong)).abs().max() > 1e-3
        own_map = _manual(attn, xb, xb, wv, wo, (-2, -1))  # map from the wrong rows
        assert (out_b - own_map).abs().max() > 1e-3


@pytest.mark.parametrize("plan", [LayerPlan(True, True), LayerPlan(True, False),
                                  LayerPlan(False, True), LayerPlan(False, False)])
def test_fused_layer_equals_reference_layer(plan):
    name, attn = _layer()
    g = torch.Generator().manual_seed(2)
    ch = attn.to_q.in_features
    xf, xb = torch.randn(4, 6, ch, generator=g), torch.randn(4, 6, ch, generator=g)
    proc = TemporalAttentionProcessor(name)
    proc.plan = plan
    proc.weights = {k: w + 0.1 * torch.randn(w.shape, generator=g) for k, w in
                    (("to_q.weight", attn.to_q.weight), ("to_k.weight", attn.to_k.weight),
                     ("to_v.weight", attn.to_v.weight), ("to_out.0.weight", attn.to_out[0].weight))}
    with torch.no_grad():
        proc.phase = "fused"
        fused = proc(attn, torch.cat([xf, xb]))
        proc.phase = "record"
        ref_f = proc(attn, xf)
        proc.phase = "inject"
        ref_b = proc(attn, xb)
        proc.phase = "plain"
        plain_f = proc(attn, xf)
        # What the plan says, written out: the backward weights (all four) or the base ones;
        # the forward rows' base map rotated, or the backward rows' own map with those weights.
        w = {k[3]: proc.weights[k] if plan.backward_weights else base
             for k, base in (("to_q.weight", attn.to_q.weight), ("to_k.weight", attn.to_k.weight),
                             ("to_v.weight", attn.to_v.weight),
                             ("to_out.0.weight", attn.to_out[0].weight))}
        if plan.rotate:
            want_b = _manual(attn, xf, xb, w["v"], w["o"], (-2, -1))
        else:
            want_b = _manual(attn, xb, xb, w["v"], w["o"], None, wq=w["q"], wk=w["k"])
        want_f = _manual(attn, xf, xf, attn.to_v.weight, attn.to_out[0].weight, None)
    torch.testing.assert_close(fused, torch.cat([ref_f, ref_b]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_f, plain_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_f, want_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_b, want_b, atol=1e-5, rtol=1e-5)


def test_plain_processor_matches_diffusers_default():
    unet = tiny_unet()
    x = torch.randn(1, 6, 8, 8, 8)
    args = (torch.tensor([0.3]), torch.randn(1, 1, 32), torch.randn(1, 3))
    with torch.no_grad():
        before = unet(x, *args).sample
        procs = attention.install(unet)
        assert len(procs) == 6
        after = unet(x, *args).sample
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert attention.install(unet).keys() == procs.keys()  # idempotent
    assert all(attention.installed(unet)[k] is procs[k] for k in procs)
    # The equality is not vacuous: the UNet's forward does go through each installed processor.
    for proc in procs.values():
        proc.phase = "no-such-phase"
        with pytest.raises(ValueError, match="unknown phase"), torch.no_grad():
            unet(x, *args)
        proc.phase = "plain"


def test_inject_without_record_is_an_error():
    name, attn = _layer()
    proc = TemporalAttentionProcessor(name)
    proc.plan = LayerPlan(rotate=True, backward_weights=False)
    proc.phase = "inject"
    with pytest.raises(RuntimeError, match="no recorded maps"):
        proc(attn, torch.randn(2, 5, attn.to_q.in_features))

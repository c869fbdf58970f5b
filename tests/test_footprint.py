"""footprint: the bytes counted on meta-device models are what the CPU allocator hands out for the
same calls on real ones, and the recorded UNet calls are the pipeline's."""

from __future__ import annotations

import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import perturb_backward, tiny_components

from inbetweening import footprint
from inbetweening.pipeline import InbetweenPipeline

CALL = dict(num_frames=6, num_inference_steps=1, reinject_count=0, method="gi", height=128,
            width=128, output_type="pt")


def _pipe(device: str) -> InbetweenPipeline:
    pipe = InbetweenPipeline(**tiny_components())
    perturb_backward(pipe)
    pipe.set_progress_bar_config(disable=True)
    return footprint.to_meta(pipe) if device == "meta" else pipe


def _counted(pipe, fn, device_type: str) -> tuple[float, footprint.LiveBytes]:
    """Bytes ``fn()`` holds at its peak beyond the weights, counted by LiveBytes."""
    tracker = footprint.LiveBytes(device_type)
    with torch.no_grad(), footprint.fused_attention(), tracker, footprint.phases(pipe, tracker):
        tracker.adopt([t for m in (pipe.vae, pipe.unet, pipe.image_encoder)
                       for t in [*m.parameters(), *m.buffers()]])
        start = tracker.now
        fn()
    return tracker.peak - start, tracker


def _keyframe():
    return PIL.Image.new("RGB", (128, 128), (90, 40, 200))


def test_a_meta_run_counts_what_the_cpu_allocator_hands_out(request):
    """A whole pipeline call (encode, a fused prediction with guidance, decode) on real CPU
    tensors, measured by the profiler's memory events, against the same call on meta tensors
    counted by LiveBytes, and against LiveBytes following the real tensors."""
    real, meta = _pipe("cpu"), _pipe("meta")
    threads = torch.get_num_threads()
    # With one thread PyTorch convolves a (3, 1, 1) temporal kernel by im2col into a scratch
    # buffer no tensor shows; with two or more, oneDNN, without one.
    torch.set_num_threads(max(threads, 2))
    request.addfinalizer(lambda: torch.set_num_threads(threads))

    def call(pipe):
        return lambda: pipe(_keyframe(), _keyframe(), generator=torch.Generator().manual_seed(0),
                            **CALL)

    with torch.no_grad():
        allocated, _ = footprint.allocation_peak(call(real))
    followed, _ = _counted(real, call(real), "cpu")
    counted, _ = _counted(meta, call(meta), "meta")
    assert allocated > 2**20  # a call that allocates megabytes: the check means something
    assert abs(followed / allocated - 1) < 0.1, (followed, allocated)
    assert abs(counted / allocated - 1) < 0.1, (counted, allocated)


def test_fused_attention_allocates_the_output_and_its_log_sum_exp():
    """No (queries x keys) map: on meta, what the CPU's fused kernel allocates for real, but for
    that kernel's scratch blocks (a few hundred KiB a thread)."""
    shape = (1, 8, 4096, 64)  # the 4096 x 4096 maps would be 512 MiB
    q = torch.randn(shape)
    with torch.no_grad():
        allocated, _ = footprint.allocation_peak(lambda: F.scaled_dot_product_attention(q, q, q))
    qm = torch.empty(shape, device="meta")
    tracker = footprint.LiveBytes()
    with footprint.fused_attention(), tracker:
        out = F.scaled_dot_product_attention(qm, qm, qm)
    assert out.shape == shape and tracker.now == q.numel() * 4  # the output stays
    assert tracker.peak == q.numel() * 4 + 8 * 4096 * 4  # + float32 log-sum-exp per query
    assert tracker.peak <= allocated <= tracker.peak + 2**20 * torch.get_num_threads()


def test_phases_take_their_own_peaks():
    """Decoding one frame at a time lowers the decode phase's peak and nothing else."""
    pipe = _pipe("meta")
    peaks = {}
    for chunk in (6, 1):
        _, tracker = _counted(pipe, lambda: pipe(_keyframe(), _keyframe(), **CALL,
                                                 decode_chunk_size=chunk), "meta")
        peaks[chunk] = tracker.peaks
    assert set(peaks[6]) == {"prepare", "encode", "denoise", "decode"}
    assert peaks[1]["decode"] < peaks[6]["decode"]
    assert all(peaks[1][p] == peaks[6][p] for p in ("prepare", "encode", "denoise"))
    weights = {"image_encoder": 10, "unet": 100, "vae": 1}
    assert footprint.offload_peak({"encode": 500, "denoise": 400, "decode": 300}, weights) == 400


@pytest.mark.parametrize("method,calls", [
    ("gi", {("fused", 4)}), ("forward", {("plain", 2)}), ("vibid", {("plain", 2)}),
    ("gi-sequential", {("plain", 2), ("fused", 4)})])
def test_record_calls_sees_the_pipelines_calls(tiny_pipe, keyframes, method, calls):
    kw = dict(num_frames=6, num_inference_steps=3, method=method, output_type="latent")
    with footprint.record_calls(tiny_pipe) as record:
        tiny_pipe(*keyframes, **kw)
    assert set(record.unet_calls) == calls
    assert len(record.unet_calls) == tiny_pipe.num_predictions
    two = method != "forward"
    assert record.clip_images == 1 + two
    assert record.vae_images == (1 + two) * (2 if method in ("vibid", "gi-sequential") else 1)
    assert record.decoded_frames == 0  # latents asked for: nothing decoded
    with footprint.record_calls(tiny_pipe) as capped:
        tiny_pipe(*keyframes, max_unet_batch=2, **kw)
    assert capped.unet_rows() == record.unet_rows()
    assert {rows for _, rows in capped.unet_calls} == {2}

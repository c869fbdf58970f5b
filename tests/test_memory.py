"""The one-word memory settings (inbetweening.memory): each samples the default's latents, and
keeps its frames (given the same decode chunk: SVD's temporal decoder mixes the frames it decodes
together), and each sets what it says. On the CPU: model offload needs a GPU and is not tested
here."""

from __future__ import annotations

import pytest
import torch

from inbetweening import backward, footprint
from inbetweening.memory import MEMORY_PRESETS, apply_memory, memory_preset
from inbetweening.utils import InbetweeningError

CALL = dict(num_frames=6, num_inference_steps=4, method="gi")  # 14 predictions


def _video(pipe, keyframes, **kw):
    return pipe(*keyframes, generator=torch.Generator().manual_seed(0), **CALL, **kw).frames


def _close(a, b, tol=1e-5):
    """Equal to float32 rounding (the row cap changes the GEMMs' batch sizes): ``tol`` relative
    to the size of ``b`` when that is above 1."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1.0)


@pytest.mark.parametrize("name", list(MEMORY_PRESETS))
def test_each_preset_gives_the_default_video(tiny_pipe, keyframes, name):
    """The same latents as the default setting (guidance on: 4 UNet rows a prediction, so the
    row cap splits them) and the same frames as the default decoding in the preset's chunks."""
    latents = _video(tiny_pipe, keyframes, output_type="latent")
    chunk = memory_preset(name).decode_chunk
    frames = _video(tiny_pipe, keyframes, output_type="pt", decode_chunk_size=chunk)
    apply_memory(tiny_pipe, name)
    assert tiny_pipe.memory == name
    assert _close(_video(tiny_pipe, keyframes, output_type="latent"), latents, 1e-4)
    assert _close(_video(tiny_pipe, keyframes, output_type="pt"), frames)  # in [0, 1]


def test_presets_keep_the_frames_of_a_framewise_autoencoder(keyframes):
    """With an autoencoder that decodes each frame alone (the toy model's) every preset's frames
    are the default's, decode chunk and all."""
    from inbetweening.loading import tiny_random_components
    from inbetweening.pipeline import InbetweenPipeline

    pipe = InbetweenPipeline(**tiny_random_components(num_frames=6))
    backward.init_backward_weights(pipe.unet, requires_grad=False)
    pipe.set_progress_bar_config(disable=True)
    default = _video(pipe, keyframes, output_type="pt")
    for name in MEMORY_PRESETS:
        apply_memory(pipe, name)
        assert _close(_video(pipe, keyframes, output_type="pt"), default), name


def _decode_chunks(pipe) -> list[int]:
    chunks = []
    decode = pipe.vae.decode

    def counting(z, *args, **kwargs):
        chunks.append(z.shape[0])
        return decode(z, *args, **kwargs)

    pipe.vae.decode = counting
    return chunks


def test_presets_set_what_they_say_and_switch_back(tiny_pipe, keyframes):
    ff = tiny_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].ff
    ff_calls = []
    ff.register_forward_hook(lambda *a: ff_calls.append(1))
    chunks = _decode_chunks(tiny_pipe)

    def run():
        ff_calls.clear()
        chunks.clear()
        with footprint.record_calls(tiny_pipe) as record:
            _video(tiny_pipe, keyframes, output_type="pt")
        return record

    record = run()  # default: one call of 4 rows a prediction, FF once a call, one decode
    assert {rows for _, rows in record.unet_calls} == {4}
    assert len(ff_calls) == len(record.unet_calls) and chunks == [6]
    apply_memory(tiny_pipe, "lowest")
    record = run()  # calls of 2 rows, FF per row and frame, 2 frames decoded at a time
    assert {rows for _, rows in record.unet_calls} == {2}
    assert len(ff_calls) == len(record.unet_calls) * 2 * 6 and chunks == [2, 2, 2]
    apply_memory(tiny_pipe, "low")  # FF whole, rows not capped, 8 frames at a time
    record = run()
    assert {rows for _, rows in record.unet_calls} == {4} and chunks == [6]
    assert len(ff_calls) == len(record.unet_calls)
    apply_memory(tiny_pipe, "default")
    record = run()
    assert {rows for _, rows in record.unet_calls} == {4}
    assert len(ff_calls) == len(record.unet_calls) and chunks == [6]
    # A call's own settings win over the memory setting's.
    apply_memory(tiny_pipe, "lowest")
    ff_calls.clear()
    chunks.clear()
    with footprint.record_calls(tiny_pipe) as record:
        _video(tiny_pipe, keyframes, output_type="pt", max_unet_batch=0, decode_chunk_size=3)
    assert {rows for _, rows in record.unet_calls} == {4} and chunks == [3, 3]


def test_an_unknown_memory_setting_is_refused_before_loading(tmp_path):
    with pytest.raises(InbetweeningError, match="unknown memory setting 'huge'"):
        memory_preset("huge")
    from inbetweening.loading import load_pipeline

    with pytest.raises(InbetweeningError, match="unknown memory setting"):  # before the model
        load_pipeline(tmp_path / "no-such-model", memory="huge")


def test_load_pipeline_applies_the_setting(tiny_model_dir):
    from inbetweening.loading import load_pipeline

    pipe = load_pipeline(tiny_model_dir / "model", device="cpu", quiet=True, memory="lowest")
    assert pipe.memory == "lowest"
    assert load_pipeline(tiny_model_dir / "model", device="cpu", quiet=True).memory == "default"

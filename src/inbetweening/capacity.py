"""What the machine can sample: the size x frames of one segment that a call may ask for. One rule
for every front end (``inbetween interpolate``, ``render``, the app, the ComfyUI nodes), checked
with the call's settings (:func:`inbetweening.keyframes.check_options`) before any sampling."""

from __future__ import annotations

from .utils import InbetweeningError

CPU_WORK_FACTOR = 4  # see pixel_frame_limit
VAE_PEAK_TENSORS = 8  # see pixel_frame_limit


def free_device_memory(device) -> int:
    """Bytes a CUDA device can still give: its free memory and what torch holds cached unused."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def pixel_frame_limit(pipe) -> tuple[int, str]:
    """The most width x height x frames one segment may ask for, and what sets it.

    The rule, an estimate of a pipeline call's memory: its peak is the VAE decoding all frames
    at once at full resolution, about VAE_PEAK_TENSORS tensors of (frames, channels, H, W) with
    the channels of the decoder's last block, in the VAE's dtype. On a GPU the limit is its free
    memory over those bytes per pixel x frame; on the CPU (whose memory is shared and where time
    also grows with the work) a fixed CPU_WORK_FACTOR times the model's usual work (its default
    width x height x frames). The model's usual work is always allowed."""
    s, _ = pipe.call_settings()
    width, height, frames = s["width"], s["height"], int(s["num_frames"])
    usual = width * height * frames
    if pipe.device.type != "cuda":
        return CPU_WORK_FACTOR * usual, (f"the CPU ({CPU_WORK_FACTOR}x the model's usual "
                                         f"{width}x{height} x {frames} frames)")
    free = free_device_memory(pipe.device)
    per = pipe.vae.dtype.itemsize * VAE_PEAK_TENSORS * int(pipe.vae.config.block_out_channels[0])
    return max(usual, free // per), f"the free memory of {pipe.device} ({free / 2**30:.1f} GB)"


def check_work(pipe, settings: dict) -> None:
    """Refuse, with the reason, a segment of a call's resolved ``settings``
    (``pipe.call_settings``) larger than :func:`pixel_frame_limit`."""
    width, height, frames = settings["width"], settings["height"], settings["num_frames"]
    limit, basis = pixel_frame_limit(pipe)
    if width * height * frames > limit:
        raise InbetweeningError(
            f"{width}x{height} x {frames} frames is too large for {basis}: at most "
            f"{limit:,} pixels x frames per segment; choose a smaller size or fewer frames")

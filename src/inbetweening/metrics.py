"""Video quality metrics: PSNR and SSIM against the true clip, the Frechet distance, and LPIPS,
FID and FVD through feature networks the user has on disk.

No weights can be downloaded here, so the learned metrics take the networks the way the metric
libraries ship them, as TorchScript files, loaded with ``torch.jit.load`` (no pickled Python):

``--lpips-weights``
    NVIDIA's LPIPS VGG16 (``vgg16.pt`` of StyleGAN2-ADA's metrics, forward
    ``(img, resize_images, return_lpips)``; distance = squared difference of the normalised
    features), or any scripted distance network ``forward(x0, x1)`` on images in [-1, 1] returning
    one distance per image (e.g. ``torch.jit.script(lpips.LPIPS(net="alex"))``).
``--inception-weights`` (FID)
    NVIDIA's ``inception-2015-12-05.pt`` (the TensorFlow FID Inception, forward
    ``(img, return_features)`` on uint8 images, pool features of 2048), or any scripted image
    network ``forward(x)`` on (N, 3, 299, 299) images in [0, 1] returning (N, D) features.
``--fvd-weights`` (FVD)
    StyleGAN-V's ``i3d_torchscript.pt`` (forward ``(x, rescale, resize, return_features)`` on
    (B, 3, T, 224, 224) videos in [-1, 1]: the classic FVD), or a scripted video network
    ``forward(x)`` on (B, 3, 16, 224, 224) videos in [0, 1] returning (B, D) features: export
    VideoMAE-v2's ``forward_features`` this way for the content-debiased FVD of Ge et al. (2024),
    which the paper cites. Videos are resampled to :data:`FVD_FRAMES` frames.

Each network is checked on a small dummy batch when it is loaded, so a file of the wrong kind is
an error before any work starts.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .utils import InbetweeningError

MAX_PSNR = 100.0  # dB reported for identical images instead of infinity
FVD_FRAMES = 16  # frames of the clips the FVD networks were trained on
FVD_SIZE = 224
INCEPTION_SIZE = 299

# -- per-frame metrics ----------------------------------------------------------------------------


def as_video(video) -> torch.Tensor:
    """A video as an (F, 3, H, W) float tensor in [0, 1]. Accepts (F, 3, H, W) or (F, H, W, 3)
    arrays or tensors, uint8 or float in [0, 1]; a single image becomes a one-frame video."""
    v = video if isinstance(video, torch.Tensor) else torch.from_numpy(np.array(video))
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4:
        raise InbetweeningError(f"a video must have 4 dimensions (frames, ...), not {tuple(v.shape)}")
    if v.shape[1] != 3 and v.shape[-1] == 3:
        v = v.permute(0, 3, 1, 2)
    if v.shape[1] != 3:
        raise InbetweeningError(f"a video must have 3 colour channels, not shape {tuple(v.shape)}")
    return v.float() / 255.0 if v.dtype == torch.uint8 else v.float()


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise InbetweeningError(f"videos of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a, b, max_db: float = MAX_PSNR) -> float:
    """PSNR (dB) between two images or videos in [0, 1] over all their pixels; identical inputs
    give ``max_db`` instead of infinity."""
    a, b = as_video(a).double(), as_video(b).double()
    _same_shape(a, b)
    mse = float(((a - b) ** 2).mean())
    return max_db if mse <= 10 ** (-max_db / 10) else -10 * math.log10(mse)


def psnr_per_frame(video, true) -> list[float]:
    """PSNR (dB) of each frame of ``video`` to the same frame of ``true``."""
    v, t = as_video(video), as_video(true)
    _same_shape(v, t)
    return [psnr(v[i], t[i]) for i in range(len(v))]


def ssim_per_frame(video, true) -> list[float]:
    """SSIM of each frame (torchmetrics: Gaussian window 11, sigma 1.5, on RGB in [0, 1])."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    v, t = as_video(video), as_video(true)
    _same_shape(v, t)
    values = structural_similarity_index_measure(v.double(), t.double(), data_range=1.0,
                                                 reduction="none")
    return [float(x) for x in values]


# -- Frechet distance -----------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of (N, D) features."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InbetweeningError(f"need at least 2 feature vectors (N, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance between the Gaussians N(mu1, cov1) and N(mu2, cov2):
    ||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    The trace of the matrix square root is computed as tr((S1 cov2 S1)^(1/2)) with
    S1 = cov1^(1/2): both matrices are symmetric positive semi-definite, so this is exact and
    needs no complex arithmetic (the eigenvalues of cov1 cov2 and S1 cov2 S1 are the same).
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m, dtype=np.float64)).reshape(-1) for m in (mu1, mu2))
    c1, c2 = (torch.as_tensor(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    d = len(mu1)
    if len(mu2) != d or c1.numel() != d * d or c2.numel() != d * d:
        raise InbetweeningError("the two feature sets have different dimensions")
    c1, c2 = c1.reshape(d, d), c2.reshape(d, d)
    s1 = _sqrt_psd(c1)
    middle = s1 @ c2 @ s1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = ((mu1 - mu2) ** 2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * trace_sqrt
    return max(float(value), 0.0)


def frechet_distance_of(features_a, features_b) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


# -- feature networks -----------------------------------------------------------------------------


def load_torchscript(path: str | os.PathLike, flag: str) -> torch.jit.ScriptModule:
    """A TorchScript module from ``path``, or a one-line error naming ``flag``."""
    path = Path(path)
    if not path.is_file():
        raise InbetweeningError(f"{flag} {path}: no such file")
    try:
        with warnings.catch_warnings():  # deprecated in recent torch, yet the format shipped
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: not a TorchScript archive
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InbetweeningError(
            f"{flag} {path}: not a TorchScript file ({first}); these weights are taken as the "
            "metric libraries ship them, as TorchScript modules (see inbetweening.metrics)"
        ) from None
    return module.eval()


def _arguments(module) -> list[str]:
    try:
        return [a.name for a in module.forward.schema.arguments][1:]  # without self
    except (AttributeError, RuntimeError):
        return []


@dataclass
class FeatureNet:
    """A loaded feature network: ``fn`` maps a batch (as the metric needs it) to an output;
    ``kind`` names the calling convention recognised."""

    fn: Callable[..., torch.Tensor]
    kind: str
    path: str


def _probe(flag: str, path: Path, run: Callable[[], torch.Tensor], rows: int, what: str) -> None:
    try:
        with torch.no_grad():
            out = run()
    except InbetweeningError:
        raise
    except Exception as e:  # noqa: BLE001 - the network rejected the input: wrong kind of file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InbetweeningError(f"{flag} {path}: not {what} ({first})") from None
    if not isinstance(out, torch.Tensor) or out.shape[0] != rows or not torch.isfinite(out).all():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InbetweeningError(f"{flag} {path}: not {what} (its output for {rows} inputs has "
                                f"shape {shape})")


def _load_feature_net(path: str | os.PathLike, flag: str, what: str, conventions: list,
                      expected: str, probe) -> FeatureNet:
    """Load a TorchScript network and recognise its calling convention by its forward's
    argument names. ``conventions``: (matches(args), kind, wrap(net) -> fn) in order of
    preference; ``probe(fn)``: a call on a small random input whose output is checked."""
    path = Path(path)
    net = load_torchscript(path, flag)
    args = _arguments(net)
    for matches, kind, wrap in conventions:
        if matches(args):
            fn = wrap(net)
            break
    else:
        raise InbetweeningError(f"{flag} {path}: not {what} (its forward takes "
                                f"{args or 'no arguments'}; expected {expected})")
    _probe(flag, path, lambda: probe(fn), 2, what)
    return FeatureNet(fn, kind, str(path))


def _lpips_vgg16(net):
    def features(x):
        return net(x * 255.0, resize_images=True, return_lpips=True).flatten(1)
    return lambda x, y: (features(x) - features(y)).square().sum(1)


def load_lpips(path: str | os.PathLike) -> FeatureNet:
    """An LPIPS network (see the module's notes); ``fn(x, y)`` with (N, 3, H, W) images in
    [0, 1] returns (N,) distances."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return _load_feature_net(path, "--lpips-weights", "an LPIPS network", [
        (lambda args: "return_lpips" in args, "vgg16-lpips", _lpips_vgg16),
        (lambda args: len(args) >= 2, "distance",
         lambda net: lambda a, b: net(a * 2 - 1, b * 2 - 1).reshape(len(a), -1).mean(1)),
    ], "(img, return_lpips) or (x0, x1)", lambda fn: fn(x, x.flip(0)).reshape(2, -1))


def _resized_features(net):
    def fn(x):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
        return net(x).flatten(1)
    return fn


def load_inception(path: str | os.PathLike) -> FeatureNet:
    """An image feature network for FID; ``fn(x)`` with (N, 3, H, W) images in [0, 1] returns
    (N, D) features."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return _load_feature_net(path, "--inception-weights", "an image feature network", [
        (lambda args: "return_features" in args and "rescale" not in args,
         "inception-2015-12-05",
         lambda net: lambda x: net((x * 255).round().to(torch.uint8),
                                   return_features=True).flatten(1)),
        (lambda args: len(args) == 1, "image-features", _resized_features),
    ], "(img, return_features) or (x)", lambda fn: fn(x))


def resample_frames(video: torch.Tensor, count: int) -> torch.Tensor:
    """(F, ...) -> (count, ...) by the nearest frame at evenly spaced times (ends kept)."""
    idx = np.rint(np.linspace(0, len(video) - 1, count)).astype(int)
    return video[torch.as_tensor(idx)]


def _video_input(v: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, H, W) -> (B, 3, T, 224, 224): :data:`FVD_FRAMES` frames at 224x224."""
    v = torch.stack([resample_frames(x, FVD_FRAMES) for x in v])
    b, t = v.shape[:2]
    v = F.interpolate(v.flatten(0, 1), size=(FVD_SIZE, FVD_SIZE), mode="bilinear",
                      align_corners=False)
    return v.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4).contiguous()


def load_video_features(path: str | os.PathLike) -> FeatureNet:
    """A video feature network for FVD; ``fn(v)`` with (B, F, 3, H, W) videos in [0, 1] returns
    (B, D) features (videos resampled to :data:`FVD_FRAMES` frames at 224x224)."""
    v = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return _load_feature_net(path, "--fvd-weights", "a video feature network", [
        (lambda args: {"return_features", "rescale", "resize"} <= set(args), "i3d",
         lambda net: lambda v: net(_video_input(v) * 2 - 1, rescale=False, resize=False,
                                   return_features=True).flatten(1)),
        (lambda args: len(args) == 1, "video-features",
         lambda net: lambda v: net(_video_input(v)).flatten(1)),
    ], "(x, rescale, resize, return_features) or (x)", lambda fn: fn(v))


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            batch: int = 16) -> np.ndarray:
    """``fn`` over ``x`` in batches, as a float64 array."""
    return np.concatenate([fn(x[i:i + batch]).double().cpu().numpy()
                           for i in range(0, len(x), batch)])

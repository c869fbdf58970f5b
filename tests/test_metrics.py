"""Metrics: PSNR/SSIM, the Frechet distance against closed forms, and the LPIPS/FID/FVD feature
paths run end to end on tiny random stand-in networks saved the way the real ones are shipped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inbetweening import metrics
from inbetweening.utils import InbetweeningError

# The stand-ins are saved with torch.jit.script, the format of the shipped networks.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.jit.(script|load). is deprecated:DeprecationWarning")

# -- PSNR / SSIM ----------------------------------------------------------------------------------


def test_psnr_values():
    a = np.full((2, 8, 8, 3), 0.5)
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert metrics.psnr(a, a + 0.01) == pytest.approx(40.0)
    assert metrics.psnr(a, a) == metrics.MAX_PSNR  # identical: the cap, not infinity
    u8 = (a * 255).astype(np.uint8)
    assert metrics.psnr(u8, a) > 45  # uint8 and float inputs are on the same scale
    frames = metrics.psnr_per_frame(np.stack([a[0], a[0] + 0.1]), np.stack([a[0], a[0]]))
    assert frames == [pytest.approx(100.0), pytest.approx(20.0)]
    with pytest.raises(InbetweeningError):
        metrics.psnr(np.zeros((2, 8, 8, 3)), np.zeros((3, 8, 8, 3)))


def test_ssim_per_frame():
    rng = np.random.default_rng(0)
    video = rng.random((3, 32, 32, 3))
    assert metrics.ssim_per_frame(video, video) == [pytest.approx(1.0)] * 3
    noisy = np.clip(video + rng.normal(0, 0.2, video.shape), 0, 1)
    values = metrics.ssim_per_frame(noisy, video)
    assert len(values) == 3 and all(0 < v < 0.9 for v in values)
    # Less noise, more similar.
    slightly = np.clip(video + rng.normal(0, 0.02, video.shape), 0, 1)
    assert min(metrics.ssim_per_frame(slightly, video)) > max(values)


# -- Frechet distance -----------------------------------------------------------------------------


def test_frechet_1d_closed_form():
    # N(m1, s1^2), N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2.
    fd = metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]])
    assert fd == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, abs=1e-10)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    fd = metrics.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert fd == pytest.approx(expected, rel=1e-10)


def test_frechet_full_covariances_closed_form():
    """2x2 covariances that do not commute: tr sqrt(C1 C2) = sqrt(tr(C1 C2) + 2 sqrt(det C1 C2))
    (the sum of the square roots of the two non-negative eigenvalues of C1 C2)."""
    c1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    c2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(c1 @ c2, c2 @ c1)
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    trace_sqrt = math.sqrt(np.trace(c1 @ c2) + 2 * math.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-10)
    assert metrics.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-10)
    # Scaled covariance: C2 = a C1 gives (1 - sqrt(a))^2 tr C1.
    assert metrics.frechet_distance(mu1, c1, mu1, 4 * c1) == pytest.approx(np.trace(c1), rel=1e-10)
    assert metrics.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_from_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    a = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, -0.4, 0.7]])
    b = np.array([[0.6, 0.0, 0.0], [-0.3, 1.2, 0.0], [0.1, 0.2, 1.1]])
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    x = mu1 + rng.normal(size=(40000, 3)) @ a.T
    y = mu2 + rng.normal(size=(40000, 3)) @ b.T
    exact = metrics.frechet_distance(mu1, a @ a.T, mu2, b @ b.T)
    assert exact > 1.0
    assert metrics.frechet_distance_of(x, y) == pytest.approx(exact, rel=0.03)
    # Two samples of the same Gaussian: near zero.
    assert metrics.frechet_distance_of(x[:20000], x[20000:]) < 0.01


def test_feature_statistics_errors():
    with pytest.raises(InbetweeningError):
        metrics.feature_statistics(np.zeros((1, 4)))
    with pytest.raises(InbetweeningError):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# -- tiny stand-ins for the shipped TorchScript networks -----------------------------------------


class TinyVGG16LPIPS(nn.Module):
    """The calling convention of NVIDIA's vgg16.pt: images in [0, 255]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, img: torch.Tensor, resize_images: bool = True,
                return_lpips: bool = False) -> torch.Tensor:
        x = img / 255.0
        if resize_images:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        f = torch.relu(self.conv(x)).flatten(1)
        if return_lpips:
            f = f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
        return f


class TinyDistance(nn.Module):
    """A scripted LPIPS-like distance network: two images in [-1, 1] -> (N, 1, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        d = (self.conv(in0) - self.conv(in1)).square().mean(dim=(1, 2, 3), keepdim=True)
        return d


class TinyInception(nn.Module):
    """The calling convention of inception-2015-12-05.pt: uint8 images, any size."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(img.to(torch.float32) / 255.0, 4).flatten(1)
        f = self.fc(x)
        return f if return_features else torch.softmax(f, dim=1)


class TinyImageNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


class TinyI3D(nn.Module):
    """The calling convention of StyleGAN-V's i3d_torchscript.pt: (B, 3, T, H, W) in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 2 * 2, 6)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        f = self.fc(F.adaptive_avg_pool3d(x, (4, 2, 2)).flatten(1))
        return f if return_features else torch.softmax(f, dim=1)


class TinyVideoNet(nn.Module):
    """A scripted VideoMAE-style feature network: (B, 3, 16, 224, 224) in [0, 1] -> (B, D)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == 16 and x.shape[3] == 224
        return self.fc(x.mean(dim=(3, 4)).flatten(1))


def save_script(module: nn.Module, path) -> str:
    torch.manual_seed(0)
    module = module.__class__()
    torch.jit.script(module.eval()).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    return {name: save_script(cls(), root / f"{name}.pt") for name, cls in [
        ("vgg16", TinyVGG16LPIPS), ("distance", TinyDistance), ("inception", TinyInception),
        ("image", TinyImageNet), ("i3d", TinyI3D), ("video", TinyVideoNet)]}


def videos(n=3, frames=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, frames, 3, 32, 32, generator=g)


def test_lpips_paths(nets):
    x = videos(1)[0]
    y = (x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    for name, kind in (("vgg16", "vgg16-lpips"), ("distance", "distance")):
        net = metrics.load_lpips(nets[name])
        assert net.kind == kind
        same, diff = net.fn(x, x), net.fn(x, y)
        assert same.shape == (len(x),) and torch.allclose(same, torch.zeros_like(same), atol=1e-6)
        assert (diff > 0).all()
    # The vgg16 convention: squared distance of the normalised features of images in [0, 255].
    raw = torch.jit.load(nets["vgg16"])
    f = lambda v: raw(v * 255, resize_images=True, return_lpips=True)  # noqa: E731
    expected = (f(x) - f(y)).square().sum(1)
    assert torch.allclose(metrics.load_lpips(nets["vgg16"]).fn(x, y), expected)


def test_fid_paths(nets):
    a, b = videos(4, 6, seed=0).flatten(0, 1), videos(4, 6, seed=1).flatten(0, 1) * 0.5
    for name, kind in (("inception", "inception-2015-12-05"), ("image", "image-features")):
        net = metrics.load_inception(nets[name])
        assert net.kind == kind
        fa, fb = metrics.batched(net.fn, a, batch=5), metrics.batched(net.fn, b)
        assert fa.shape[0] == 24 and fa.dtype == np.float64
        assert metrics.frechet_distance_of(fa, fa) == pytest.approx(0.0, abs=1e-8)
        assert metrics.frechet_distance_of(fa, fb) > 0.01
    # The inception convention: uint8 images, features asked for.
    raw = torch.jit.load(nets["inception"])
    expected = raw((a * 255).round().to(torch.uint8), return_features=True)
    got = metrics.load_inception(nets["inception"]).fn(a)
    assert torch.allclose(got, expected)


def test_fvd_paths(nets):
    real, fake = videos(5, 6, seed=0), videos(5, 6, seed=1) * 0.5
    for name, kind in (("i3d", "i3d"), ("video", "video-features")):
        net = metrics.load_video_features(nets[name])
        assert net.kind == kind
        fr, ff = metrics.batched(net.fn, real, batch=2), metrics.batched(net.fn, fake)
        assert fr.shape[0] == 5
        assert metrics.frechet_distance_of(fr, ff) > 0.01
    # The i3d convention: (B, 3, 16, 224, 224) in [-1, 1], features asked for.
    raw = torch.jit.load(nets["i3d"])
    idx = torch.as_tensor(np.rint(np.linspace(0, 5, metrics.FVD_FRAMES)).astype(int))
    v = F.interpolate(real[:, idx].flatten(0, 1), size=(224, 224), mode="bilinear",
                      align_corners=False).unflatten(0, (5, 16)).permute(0, 2, 1, 3, 4)
    expected = raw(v * 2 - 1, rescale=False, resize=False, return_features=True)
    assert torch.allclose(metrics.load_video_features(nets["i3d"]).fn(real), expected, atol=1e-5)


def test_wrong_weight_files(nets, tmp_path):
    from safetensors.torch import save_file

    state = tmp_path / "state.pt"
    torch.save(TinyImageNet().state_dict(), state)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, st)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network at all")
    for bad in (state, st, junk, tmp_path / "missing.pt"):
        for load in (metrics.load_lpips, metrics.load_inception, metrics.load_video_features):
            with pytest.raises(InbetweeningError, match="weights"):
                load(bad)
    # Networks of the wrong kind for the flag.
    with pytest.raises(InbetweeningError, match="--fvd-weights .*not a video feature network"):
        metrics.load_video_features(nets["inception"])
    with pytest.raises(InbetweeningError, match="--fvd-weights .*not a video feature network"):
        metrics.load_video_features(nets["image"])
    with pytest.raises(InbetweeningError, match="--inception-weights .*not an image feature"):
        metrics.load_inception(nets["i3d"])
    with pytest.raises(InbetweeningError, match="--inception-weights .*not an image feature"):
        metrics.load_inception(nets["video"])
    with pytest.raises(InbetweeningError, match="--lpips-weights .*not an LPIPS network"):
        metrics.load_lpips(nets["image"])

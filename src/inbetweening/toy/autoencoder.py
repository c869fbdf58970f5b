"""The toy model's autoencoder: principal components of 8x8 pixel patches.

A fitted linear patch autoencoder stands in for a trained ``AutoencoderKLTemporalDecoder``,
which could not learn the toy world's colours in this project's CPU budget (the experiments are
in ``docs/toy-model.md``).

The toy latent is linear and fitted, not trained: each 8x8x3 patch of a frame is projected on
the leading principal components of toy-world patches (32 of 192 keep 95 % of the variance, 32 dB
on other clips, and every colour), giving latents of shape (32, H/8, W/8) like an SVD VAE's (4, H/8, W/8). It has the
interface the pipeline and training use (``encode(x).latent_dist.mode()``,
``decode(z, num_frames=).sample``, ``config.scaling_factor``, ``config.latent_channels``) and
loads and saves as a diffusers model. Real SVD models keep their own VAE; nothing else in the
package knows the difference.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Orthonormal projection of ``patch_size`` x ``patch_size`` patches on ``latent_channels``
    components (``basis``, with the patch mean ``center``). Until :meth:`fit` is called the basis
    is a random orthonormal one (a stand-in for an untrained model)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = 32, patch_size: int = 8,
                 scaling_factor: float = 1.0, force_upcast: bool = False):
        super().__init__()
        dim = in_channels * patch_size * patch_size
        if latent_channels > dim:
            raise ValueError(f"latent_channels must be at most {dim}")
        g = torch.Generator().manual_seed(0)
        # (float32 whatever the default dtype a loader sets: there is no half-precision QR)
        q, _ = torch.linalg.qr(torch.randn(dim, latent_channels, generator=g,
                                           dtype=torch.float32))
        self.register_buffer("basis", q.contiguous())  # (dim, latent_channels), orthonormal
        self.register_buffer("center", torch.zeros(dim))

    # -- patches ---------------------------------------------------------------------------------
    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H/p, W/p, C*p*p)."""
        p = self.config.patch_size
        n, c, h, w = x.shape
        if h % p or w % p:
            raise ValueError(f"frames of {w}x{h} are not a multiple of {p}")
        return x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(
            n, h // p, w // p, c * p * p)

    def _image(self, patches: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.in_channels
        n, hp, wp, _ = patches.shape
        return patches.reshape(n, hp, wp, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(
            n, c, hp * p, wp * p)

    # -- the autoencoder interface ---------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Frames (N, C, H, W) in [-1, 1] -> latents (N, latent_channels, H/p, W/p) as a
        distribution with no spread (its mode and its samples are the projection). Computed in
        float32 at least, returned in the frames' dtype."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        z = (self._patches(x.to(dtype)) - self.center.to(dtype)) @ self.basis.to(dtype)
        z = z.permute(0, 3, 1, 2).to(x.dtype)
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.full_like(z, -30.0)], dim=1))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, num_frames: int | None = None, return_dict: bool = True):
        """Latents (N, latent_channels, h, w) -> frames (N, C, h*p, w*p). ``num_frames`` is
        accepted for the temporal decoder's interface; frames are decoded independently.
        Computed in float32 at least, returned in the latents' dtype."""
        dtype = torch.promote_types(z.dtype, torch.float32)
        patches = z.to(dtype).permute(0, 2, 3, 1) @ self.basis.to(dtype).T + self.center.to(dtype)
        image = self._image(patches).to(z.dtype)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)

    # -- fitting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, frames: torch.Tensor) -> dict:
        """Principal components of the patches of ``frames`` (N, C, H, W) in [-1, 1]; then the
        scaling factor that gives the latents unit variance. Returns fit statistics."""
        patches = self._patches(frames.double()).reshape(-1, self.basis.shape[0])
        center = patches.mean(0)
        cov = (patches - center).T @ (patches - center) / len(patches)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        k = self.config.latent_channels
        basis = vectors.flip(1)[:, :k]
        self.basis.copy_(basis.float())
        self.center.copy_(center.float())
        kept = float(values.flip(0)[:k].sum() / values.sum())
        std = float(self.encode(frames.float()).latent_dist.mode().std())
        self.register_to_config(scaling_factor=1.0 / std)
        return {"patches": len(patches), "variance_kept": kept, "latent_std": std}

"""The tiny SD-family VAE: four levels, so that images are 8× the latents as with the real VAE."""

from __future__ import annotations

from typing import Any


def four_level_vae(*, seed: int = 0, **config: Any) -> Any:
    """A seeded tiny AutoencoderKL; `config` adds what differs per model family."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        **config,
    )

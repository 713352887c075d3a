"""Tiny random-weight folders for the avatar operation (InstantID on SDXL), built in code:
`sdxl`, `instantid`, `controlnet_pose` and `controlnet_canny`.

The layouts and file names are the hub downloads' (see backends/local/components.py): the fp16
variant files of SDXL base, InstantX/InstantID's `ip-adapter.bin` and `ControlNetModel/`,
thibaud's `OpenPoseXL2.safetensors` beside its `config.json`, and the fp16 canny ControlNet. The
architectures are the real families at the sizes of diffusers' own SDXL fast tests (two CLIP
text encoders of width 32, the second with a projection; a UNet and ControlNets with text-time
conditioning and a 64-wide cross-attention), with a four-level VAE so that images are 8× the
latents, as with the real one.

`ip-adapter.bin` is in InstantID's ORIGINAL format (its Resampler's names, key and value in one
`to_kv` matrix), written by `instantid_adapter`, the inverse of diffusers'
`_convert_ip_adapter_image_proj_to_diffusers` for the IP-Adapter Plus resampler; a benchmark can
call it on a full-size UNet for a full-size random adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tiny_models.resampler import original_names
from tests.tiny_models.tokenizers import CLIP_VOCAB_SIZE, clip_tokenizer, publish_clip_tokenizer
from tests.tiny_models.vae import four_level_vae

FACE_EMBEDDING_DIM = 512
IDENTITY_TOKENS = 16
CROSS_ATTENTION_DIM = 64
_TEXT_WIDTH = 32

# SDXL base's published scheduler config.
PUBLISHED_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def build(root: Path) -> None:
    """Write `root/sdxl`, `root/instantid`, `root/controlnet_pose` and `root/controlnet_canny`
    (deterministic: fixed seeds)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    unet = tiny_unet()
    pipeline = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(seed=0, projection=False),
        text_encoder_2=tiny_text_encoder(seed=1, projection=True),
        tokenizer=clip_tokenizer(pad="<|endoftext|>"),
        tokenizer_2=clip_tokenizer(pad="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(PUBLISHED_SCHEDULER),
        add_watermarker=False,
    )
    pipeline.to(torch.float16).save_pretrained(root / "sdxl", variant="fp16")
    (root / "sdxl" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(PUBLISHED_SCHEDULER)
    )
    for name in ("tokenizer", "tokenizer_2"):
        publish_clip_tokenizer(root / "sdxl" / name)

    instantid = root / "instantid"
    instantid.mkdir(parents=True)
    torch.save(instantid_adapter(unet, seed=2), instantid / "ip-adapter.bin")
    tiny_controlnet(seed=3).half().save_pretrained(instantid / "ControlNetModel")

    pose = tiny_controlnet(seed=4)
    (root / "controlnet_pose").mkdir(parents=True)
    pose.save_config(root / "controlnet_pose")
    # thibaud's single file, in diffusers' names, full precision as published.
    save_file(pose.state_dict(), root / "controlnet_pose" / "OpenPoseXL2.safetensors")

    tiny_controlnet(seed=5).half().save_pretrained(root / "controlnet_canny", variant="fp16")


def tiny_unet() -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        **denoiser_config(),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        out_channels=4,
        # SDXL's says 128 latent pixels, 1024 px: the side the avatar's working size is about
        # the square of (`avatar.avatar_working_size`); 8 keeps the tiny pipeline at 64² px.
        sample_size=8,
    )


def tiny_controlnet(seed: int) -> Any:
    """A ControlNet whose zero-initialised output convolutions are given random weights, so that
    its conditioning scale visibly matters (a trained one's are not zero either)."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        **denoiser_config(),
        # Three stride-2 layers: a control image 8× the latents, as with the real ones.
        conditioning_embedding_out_channels=(8, 8, 16, 16),
    )
    with torch.no_grad():
        # Small residuals into the UNet (large ones would drown everything else), a strong
        # control image.
        for name, parameter in net.named_parameters():
            if name.startswith("controlnet_cond_embedding.conv_out"):
                parameter.normal_(0.0, 1.0)
            elif name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                parameter.normal_(0.0, 0.02)
    return net


def denoiser_config() -> dict[str, Any]:
    """What the tiny SDXL UNet and its ControlNets share (the GPU benchmark's --tiny uses it)."""
    return {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "in_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 2),
        # Six time ids of 8 each, and the second text encoder's 32-wide pooled projection.
        "projection_class_embeddings_input_dim": 6 * 8 + _TEXT_WIDTH,
        "cross_attention_dim": CROSS_ATTENTION_DIM,
    }


def tiny_vae() -> Any:
    return four_level_vae(sample_size=64, scaling_factor=0.13025, force_upcast=True)


def tiny_text_encoder(seed: int, *, projection: bool) -> Any:
    """CLIPTextModel (SDXL's first encoder) or CLIPTextModelWithProjection (its second)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=CLIP_VOCAB_SIZE - 2,
        eos_token_id=CLIP_VOCAB_SIZE - 1,
        pad_token_id=1,
        hidden_size=_TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=_TEXT_WIDTH,
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def instantid_adapter(unet: Any, seed: int = 0, *, hidden_dims: int = 32, heads: int = 1) -> Any:
    """A random InstantID `ip-adapter.bin` for `unet`, in the original format:
    {"image_proj": the Resampler (512-d face embedding in, 16 tokens of the UNet's
    cross-attention width out), "ip_adapter": each cross-attention's `to_k_ip` / `to_v_ip`,
    numbered by position in `unet.attn_processors` (odd numbers: the self-attentions between
    them have no weights)}. Full size: hidden_dims=1280, heads=20."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    width = unet.config.cross_attention_dim
    torch.manual_seed(seed)
    resampler = IPAdapterPlusImageProjection(
        embed_dims=FACE_EMBEDDING_DIM,
        output_dims=width,
        hidden_dims=hidden_dims,
        depth=4,
        dim_head=64,
        heads=heads,
        num_queries=IDENTITY_TOKENS,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    modules = dict(unet.named_modules())
    ip_adapter = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            hidden = modules[name.removesuffix(".processor")].to_k.out_features
            for key in ("to_k_ip", "to_v_ip"):
                weight = torch.randn(hidden, width, generator=generator) / width**0.5
                ip_adapter[f"{index}.{key}.weight"] = weight
    # The published file is stored in half precision.
    return {
        "image_proj": {k: v.half() for k, v in original_resampler(resampler.state_dict()).items()},
        "ip_adapter": {k: v.half() for k, v in ip_adapter.items()},
    }


def original_resampler(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' IP-Adapter Plus resampler state dict under InstantID's original names."""
    return original_names(state, more=[(r"(latents|proj_in\.|proj_out\.|norm_out\.)", r"\1")])

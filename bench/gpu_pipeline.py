"""Seconds per image of each local GPU operation, against a plain diffusers pipeline.

For each operation the script builds the full-size architectures from their published configs
(written out below as dicts: nothing is downloaded) with random weights, since speed does not
depend on the weight values, directly on the GPU, and times them at ModelsLab's documented
defaults (`--style NAME`: at that style preset's settings instead, as the bot sends them):

- headshot: IP-Adapter-FaceID-PlusV2 on SD1.5 with the model card's DDIM scheduler and
  sd-vae-ft-mse, 512×768, 21 steps, guidance 5. facegen runs the very same pipeline at the same
  defaults, so its figures are headshot's (`--op facegen` times it anyway);
- avatar: InstantID on SDXL (Euler), IdentityNet + the pose ControlNet (the default selection),
  a 512×768 request generated at its working size of about 1 MP (832×1280) and resized to
  512×768, 21 steps, guidance 5; ours masks IdentityNet and the identity adapter to the face
  box, the plain pipeline cannot (see `avatar.plain_pipeline`);
- flux_headshot: FLUX.1 Kontext [dev], 1024×1024 (a Kontext resolution) from the selfie fitted
  to its nearest warmed reference bucket, 21 steps, guidance 3.5, 512 T5 tokens.

The selfie is 768×1024, a phone's 3:4: flux_headshot fits it to its warmed 3:4 reference
bucket (880×1184), and each line says how many graphs torch.compile made after the warm-up,
which should be none. Its pixels are random: the face analyser is the tests' deterministic
stand-in (tests/tiny_models/faces.py), not insightface, so insightface's own time per image is
not in these figures.

Per operation, in this order:

1. plain: the operation's `plain_pipeline` (diffusers' own pipeline, no torch.compile, no fused
   projections, contiguous memory), `--warmup` untimed runs, then `--runs` timed ones;
2. headshot only, "plain, LoRA merged": the same with the FaceID LoRA merged into the UNet's
   weights, which ours does too: the merge's own share of the speed-up, on its own line;
3. ours: the project's pipeline with every speed option on (`Runtime(device="cuda")`: fused QKV,
   channels-last, torch.compile), its `warm_up()` (timed apart: that is where compilation
   happens), `--warmup` untimed runs, then `--runs` timed ones.

The baselines share one build; ours is built afresh, so neither side can affect the other. Both
sides compute in the same precision: `--dtype` (default auto: bfloat16 where the GPU has it, as
deployed), and `--plain-dtype` defaults to it. Each line also says which precision the VAE
decoded in, seen at the decoder's input: SDXL's VAE under float16 decodes in float32 on both
sides (ours keeps it in float32, diffusers upcasts it), under bfloat16 in bfloat16 on both.

Printed per operation and line: the median seconds per image over the timed runs (min and max
beside it), the peak GPU memory during the timed runs (torch.cuda.max_memory_allocated, weights
included; reset after the untimed runs), the precision the VAE decoded in, the graphs
torch.compile made after the warm-up, each baseline over ours, and the aims (ours at least
2× faster than plain; headshot at most 0.5 s and flux_headshot at most 2.5 s per image on an
H100).

On a GPU machine, from the repository root (CUDA torch and the `[local]` extra installed):

    python bench/gpu_pipeline.py

Each operation is built twice and compiled once, so all three may need more than ten minutes;
where one command may run ten minutes at most, time one operation per command (`--json FILE`
also writes the figures as JSON):

    python bench/gpu_pipeline.py --op headshot --json headshot.json
    python bench/gpu_pipeline.py --op avatar --json avatar.json
    python bench/gpu_pipeline.py --op flux_headshot --json flux_headshot.json

Also: `--tiny` runs the same code with the tests' tiny architectures on the CPU (float32, no
compilation, small images, the working sizes at the tiny VAEs' side of 64) to show that the
script works end to end: its figures are NOT the benchmark. `--check-configs` builds every
full-size module on the `meta` device (no memory, no GPU) and prints its parameter count beside
the published one.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

# `tests.tiny_models` (tokenizers, random adapters, the stand-in face analyser) is not installed
# with the package: import it from the checkout this script is in.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from backends.local import avatar, flux, headshot
from backends.local.pipeline import LocalJob, OperationPipeline
from backends.local.runtime import Runtime
from backends.params import GenerationParams, Operation
from bot.styles import STYLES, get_style
from tests.tiny_models import sdxl
from tests.tiny_models.faces import StandInFaces
from tests.tiny_models.sd15 import faceid_state_dict
from tests.tiny_models.sdxl import instantid_adapter
from tests.tiny_models.tokenizers import clip_tokenizer, t5_tokenizer

if TYPE_CHECKING:
    import torch

Config = Mapping[str, Any]
Generate = Callable[[LocalJob], list[Image.Image]]

# --- Published configs (config.json of each hub folder; keys left at their defaults omitted) ---

# openai/clip-vit-large-patch14's text tower: SD1.5's `text_encoder`, SDXL base's
# `text_encoder` and FLUX.1's `text_encoder` (CLIPTextConfig).
CLIP_L_TEXT: Config = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
# OpenCLIP ViT-bigG/14's text tower with its projection: SDXL base's `text_encoder_2`.
CLIP_BIGG_TEXT: Config = {
    **CLIP_L_TEXT,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
}
# h94/IP-Adapter models/image_encoder (OpenCLIP ViT-H/14), CLIPVisionConfig.
CLIP_VIT_H: Config = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1024,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
SD15_UNET: Config = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
}
# stabilityai/sd-vae-ft-mse, the VAE headshot uses (SD1.5's own architecture, its decoder
# fine-tuned); SDXL's and FLUX's VAEs below are variations of it.
SD15_VAE: Config = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
# What SDXL base's UNet and the SDXL ControlNets share.
_SDXL_DENOISER: Config = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": (5, 10, 20),
    "block_out_channels": (320, 640, 1280),
    "cross_attention_dim": 2048,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "projection_class_embeddings_input_dim": 2816,
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
}
SDXL_UNET: Config = {
    **_SDXL_DENOISER,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "out_channels": 4,
    "sample_size": 128,
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
}
# diffusers/controlnet-canny-sdxl-1.0's config; InstantID's IdentityNet and thibaud's
# OpenPoseXL2 have the same architecture (RGB conditioning, 2048-wide cross-attention).
SDXL_CONTROLNET: Config = {
    **_SDXL_DENOISER,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "controlnet_conditioning_channel_order": "rgb",
    "global_pool_conditions": False,
}
SDXL_VAE: Config = {
    **SD15_VAE,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# black-forest-labs/FLUX.1-Kontext-dev.
FLUX_TRANSFORMER: Config = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_VAE: Config = {
    **SD15_VAE,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "force_upcast": True,
    "mid_block_add_attention": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# google/t5-v1_1-xxl as FLUX.1's `text_encoder_2` (only its encoder is built).
T5_XXL: Config = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": True,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
FLUX_SCHEDULER: Config = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


@dataclass(frozen=True)
class Architectures:
    """Every module's config: the published full-size ones, or the tests' tiny ones."""

    sd15_unet: Config
    sd15_vae: Config
    sd15_text_encoder: Config
    image_encoder: Config
    faceid_lora_rank: int
    sdxl_unet: Config
    sdxl_vae: Config
    sdxl_text_encoder: Config
    sdxl_text_encoder_2: Config
    sdxl_controlnet: Config
    # InstantID's resampler (diffusers' IPAdapterPlusImageProjection): width and heads.
    instantid_resampler: Config
    flux_transformer: Config
    flux_vae: Config
    flux_text_encoder: Config
    flux_text_encoder_2: Config


FULL = Architectures(
    sd15_unet=SD15_UNET,
    sd15_vae=SD15_VAE,
    sd15_text_encoder=CLIP_L_TEXT,
    image_encoder=CLIP_VIT_H,
    # ip-adapter-faceid-plusv2_sd15.bin's LoRA rank.
    faceid_lora_rank=128,
    sdxl_unet=SDXL_UNET,
    sdxl_vae=SDXL_VAE,
    sdxl_text_encoder=CLIP_L_TEXT,
    sdxl_text_encoder_2=CLIP_BIGG_TEXT,
    sdxl_controlnet=SDXL_CONTROLNET,
    instantid_resampler={"hidden_dims": 1280, "heads": 20},
    flux_transformer=FLUX_TRANSFORMER,
    flux_vae=FLUX_VAE,
    flux_text_encoder=CLIP_L_TEXT,
    flux_text_encoder_2=T5_XXL,
)

# The tests' tiny architectures (tests/tiny_models/*.py), as configs of the same families.
_TINY_CLIP: Config = {
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 37,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "hidden_act": "quick_gelu",
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
_TINY_VAE: Config = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}
_TINY_SDXL_DENOISER: Config = sdxl.denoiser_config()
TINY = Architectures(
    sd15_unet={
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
    },
    sd15_vae=_TINY_VAE,
    sd15_text_encoder=_TINY_CLIP,
    image_encoder={
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "gelu",
    },
    faceid_lora_rank=4,
    sdxl_unet={
        **_TINY_SDXL_DENOISER,
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "out_channels": 4,
        # 8 latent pixels, 64 px, as tests/tiny_models: the side the avatar sizes its working
        # resolution by (SDXL's is 128, 1024 px).
        "sample_size": 8,
    },
    # sample_size 64, as tests/tiny_models: the side flux_headshot sizes its working resolution
    # by (1024 for the published VAEs).
    sdxl_vae={**_TINY_VAE, "sample_size": 64, "scaling_factor": 0.13025, "force_upcast": True},
    sdxl_text_encoder={**_TINY_CLIP, "hidden_size": 32, "hidden_act": "gelu"},
    sdxl_text_encoder_2={**_TINY_CLIP, "hidden_size": 32, "hidden_act": "gelu"},
    sdxl_controlnet={**_TINY_SDXL_DENOISER, "conditioning_embedding_out_channels": (8, 8, 16, 16)},
    instantid_resampler={"hidden_dims": 32, "heads": 1},
    flux_transformer={
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "guidance_embeds": True,
        "axes_dims_rope": (4, 4, 8),
    },
    flux_vae={
        **_TINY_VAE,
        "sample_size": 64,
        "block_out_channels": (4, 4, 4, 4),
        "latent_channels": 1,
        "norm_num_groups": 1,
        "mid_block_add_attention": False,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "shift_factor": 0.0609,
        "scaling_factor": 1.5035,
    },
    flux_text_encoder={**_TINY_CLIP, "hidden_size": 32},
    flux_text_encoder_2={
        "vocab_size": 256,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": False,
    },
)

# --- Building the pipelines ---


class Decodes:
    """The precision each VAE decode ran in, seen at the decoder's input: the plain pipelines
    upcast SDXL's VAE themselves under float16, so this is what shows that both sides decode
    alike."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, vae: Any) -> Any:
        def record(_module: Any, inputs: tuple[Any, ...]) -> None:
            self.seen.append(str(inputs[0].dtype).removeprefix("torch."))

        vae.decoder.register_forward_pre_hook(record)
        return vae

    def take(self) -> str:
        """The precisions seen since the last call."""
        seen, self.seen = sorted(set(self.seen)), []
        return "+".join(seen) or "none"


@contextmanager
def _building(device: str, dtype: torch.dtype) -> Iterator[None]:
    """New parameters are created on `device` in `dtype`, not on the CPU in float32 first
    (FLUX's transformer alone would take 48 GB in float32)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _as_loaded(model: Any, dtype: torch.dtype) -> Any:
    """The precision transformers' from_pretrained would leave: it keeps a model's
    `_keep_in_fp32_modules` (T5's `wo` projections) in float32 when loading in float16."""
    import torch

    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    strict = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    names = (keep | strict) if dtype == torch.float16 else strict
    if dtype in (torch.float16, torch.bfloat16) and names:
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in names:
                module.to(torch.float32)
    return model


def _clip_text(config: Config, *, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model(CLIPTextConfig(**config))


def _t5_encoder(config: Config) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**config))


def _image_encoder(config: Config) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))


def build_headshot(
    arch: Architectures, runtime: Runtime, decodes: Decodes
) -> headshot.FaceIDPipeline:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    dtype = runtime.torch_dtype()
    with _building(runtime.device, dtype):
        unet = UNet2DConditionModel.from_config(dict(arch.sd15_unet))
        vae = decodes.watch(AutoencoderKL.from_config(dict(arch.sd15_vae)))
        text_encoder = _as_loaded(_clip_text(arch.sd15_text_encoder), dtype)
        image_encoder = _as_loaded(_image_encoder(arch.image_encoder), dtype)
    # On the CPU, from the UNet before any adapter is loaded into it (as the published file is).
    adapter = faceid_state_dict(unet, image_encoder.config.hidden_size, rank=arch.faceid_lora_rank)
    return headshot.FaceIDPipeline.from_modules(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(pad="<|endoftext|>"),
        unet=unet,
        scheduler=DDIMScheduler(**headshot.FACEID_SCHEDULER),
        image_encoder=image_encoder,
        ip_adapter=adapter,
        runtime=runtime,
        faces=StandInFaces(),
    )


def build_avatar(arch: Architectures, runtime: Runtime, decodes: Decodes) -> avatar.AvatarPipeline:
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
    )

    dtype = runtime.torch_dtype()
    with _building(runtime.device, dtype):
        unet = UNet2DConditionModel.from_config(dict(arch.sdxl_unet))
        vae = decodes.watch(AutoencoderKL.from_config(dict(arch.sdxl_vae)))
        text_encoder = _as_loaded(_clip_text(arch.sdxl_text_encoder), dtype)
        text_encoder_2 = _as_loaded(_clip_text(arch.sdxl_text_encoder_2, projection=True), dtype)
        # IdentityNet, pose, canny (canny is resident but not in the default selection).
        controlnets = [ControlNetModel.from_config(dict(arch.sdxl_controlnet)) for _ in range(3)]
    identity_adapter = instantid_adapter(unet, **arch.instantid_resampler)
    return avatar.AvatarPipeline.from_modules(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(pad="<|endoftext|>"),
        tokenizer_2=clip_tokenizer(pad="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(dict(sdxl.PUBLISHED_SCHEDULER)),
        identitynet=controlnets[0],
        identity_adapter=identity_adapter,
        pose=controlnets[1],
        canny=controlnets[2],
        runtime=runtime,
        faces=StandInFaces(),
    )


def build_flux(arch: Architectures, runtime: Runtime, decodes: Decodes) -> flux.KontextHeadshot:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    dtype = runtime.torch_dtype()
    with _building(runtime.device, dtype):
        transformer = FluxTransformer2DModel.from_config(dict(arch.flux_transformer))
        vae = decodes.watch(AutoencoderKL.from_config(dict(arch.flux_vae)))
        text_encoder = _as_loaded(_clip_text(arch.flux_text_encoder), dtype)
        text_encoder_2 = _as_loaded(_t5_encoder(arch.flux_text_encoder_2), dtype)
    return flux.KontextHeadshot.from_modules(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(pad="<|endoftext|>"),
        tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(FLUX_SCHEDULER)),
        runtime=runtime,
        faces=StandInFaces(),
    )


def plain_with_lora_merged(pipeline: headshot.FaceIDPipeline) -> Generate:
    """The plain headshot pipeline with the FaceID LoRA merged into the UNet's weights (PEFT's
    merge, as ours does before fusing): one matrix product per LoRA layer instead of three, so
    this line shows how much of ours' speed-up the merge alone gives."""
    pipeline.unet.fuse_lora()
    return headshot.plain_pipeline(pipeline)


@dataclass(frozen=True)
class Baseline:
    name: str
    # The baseline's run, from a pipeline built with the plain runtime.
    make: Callable[[Any], Generate]


@dataclass(frozen=True)
class Benchmark:
    operation: Operation
    # What runs, in words (the settings come from the pipeline's own `arguments`).
    method: str
    build: Callable[[Architectures, Runtime, Decodes], Any]
    # Timed in this order, from one build, before ours; the first is "plain", the aims' measure.
    baselines: tuple[Baseline, ...]
    # Seconds per image ours should reach on an H100 (None: no absolute aim).
    aim_seconds: float | None
    # Output size in --tiny mode (full size: the documented default).
    tiny_size: tuple[int, int]


_FACEID = "IP-Adapter-FaceID-PlusV2 on SD1.5, DDIM (the model card's), sd-vae-ft-mse"
_FACEID_BASELINES = (
    Baseline("plain", headshot.plain_pipeline),
    Baseline("plain, LoRA merged", plain_with_lora_merged),
)
BENCHMARKS = {
    "headshot": Benchmark(
        Operation.HEADSHOT, _FACEID, build_headshot, _FACEID_BASELINES, 0.5, (64, 96)
    ),
    "facegen": Benchmark(
        Operation.FACEGEN, _FACEID, build_headshot, _FACEID_BASELINES, 0.5, (64, 96)
    ),
    "avatar": Benchmark(
        Operation.AVATAR,
        "InstantID on SDXL, Euler; ours with the face-region mask, plain without it",
        build_avatar,
        (Baseline("plain", avatar.plain_pipeline),),
        None,
        (64, 96),
    ),
    "flux_headshot": Benchmark(
        Operation.FLUX_HEADSHOT,
        "FLUX.1 Kontext [dev], flow-matching Euler",
        build_flux,
        (Baseline("plain", flux.plain_pipeline),),
        2.5,
        (64, 64),
    ),
}
DEFAULT_OPS = ("headshot", "avatar", "flux_headshot")
SPEED_UP_AIM = 2.0
PROMPT = (
    "professional corporate headshot of a person, studio lighting, neutral grey background, "
    "sharp focus, 85mm lens"
)
NEGATIVE_PROMPT = "blurry, low quality, distorted face, extra limbs, watermark, text"
SEED = 1234
# A phone selfie's 3:4, as users send them, not the square of the old warm-up: flux_headshot
# fits it to its warmed 3:4 reference bucket, and the runs after warm_up() compile nothing.
SELFIE_SIZE = (768, 1024)


def _selfie() -> Image.Image:
    """Random pixels: the stand-in face analyser finds a face in any image that is not black."""
    rng = np.random.default_rng(0)
    width, height = SELFIE_SIZE
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _job(benchmark: Benchmark, *, tiny: bool, style: str | None) -> LocalJob:
    operation = benchmark.operation
    options: dict[str, Any] = {"prompt": PROMPT, "seed": SEED}
    if style is not None:
        options |= get_style(style).defaults.get(str(operation), {})
    if operation is not Operation.FLUX_HEADSHOT:
        options["negative_prompt"] = NEGATIVE_PROMPT  # FLUX [dev] does not use one
    if tiny:
        options["width"], options["height"] = benchmark.tiny_size
    return LocalJob(GenerationParams.create(operation, **options), face=_selfie())


def _describe(arguments: Mapping[str, Any]) -> str:
    width, height = arguments["width"], arguments["height"]
    size = f"{width}×{height}"
    delivered = arguments.get("output_size")
    if delivered is not None and tuple(delivered) != (width, height):
        size = f"generated at {size} ({width * height / 1e6:.2f} MP), delivered "
        size += "×".join(map(str, delivered))
    parts = [
        size,
        f"{arguments['num_inference_steps']} steps",
        f"guidance {arguments['guidance_scale']:g}",
        f"{arguments['num_images_per_prompt']} image per run",
    ]
    if "controlnets" in arguments:
        parts.append("ControlNets: " + " + ".join(arguments["controlnets"]))
    if "max_sequence_length" in arguments:
        reference = _reference_size(arguments)
        parts.append(f"{reference} reference, {arguments['max_sequence_length']} T5 tokens")
    selfie = "×".join(map(str, SELFIE_SIZE))
    return ", ".join(parts) + f"; selfie {selfie}"


def _reference_size(arguments: Mapping[str, Any]) -> str:
    """The size Kontext reads the selfie at, as the pipeline fitted it."""
    size = arguments.get("reference_size", SELFIE_SIZE)
    return "×".join(map(str, size))


# --- Timing ---


@dataclass(frozen=True)
class Timing:
    seconds: list[float]  # per image, one per timed run
    peak_bytes: int | None  # during the timed runs; None on the CPU
    decoded_in: str  # the precision the VAE decoded in
    # Graphs torch.compile made during the untimed and timed runs: 0 when the warm-up covered
    # every shape the job has.
    compiled: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class Result:
    op: str
    settings: str = ""
    baselines: dict[str, Timing] = dataclasses.field(default_factory=dict)
    ours: Timing | None = None
    plain_build_s: float | None = None
    ours_build_s: float | None = None
    warm_up_s: float | None = None
    error: str | None = None

    def over_ours(self, name: str) -> float | None:
        """A baseline's seconds per image over ours'."""
        if name not in self.baselines or self.ours is None:
            return None
        return self.baselines[name].median / self.ours.median


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _measure(
    run: Generate, job: LocalJob, decodes: Decodes, *, warmups: int, runs: int, device: str
) -> Timing:
    import torch
    from torch._dynamo.utils import counters

    cuda = device.startswith("cuda")
    graphs_before = counters["stats"]["unique_graphs"]
    for _ in range(warmups):
        run(job)
    _synchronize(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    decodes.take()
    seconds = []
    for _ in range(runs):
        _synchronize(device)
        start = time.perf_counter()
        images = run(job)
        _synchronize(device)
        seconds.append((time.perf_counter() - start) / len(images))
    peak = torch.cuda.max_memory_allocated() if cuda else None
    compiled = counters["stats"]["unique_graphs"] - graphs_before
    return Timing(seconds, peak, decodes.take(), compiled)


def _release(device: str) -> None:
    """Free the last phase's modules (compiled graphs hold on to them too)."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _plain_phase(
    benchmark: Benchmark,
    arch: Architectures,
    runtime: Runtime,
    job: LocalJob,
    args: Any,
    result: Result,
) -> None:
    decodes = Decodes()
    start = time.perf_counter()
    pipeline = benchmark.build(arch, runtime, decodes)
    _synchronize(runtime.device)
    result.plain_build_s = time.perf_counter() - start
    result.settings = _describe(pipeline.arguments(job))
    print(f"[{result.op}] settings: {result.settings}", flush=True)
    for baseline in benchmark.baselines:
        run = baseline.make(pipeline)
        timing = _measure(
            run, job, decodes, warmups=args.warmup, runs=args.runs, device=runtime.device
        )
        result.baselines[baseline.name] = timing
        print(f"[{result.op}] {baseline.name}: {_timing(timing)}", flush=True)
        del run
        _release(runtime.device)


def _ours_phase(
    benchmark: Benchmark, arch: Architectures, runtime: Runtime, job: LocalJob, args: Any
) -> tuple[Timing, float, float]:
    decodes = Decodes()
    start = time.perf_counter()
    pipeline: OperationPipeline = benchmark.build(arch, runtime, decodes)
    _synchronize(runtime.device)
    built = time.perf_counter() - start
    start = time.perf_counter()
    pipeline.warm_up()
    _synchronize(runtime.device)
    warmed = time.perf_counter() - start
    timing = _measure(
        pipeline.generate, job, decodes, warmups=args.warmup, runs=args.runs, device=runtime.device
    )
    return timing, built, warmed


def _benchmark(op: str, arch: Architectures, plain: Runtime, ours: Runtime, args: Any) -> Result:
    benchmark = BENCHMARKS[op]
    job = _job(benchmark, tiny=args.tiny, style=args.style)
    result = Result(op)
    try:
        print(f"\n[{op}] {benchmark.method}", flush=True)
        print(f"[{op}] plain: building …", flush=True)
        _plain_phase(benchmark, arch, plain, job, args, result)
        print(f"[{op}] ours: building, warm-up (compiles on a GPU) …", flush=True)
        result.ours, result.ours_build_s, result.warm_up_s = _ours_phase(
            benchmark, arch, ours, job, args
        )
        print(f"[{op}] ours: {_timing(result.ours)} (warm-up {result.warm_up_s:.1f} s)", flush=True)
    except Exception as error:  # one failed operation must not lose the others' figures
        traceback.print_exc()
        result.error = f"{type(error).__name__}: {error}"
        print(f"[{op}] FAILED: {result.error}", flush=True)
    finally:
        _release(ours.device)
    return result


# --- Output ---


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB"


def _timing(timing: Timing) -> str:
    low, high = min(timing.seconds), max(timing.seconds)
    return (
        f"{timing.median:.3f} s/image median of {len(timing.seconds)} "
        f"(min {low:.3f}, max {high:.3f}), peak {_gib(timing.peak_bytes)}, "
        f"VAE decodes in {timing.decoded_in}, {timing.compiled} graphs compiled"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
    }
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "device": properties.name,
            "gpu_memory": _gib(properties.total_memory),
            "cuda": torch.version.cuda,
        }
    else:
        info |= {"device": f"CPU ({platform.processor() or platform.machine()})"}
    return info


def _describe_runtime(runtime: Runtime) -> str:
    dtype = str(runtime.torch_dtype()).removeprefix("torch.")
    options = ", ".join(
        f"{name}={getattr(runtime, name)}" for name in ("compile", "fuse_qkv", "channels_last")
    )
    note = "" if runtime.on_gpu else " (compile and channels_last act on a GPU only)"
    return f"{runtime.device}, {dtype}, {options}{note}"


def _summary(results: list[Result], *, tiny: bool) -> None:
    print("\n" + "=" * 100)
    if tiny:
        print("TINY MODELS ON THE CPU: these figures show that the script runs, NOT the benchmark.")
    header = f"{'operation':<14}{'pipeline':<20}{'s/img':>8}{'÷ ours':>8}{'peak':>11}"
    header += f"{'VAE':>10}{'compiled':>10}{'warm-up s':>11}  aims"
    print(header)
    for result in results:
        if result.error is not None or result.ours is None:
            print(f"{result.op:<14}FAILED: {result.error}")
            continue
        for name, timing in result.baselines.items():
            row = f"{result.op:<14}{name:<20}{timing.median:>8.3f}"
            row += f"{result.over_ours(name) or 0.0:>7.2f}×{_gib(timing.peak_bytes):>11}"
            print(row + f"{timing.decoded_in:>10}{timing.compiled:>10}")
        row = f"{result.op:<14}{'ours':<20}{result.ours.median:>8.3f}{'':>8}"
        row += f"{_gib(result.ours.peak_bytes):>11}{result.ours.decoded_in:>10}"
        row += f"{result.ours.compiled:>10}"
        row += f"{result.warm_up_s or 0.0:>11.1f}  "
        print(row + ("(tiny: no aims)" if tiny else _aims(result)))
        print(f"{'':<14}{result.settings}")
    print("=" * 100, flush=True)


def _aims(result: Result) -> str:
    assert result.ours is not None
    ratio = result.over_ours("plain") or 0.0
    aims = [f"≥{SPEED_UP_AIM:g}× plain: {'met' if ratio >= SPEED_UP_AIM else 'NOT met'}"]
    aim = BENCHMARKS[result.op].aim_seconds
    if aim is not None:
        aims.append(f"≤{aim:g} s on an H100: {'met' if result.ours.median <= aim else 'NOT met'}")
    return "; ".join(aims)


def _to_json(timing: Timing | None) -> dict[str, Any] | None:
    if timing is None:
        return None
    return {**dataclasses.asdict(timing), "median": timing.median}


# --- Checking the full-size configs ---

# Parameter counts of the published checkpoints, in millions (≈: to about 0.1%).
PUBLISHED_MILLIONS = {
    # From the published files' sizes: 156 MB in float16, 1.69 GB in float32.
    "FaceID-PlusV2 adapter": 78.3,
    "InstantID adapter": 422.8,
    "SD1.5 UNet": 859.5,
    "SD1.5 / SDXL VAE": 83.7,
    "CLIP-L text encoder": 123.1,
    "CLIP ViT-H/14 image encoder": 632.1,
    "SDXL UNet": 2567.5,
    "OpenCLIP bigG text encoder": 694.7,
    "SDXL ControlNet": 1251.0,
    "FLUX.1 transformer": 11901.4,
    "FLUX VAE": 83.8,
    "T5-XXL encoder": 4762.3,
}


def check_configs() -> int:
    """Build every full-size module on the meta device and compare its parameter count with the
    published one; also count the random full-size adapters. 0 when every count matches."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        FluxTransformer2DModel,
        UNet2DConditionModel,
    )

    arch = FULL
    with _building("meta", torch.float32):
        modules = {
            "SD1.5 UNet": UNet2DConditionModel.from_config(dict(arch.sd15_unet)),
            "SD1.5 / SDXL VAE": AutoencoderKL.from_config(dict(arch.sd15_vae)),
            "CLIP-L text encoder": _clip_text(arch.sd15_text_encoder),
            "CLIP ViT-H/14 image encoder": _image_encoder(arch.image_encoder),
            "SDXL UNet": UNet2DConditionModel.from_config(dict(arch.sdxl_unet)),
            "OpenCLIP bigG text encoder": _clip_text(arch.sdxl_text_encoder_2, projection=True),
            "SDXL ControlNet": ControlNetModel.from_config(dict(arch.sdxl_controlnet)),
            "FLUX.1 transformer": FluxTransformer2DModel.from_config(dict(arch.flux_transformer)),
            "FLUX VAE": AutoencoderKL.from_config(dict(arch.flux_vae)),
            "T5-XXL encoder": _t5_encoder(arch.flux_text_encoder_2),
        }
    # The random adapters, built on the CPU from the meta modules' shapes.
    faceid = faceid_state_dict(
        modules["SD1.5 UNet"], arch.image_encoder["hidden_size"], rank=arch.faceid_lora_rank
    )
    instantid = instantid_adapter(modules["SDXL UNet"], **arch.instantid_resampler)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    for name, state in (("FaceID-PlusV2 adapter", faceid), ("InstantID adapter", instantid)):
        counts[name] = sum(t.numel() for part in state.values() for t in part.values())
    mismatches = 0
    print(f"{'module (random, meta device)':<30}{'parameters':>18}{'published':>14}")
    for name, count in counts.items():
        published = PUBLISHED_MILLIONS[name]
        ok = abs(count / 1e6 - published) <= published * 1e-3
        mismatches += not ok
        print(f"{name:<30}{count:>18,}{published:>12.1f} M  {'ok' if ok else 'MISMATCH'}")
    print("all counts match" if not mismatches else f"{mismatches} MISMATCH(ES)", flush=True)
    return 1 if mismatches else 0


# --- Main ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--op",
        action="append",
        choices=list(BENCHMARKS),
        help=f"operation to time (repeatable; default: {', '.join(DEFAULT_OPS)})",
    )
    parser.add_argument("--runs", type=int, help="timed runs per pipeline (5; --tiny: 3)")
    parser.add_argument(
        "--warmup", type=int, help="untimed runs before timing, after warm_up() (2; --tiny: 1)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="our pipelines' dtype (default auto: bfloat16 where the GPU has it, as deployed)",
    )
    parser.add_argument(
        "--plain-dtype",
        default=None,
        help="the plain pipelines' dtype (default: ours, so that both compute alike)",
    )
    parser.add_argument(
        "--style",
        choices=list(STYLES),
        help="time at this style preset's settings (default: ModelsLab's documented defaults)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: smoke test")
    parser.add_argument(
        "--check-configs", action="store_true", help="parameter counts on the meta device"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    # Random weights give meaningless (sometimes NaN) pixels; CLIP truncates long prompts.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
    # diffusers' SDXL pipeline upcasts its float16 VAE with a method it has deprecated.
    warnings.filterwarnings("ignore", ".*upcast_vae", FutureWarning)

    if args.check_configs:
        return check_configs()
    if args.runs is None:
        args.runs = 3 if args.tiny else 5
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 2
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    if args.tiny:
        device, arch = "cpu", TINY
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU here: run with --tiny for a CPU smoke test", file=sys.stderr)
            return 2
        device, arch = "cuda", FULL
    plain = Runtime(
        device=device,
        dtype=args.plain_dtype or args.dtype,
        compile=False,
        fuse_qkv=False,
        channels_last=False,
    )
    ours = Runtime(device=device, dtype=args.dtype)
    ops = list(dict.fromkeys(args.op or DEFAULT_OPS))

    environment = _environment(device)
    print("Headshot Bot: local GPU pipelines, ours against plain diffusers")
    if args.tiny:
        print("*** --tiny: tiny random models on the CPU; the figures are NOT the benchmark ***")
    print("  " + ", ".join(f"{key} {value}" for key, value in environment.items()))
    print(
        f"  ours:  {_describe_runtime(ours)}; warm_up(), {args.warmup} untimed, {args.runs} timed"
    )
    print(f"  plain: plain_pipeline, {_describe_runtime(plain)}; {args.warmup} untimed,", end=" ")
    print(f"{args.runs} timed; built and timed before ours, from its own modules")
    print(f"  weights: random, {'tiny test' if args.tiny else 'full-size published'} configs;")
    print(
        "  faces: the tests' deterministic stand-in (tests/tiny_models/faces.py), not insightface"
    )
    print(f"  selfie: {SELFIE_SIZE[0]}×{SELFIE_SIZE[1]} random pixels; generation seed {SEED}")
    print(
        "  settings: "
        + (f"style {args.style}'s presets" if args.style else "ModelsLab's documented defaults")
    )
    if "headshot" in ops or "facegen" in ops:
        print("  facegen runs the headshot pipeline at the same defaults: same figures")

    results = [_benchmark(op, arch, plain, ours, args) for op in ops]
    _summary(results, tiny=args.tiny)
    if args.json is not None:
        report = {
            "tiny": args.tiny,
            "environment": environment,
            "ours": _describe_runtime(ours),
            "plain": _describe_runtime(plain),
            "style": args.style,
            "runs": args.runs,
            "warmup": args.warmup,
            "results": [
                {
                    "op": r.op,
                    "settings": r.settings,
                    "baselines": [
                        {"name": name, **(_to_json(timing) or {}), "over_ours": r.over_ours(name)}
                        for name, timing in r.baselines.items()
                    ],
                    "ours": _to_json(r.ours),
                    "plain_build_s": r.plain_build_s,
                    "ours_build_s": r.ours_build_s,
                    "warm_up_s": r.warm_up_s,
                    "error": r.error,
                }
                for r in results
            ],
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

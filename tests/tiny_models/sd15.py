"""Tiny random-weight folders for headshot / facegen (IP-Adapter-FaceID-PlusV2 on SD1.5), built
in code: `sd15`, `clip_image_encoder` and `ip_adapter_faceid`.

Same layouts and file names as the hub downloads (fp16 variant files for SD1.5, the h94
`models/image_encoder/` folder, the single `ip-adapter-faceid-plusv2_sd15.bin`), the same
architecture families, at about the sizes of diffusers' own fast tests. Two differences from
those: the VAE has four levels, so that images are 8× the latents as with the real one, and the
UNet's cross-attention width is 64, because the FaceID projection derives its attention heads as
width // 64 and uses the UNet's width as its own (as the real checkpoint does: 768 = 12 × 64).

The adapter file is written in the ORIGINAL IP-Adapter-FaceID format (what `torch.save` wrote in
the IP-Adapter repository), not diffusers' names: `faceid_state_dict` maps a diffusers
projection's state dict back to the original keys, the inverse of diffusers'
`_convert_ip_adapter_image_proj_to_diffusers`, so the real loading code converts it forward.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from tests.tiny_models.resampler import original_names
from tests.tiny_models.tokenizers import clip_tokenizer, publish_clip_tokenizer
from tests.tiny_models.vae import four_level_vae

FACEID_FILE = "ip-adapter-faceid-plusv2_sd15.bin"
ID_EMBEDDING_DIM = 512
CROSS_ATTENTION_DIM = 64
LORA_RANK = 4

# The hub's SD1.5 scheduler config, as published (a PNDM scheduler, with a key PNDM no longer
# takes); the pipeline builds its own scheduler from it.
PUBLISHED_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def build(root: Path) -> None:
    """Write `root/sd15`, `root/clip_image_encoder` and `root/ip_adapter_faceid` (deterministic:
    fixed seeds)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    unet = tiny_unet()
    image_encoder = tiny_image_encoder()
    pipeline = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(PUBLISHED_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(torch.float16).save_pretrained(root / "sd15", variant="fp16")
    publish_clip_tokenizer(root / "sd15" / "tokenizer")
    (root / "sd15" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(PUBLISHED_SCHEDULER)
    )
    # The hub's model_index.json names the safety checker and feature extractor, which the
    # allow-list does not download: the loader must not rely on them.
    index_file = root / "sd15" / "model_index.json"
    index = json.loads(index_file.read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["requires_safety_checker"] = True
    index_file.write_text(json.dumps(index, indent=2))

    # The hub's allow-list fetches no vae/ from sd15: its VAE is sd-vae-ft-mse's folder (another
    # seed, so that a test can tell which one a pipeline loaded).
    shutil.rmtree(root / "sd15" / "vae")
    tiny_vae(seed=1).save_pretrained(root / "sd15_vae")

    image_encoder.save_pretrained(root / "clip_image_encoder" / "models" / "image_encoder")

    adapter = root / "ip_adapter_faceid"
    adapter.mkdir(parents=True)
    checkpoint = faceid_state_dict(unet, image_encoder.config.hidden_size)
    torch.save(checkpoint, adapter / FACEID_FILE)


def tiny_unet() -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
    )


def tiny_vae(seed: int = 0) -> Any:
    return four_level_vae(sample_size=32, seed=seed)


def tiny_text_encoder() -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=1000,
            hidden_act="quick_gelu",
        )
    )


def tiny_image_encoder() -> Any:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            image_size=224,
            patch_size=32,
            hidden_act="gelu",
        )
    )


def faceid_state_dict(
    unet: Any, clip_hidden_size: int, *, rank: int = LORA_RANK, seed: int = 0
) -> dict[str, Any]:
    """A random IP-Adapter-FaceID-PlusV2 checkpoint for `unet`, in the original format:
    {"image_proj": ProjPlusModel's keys, "ip_adapter": the attention processors' keys, numbered
    in `unet.attn_processors` order (the image key/value projections of each cross-attention,
    and the LoRA of every attention, self- and cross-; the published file has rank 128)}."""
    import torch

    width = unet.config.cross_attention_dim
    projection = faceid_projection(width, clip_hidden_size, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    ip_adapter = {}
    for index, name in enumerate(unet.attn_processors):
        hidden = _hidden_size(unet, name)
        self_attention = name.endswith("attn1.processor")
        context = hidden if self_attention else width
        # (input, output) features of each original layer.
        layers = {
            "to_q_lora": (hidden, hidden),
            "to_k_lora": (context, hidden),
            "to_v_lora": (context, hidden),
            "to_out_lora": (hidden, hidden),
        }
        for key, (fan_in, fan_out) in layers.items():
            ip_adapter[f"{index}.{key}.down.weight"] = _random(generator, rank, fan_in)
            ip_adapter[f"{index}.{key}.up.weight"] = _random(generator, fan_out, rank)
        if not self_attention:
            for key in ("to_k_ip", "to_v_ip"):
                ip_adapter[f"{index}.{key}.weight"] = _random(generator, hidden, width)
    image_proj = original_image_proj(projection.state_dict())
    # The published checkpoint is stored in half precision.
    return {
        part: {key: value.half() for key, value in weights.items()}
        for part, weights in (("image_proj", image_proj), ("ip_adapter", ip_adapter))
    }


def faceid_projection(width: int, clip_hidden_size: int, seed: int = 0) -> Any:
    """The FaceID-Plus projection (diffusers' module) whose weights the checkpoint carries."""
    import torch
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

    torch.manual_seed(seed)
    return IPAdapterFaceIDPlusImageProjection(
        embed_dims=width,
        output_dims=width,
        hidden_dims=clip_hidden_size,
        heads=width // 64,
        id_embeddings_dim=ID_EMBEDDING_DIM,
    )


def _random(generator: Any, rows: int, columns: int) -> Any:
    import torch

    return torch.randn(rows, columns, generator=generator) / columns**0.5


def _hidden_size(unet: Any, processor: str) -> int:
    channels = unet.config.block_out_channels
    block = re.match(r"(down|up)_blocks\.(\d+)\.", processor)
    if block is None:  # mid_block
        return int(channels[-1])
    index = int(block.group(2))
    return int(channels[index] if block.group(1) == "down" else channels[::-1][index])


# The FaceID-Plus projection's own parts -> the original ProjPlusModel names.
_PROJECTION_NAMES = (
    (r"proj\.net\.0\.proj\.", "proj.0."),
    (r"proj\.net\.2\.", "proj.2."),
    (r"norm\.", "norm."),
    (r"(proj_in|proj_out|norm_out)\.", r"perceiver_resampler.\1."),
)


def original_image_proj(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' FaceID-Plus projection state dict under the original IP-Adapter names."""
    return original_names(state, prefix="perceiver_resampler.", more=_PROJECTION_NAMES)

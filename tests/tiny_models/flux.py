"""A tiny random-weight FLUX.1 Kontext [dev] folder (`flux_kontext`), built in code.

Same layout and file names as the hub repository (model_index.json, scheduler/, text_encoder/,
text_encoder_2/, tokenizer/, tokenizer_2/, transformer/, vae/), the same architecture families
(FluxTransformer2DModel with guidance embedding, CLIPTextModel, T5EncoderModel, a four-level
AutoencoderKL so that images are 8× the latents as in the real VAE), with the sizes of diffusers'
own Flux fast tests. The transformer and the T5 encoder are saved sharded, as the real ones are.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models.tokenizers import clip_tokenizer, publish_clip_tokenizer, t5_tokenizer


def build(root: Path) -> None:
    """Write `root/flux_kontext` (deterministic: fixed seeds)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = root / "flux_kontext"
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=1000,
            hidden_act="quick_gelu",
        )
    )
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=256,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        # The side the pipeline generates at and fits the reference image to (the real VAE's is
        # 1024): the tests run Kontext's resolutions scaled to 64, e.g. 64² and 48 × 80.
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipeline = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipeline.save_pretrained(folder)
    # Like the hub folder: the CLIP tokenizer is vocab.json + merges.txt only, and the transformer
    # and the T5 encoder come in shards with an index file.
    publish_clip_tokenizer(folder / "tokenizer")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    transformer.save_pretrained(folder / "transformer", max_shard_size="120KB")
    (folder / "text_encoder_2" / "model.safetensors").unlink()
    text_encoder_2.save_pretrained(folder / "text_encoder_2", max_shard_size="45KB")

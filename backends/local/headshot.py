"""`headshot` and `facegen` on the local GPU: IP-Adapter-FaceID-PlusV2 on Stable Diffusion 1.5.

The selfie's identity reaches the UNet twice, as the adapter was trained: the face analyser's
normalised 512-d ArcFace embedding (buffalo_l's recogniser, the one the adapter was trained on)
goes through the adapter's projection, and the aligned face crop goes
through the CLIP image encoder (penultimate hidden states, as IP-Adapter Plus does) into the
projection's perceiver; Plus v2 adds the projected identity back as a shortcut, scaled by
`s_scale`. The adapter is loaded with diffusers' own `load_ip_adapter` from the original
checkpoint, including the FaceID LoRA it carries (applied through PEFT). What no user sets
follows the model card: DDIM sampling and the sd-vae-ft-mse VAE.

There is no local safety checker (none is downloaded), so `safety_checker` and
`safety_checker_type` do not reach this pipeline.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from backends.local.components import ModelPaths
from backends.local.faces import FaceAnalyser, aligned_crop
from backends.local.pipeline import LocalJob
from backends.local.runtime import Runtime, one_pass_per_image, speed_up
from backends.params import LIMITS, GenerationParams, Operation

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

FACEID_FILE = "ip-adapter-faceid-plusv2_sd15.bin"
IMAGE_ENCODER = Path("models") / "image_encoder"
DEFAULT_SIZE = (512, 768)
CROP_SIZE = 224
# The adapter's attention scale: the published FaceID-PlusV2 setting, not a ModelsLab knob.
IP_ADAPTER_SCALE = 1.0


# The noise schedule of IP-Adapter-FaceID's model card (SD1.5's own, sampled with DDIM).
FACEID_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def load(models: ModelPaths, runtime: Runtime, faces: FaceAnalyser) -> FaceIDPipeline:
    """Read every component from its local folder and build the pipeline."""
    sd15 = models.require("sd15")
    vae_folder = models.require("sd15_vae")
    image_encoder_folder = models.require("clip_image_encoder") / IMAGE_ENCODER
    adapter_file = models.require("ip_adapter_faceid") / FACEID_FILE

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    dtype = runtime.torch_dtype()
    # The hub's SD1.5 is fetched in its fp16 files; a checkpoint an operator points
    # LOCAL_MODEL_SD15 at (Realistic Vision, say) may ship full-precision files only.
    variant = (
        "fp16" if (sd15 / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists() else None
    )
    return FaceIDPipeline.from_modules(
        # sd-vae-ft-mse, as the model card: SD1.5's VAE fine-tuned for sharper faces.
        vae=AutoencoderKL.from_pretrained(vae_folder, torch_dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(
            sd15 / "text_encoder", variant=variant, dtype=dtype
        ),
        tokenizer=CLIPTokenizer.from_pretrained(sd15 / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(
            sd15, subfolder="unet", variant=variant, torch_dtype=dtype
        ),
        scheduler=DDIMScheduler(**FACEID_SCHEDULER),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(
            image_encoder_folder, dtype=dtype
        ),
        ip_adapter=torch.load(adapter_file, map_location="cpu", weights_only=True),
        runtime=runtime,
        faces=faces,
    )


class FaceIDPipeline:
    """IP-Adapter-FaceID-PlusV2 on SD1.5, serving headshot and facegen (one resident instance).

    Build it with `from_modules` (or `load`); `arguments(job)` is everything a run depends on,
    `generate(job)` makes its `samples` images, one denoising pass each (image i with seed + i:
    see `one_pass_per_image`)."""

    operations = (Operation.HEADSHOT, Operation.FACEGEN)

    def __init__(
        self, pipe: StableDiffusionPipeline, unet: Any, runtime: Runtime, faces: FaceAnalyser
    ) -> None:
        self.pipe = pipe
        # The UNet module itself (pipe.unet may be its compiled wrapper).
        self.unet = unet
        self.runtime = runtime
        self.faces = faces

    @classmethod
    def from_modules(
        cls,
        *,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        image_encoder: Any,
        ip_adapter: Mapping[str, Mapping[str, torch.Tensor]],
        runtime: Runtime,
        faces: FaceAnalyser,
    ) -> FaceIDPipeline:
        """Assemble already-built modules, load the FaceID adapter (a state dict in the original
        IP-Adapter format) and apply the runtime's speed options."""
        pipe = _assemble(vae, text_encoder, tokenizer, unet, scheduler, image_encoder, ip_adapter)
        pipe.to(runtime.device, runtime.torch_dtype())
        pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)
        if runtime.fuse_qkv:
            _fuse(unet)
        pipe.unet = speed_up(unet, runtime, fuse=False)
        return cls(pipe, unet, runtime, faces)

    def arguments(self, job: LocalJob) -> dict[str, Any]:
        params = job.params
        width, height = params.width or DEFAULT_SIZE[0], params.height or DEFAULT_SIZE[1]
        return {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "width": width,
            "height": height,
            "num_inference_steps": _option(params, "num_inference_steps"),
            "guidance_scale": _option(params, "guidance_scale"),
            "num_images_per_prompt": params.samples,
            "seeds": [job.seed + i for i in range(params.samples)],
            "shortcut_scale": _option(params, "s_scale"),
            "ip_adapter_scale": IP_ADAPTER_SCALE,
        }

    def generate(self, job: LocalJob) -> list[Image.Image]:
        face = self.faces.analyse(job.face)
        crop = aligned_crop(job.face, face.keypoints, CROP_SIZE)
        # FaceID's projection was trained on the normalised embedding (the card's
        # `normed_embedding`).
        return self._run(self.arguments(job), face.normed_embedding, crop)

    def warm_up(self) -> None:
        """Run the pipeline once, one step, on a neutral identity, so that torch.compile
        compiles now, not on the first job (every pass makes one image, so one shape per size);
        on the CPU, small."""
        width, height = DEFAULT_SIZE if self.runtime.on_gpu else (64, 64)
        identity = np.full(512, 512**-0.5, dtype=np.float32)
        crop = Image.new("RGB", (CROP_SIZE, CROP_SIZE), (128, 128, 128))
        params = GenerationParams.create(
            Operation.HEADSHOT, prompt="a portrait photo", seed=0, width=width, height=height
        )
        arguments = self.arguments(LocalJob(params, face=crop))
        self._run({**arguments, "num_inference_steps": 1}, identity, crop)

    def _run(
        self, arguments: Mapping[str, Any], identity: np.ndarray, crop: Image.Image
    ) -> list[Image.Image]:
        import torch

        call = dict(arguments)
        seeds = call.pop("seeds")
        shortcut_scale = call.pop("shortcut_scale")
        del call["ip_adapter_scale"]  # set once, in from_modules
        guided = call["guidance_scale"] > 1
        call["num_images_per_prompt"] = 1  # one pass per image
        dtype = self.runtime.torch_dtype()
        with torch.no_grad():
            clip_embeds = self._clip_embeds(crop, guided)
        id_embeds = torch.from_numpy(np.asarray(identity, dtype=np.float32)).reshape(1, 1, -1)
        if guided:
            # The pipeline splits [negative, positive].
            id_embeds = torch.cat([torch.zeros_like(id_embeds), id_embeds])
        id_embeds = id_embeds.to(self.runtime.device, dtype)
        projection = self.unet.encoder_hid_proj.image_projection_layers[0]
        projection.clip_embeds = clip_embeds
        projection.shortcut = True
        # A tensor, not a float: torch.compile would specialise on a float's value and compile
        # the UNet again for every new s_scale.
        projection.shortcut_scale = torch.tensor(shortcut_scale, device=self.runtime.device)

        def image(seed: int) -> list[Image.Image]:
            result = self.pipe(
                **call,
                generator=self.runtime.generator(seed),
                ip_adapter_image_embeds=[id_embeds],
                output_type="pil",
            )
            return list(result.images)

        try:
            return one_pass_per_image(seeds, image)
        finally:
            projection.clip_embeds = None  # the face's features stay no longer than its job

    def _clip_embeds(self, crop: Image.Image, guided: bool) -> torch.Tensor:
        """The crop's penultimate CLIP hidden states, shaped (batch, 1 image, tokens, width) for
        one image's pass: with guidance, those of a blank (all-zero) image first, as diffusers
        does for the unconditional half."""
        import torch

        encoder = self.pipe.image_encoder
        pixels = self.pipe.feature_extractor(crop, return_tensors="pt").pixel_values
        pixels = pixels.to(self.runtime.device, encoder.dtype)
        if guided:
            pixels = torch.cat([torch.zeros_like(pixels), pixels])
        hidden = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return hidden[:, None]


def plain_pipeline(pipeline: FaceIDPipeline) -> Callable[[LocalJob], list[Image.Image]]:
    """The same modules and settings in a plain diffusers pipeline, for the benchmark's baseline:
    a copy of the UNet with the FaceID LoRA unmerged (PEFT layers, as `load_ip_adapter` leaves
    them), diffusers' unfused SDPA processors, contiguous memory and no torch.compile."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    unet = copy.deepcopy(pipeline.unet)
    if pipeline.runtime.fuse_qkv:
        if getattr(unet, "peft_config", None):
            unet.unfuse_lora()
        processors = {
            name: AttnProcessor2_0() if isinstance(processor, FusedAttnProcessor2_0) else processor
            for name, processor in unet.attn_processors.items()
        }
        unet.set_attn_processor(processors)
    unet.to(memory_format=torch.contiguous_format)
    source = pipeline.pipe
    pipe = type(source)(
        vae=source.vae,
        text_encoder=source.text_encoder,
        tokenizer=source.tokenizer,
        unet=unet,
        scheduler=source.scheduler.from_config(source.scheduler.config),
        safety_checker=None,
        feature_extractor=source.feature_extractor,
        image_encoder=source.image_encoder,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    plain_runtime = dataclasses.replace(
        pipeline.runtime, compile=False, fuse_qkv=False, channels_last=False
    )
    return FaceIDPipeline(pipe, unet, plain_runtime, pipeline.faces).generate


def _assemble(
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    unet: Any,
    scheduler: Any,
    image_encoder: Any,
    ip_adapter: Mapping[str, Mapping[str, torch.Tensor]],
) -> StableDiffusionPipeline:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    size = image_encoder.config.image_size
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        # CLIP's resize, crop and normalisation, as diffusers sets it up for IP-Adapters.
        feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
        image_encoder=image_encoder,
        requires_safety_checker=False,
    )
    # With the image encoder already registered, load_ip_adapter only loads the adapter.
    pipe.load_ip_adapter({k: dict(v) for k, v in ip_adapter.items()}, subfolder="", weight_name="")
    has_lora = any("_lora." in key for key in ip_adapter["ip_adapter"])
    if has_lora and not getattr(unet, "peft_config", None):
        raise RuntimeError("the FaceID adapter's LoRA needs the `peft` package ([local] extra)")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fuse(unet: Any) -> None:
    """Fused projections where that keeps the adapter intact. diffusers' own
    `fuse_qkv_projections` would replace every attention processor, dropping the IP-Adapter
    ones, so: merge the FaceID LoRA into the base weights first (a fused matrix would otherwise
    lose it), then fuse Q/K/V of the self-attention layers only; the cross-attention layers keep
    their IP-Adapter processors, which read the separate projections."""
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
    )

    if getattr(unet, "peft_config", None):
        unet.fuse_lora()
    for name, module in unet.named_modules():
        # `attn1` is the transformer blocks' self-attention (the adapter's perceiver also has
        # Attention modules, which attend to the CLIP features: those stay as they are).
        attention = isinstance(module, Attention) and name.endswith(".attn1")
        if attention and isinstance(module.processor, AttnProcessor2_0):
            module.fuse_projections()
            module.set_processor(FusedAttnProcessor2_0())


def _option(params: GenerationParams, name: str) -> Any:
    value = getattr(params, name)
    return LIMITS[params.operation].defaults[name] if value is None else value

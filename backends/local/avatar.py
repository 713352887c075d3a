"""The avatar operation: InstantID on SDXL, with optional pose and canny ControlNets.

InstantID steers SDXL with two things taken from the selfie's face. Its identity adapter (an
IP-Adapter whose resampler turns the 512-d face embedding into 16 identity tokens) adds those
tokens to the UNet's cross-attention beside the text. Its IdentityNet, a ControlNet, reads the
five face keypoints drawn as an image, and attends to the identity tokens instead of the text.
After it come the ControlNets the request selects (`controlnet_selection`): pose (an OpenPose
head skeleton; the bundled backend has no body-pose model, see
`control_maps.head_pose_map`) and canny (edges); these two attend to the text, as in
InstantID's own demo. diffusers' ControlNet pipelines feed every ControlNet the text, so the
denoising loop is our own, built from diffusers' blocks.

SDXL and InstantID work at about one megapixel (InstantID's demo resizes its images to a 1024
or 1280 px long side, multiples of 64), far above ModelsLab's avatar cap of 512 × 768. So the
image is generated at the working size, about `side`² pixels at the requested aspect ratio
(`sizes.working_size`, `side` the UNet's trained resolution, as diffusers' SDXL pipeline
reads it), and each output is then fitted to the requested size. Keypoints, pose skeleton,
edges and the face box come from the pose image when the request has one, else from the
selfie, fitted to the working size (scaled to cover, cropped around the face), and the maps
are drawn there.

InstantID's "enhance non-face region" is always on (its demo's default; ModelsLab has no such
option): a mask that is 1 inside the face box and 0 outside multiplies IdentityNet's residuals
and the identity adapter's attention output, so that identity is pressed on the face only and
the rest of the picture follows the prompt (InstantID's
pipeline_stable_diffusion_xl_instantid_full.py).

Every component (`sdxl`, `instantid`, `controlnet_pose`, `controlnet_canny`) is required and
loaded at start, whatever requests select: each request may choose any combination, and loading
a ControlNet per request would cost far more than keeping it resident.

ModelsLab's `s_scale` and `safety_checker` have no InstantID counterpart and are not used;
a `depth` ControlNet is refused (there is none bundled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from backends.errors import InvalidRequest
from backends.local.components import ModelPaths
from backends.local.control_maps import head_pose_map, keypoint_map
from backends.local.faces import Face, FaceAnalyser, NoFaceFound
from backends.local.pipeline import LocalJob
from backends.local.runtime import Runtime, one_pass_per_image, speed_up
from backends.local.sizes import cover, fit, working_size
from backends.params import LIMITS, Operation

if TYPE_CHECKING:
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLPipeline

IDENTITYNET = "identitynet"
NO_DEPTH = "the local GPU backend has no depth ControlNet: use pose or canny"
NO_FACE_IN_POSE = "no face found in the pose image: send a pose photo with one visible face"
POSE_WEIGHTS = "OpenPoseXL2.safetensors"
# InstantID's demo draws canny edges with these thresholds.
CANNY_THRESHOLDS = (100, 200)
# InstantID's demo sizes its images in multiples of 64 (`resize_img`'s base_pixel_number).
SDXL_MULTIPLE = 64
_DEFAULTS = LIMITS[Operation.AVATAR].defaults
_STRENGTHS = {"pose": "pose_strength", "canny": "canny_strength"}


def load(models: ModelPaths, runtime: Runtime, faces: FaceAnalyser) -> AvatarPipeline:
    """Read every avatar component from its folder and build the pipeline."""
    folders = {
        name: models.require(name)
        for name in ("sdxl", "instantid", "controlnet_pose", "controlnet_canny")
    }
    import torch
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline

    dtype = runtime.torch_dtype()
    local = {"dtype": dtype, "local_files_only": True}
    base = StableDiffusionXLPipeline.from_pretrained(
        folders["sdxl"], variant="fp16", add_watermarker=False, **local
    )
    # InstantID's demo samples with Euler over the base model's own schedule, whatever
    # scheduler the checkpoint names.
    scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
    adapter = torch.load(
        folders["instantid"] / "ip-adapter.bin", map_location="cpu", weights_only=True
    )
    return AvatarPipeline.from_modules(
        vae=base.vae,
        text_encoder=base.text_encoder,
        text_encoder_2=base.text_encoder_2,
        tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2,
        unet=base.unet,
        scheduler=scheduler,
        identitynet=ControlNetModel.from_pretrained(
            folders["instantid"] / "ControlNetModel", **local
        ),
        identity_adapter=adapter,
        pose=_single_file_controlnet(folders["controlnet_pose"] / POSE_WEIGHTS, dtype),
        canny=ControlNetModel.from_pretrained(folders["controlnet_canny"], variant="fp16", **local),
        runtime=runtime,
        faces=faces,
    )


def _single_file_controlnet(path: Path, dtype: torch.dtype) -> ControlNetModel:
    """A ControlNet from one weight file beside its config.json (thibaud's pose ControlNet).
    diffusers' converter leaves a file in diffusers' names as it is and renames an original
    (ControlNet repository) one."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    config = ControlNetModel.load_config(path.parent)
    with init_empty_weights():
        net = ControlNetModel.from_config(config)
    state = convert_controlnet_checkpoint(load_file(path), dict(net.config))
    net.load_state_dict(state, strict=True, assign=True)
    return net.to(dtype)


class AvatarPipeline:
    """InstantID on SDXL: IdentityNet and the identity adapter, plus the selected pose / canny
    ControlNets, in one denoising loop over diffusers' SDXL blocks."""

    operations = (Operation.AVATAR,)

    def __init__(
        self,
        base: StableDiffusionXLPipeline,
        controlnets: Mapping[str, ControlNetModel],
        runtime: Runtime,
        faces: FaceAnalyser,
    ) -> None:
        self._base = base
        self._controlnets = dict(controlnets)
        self._runtime = runtime
        self._faces = faces
        self._identity_strength = _identity_strength(base.unet, runtime)
        # The resolution the model was trained at: the working size is about its square.
        self._side = int(base.unet.config.sample_size) * base.vae_scale_factor
        self._fused: list[tuple[Any, Any]] = []
        self._denoisers: dict[str, Callable[..., Any]] = {}
        for name, module in {"unet": base.unet, **self._controlnets}.items():
            if runtime.fuse_qkv:
                self._fused += _fuse_qkv(module)
            # speed_up's own fusion would replace every attention processor, the IP-Adapter's
            # included (and it does nothing on a ControlNet's attentions): _fuse_qkv does it.
            self._denoisers[name] = speed_up(module, runtime, fuse=False)

    @classmethod
    def from_modules(
        cls,
        *,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Any,
        identitynet: ControlNetModel,
        identity_adapter: Mapping[str, Mapping[str, torch.Tensor]],
        pose: ControlNetModel,
        canny: ControlNetModel,
        runtime: Runtime,
        faces: FaceAnalyser,
    ) -> AvatarPipeline:
        """The pipeline over already-built modules. `identity_adapter` is InstantID's
        `ip-adapter.bin` as loaded ({"image_proj", "ip_adapter"}, original names)."""
        import torch
        from diffusers import StableDiffusionXLPipeline

        dtype = runtime.torch_dtype()
        base = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
        base.to(runtime.device, dtype)
        if dtype == torch.float16 and vae.config.force_upcast:
            vae.to(torch.float32)  # SDXL's VAE overflows in float16
        # diffusers converts InstantID's resampler (the IP-Adapter Plus layout) itself.
        base.load_ip_adapter(
            dict(identity_adapter), subfolder="", weight_name="", image_encoder_folder=None
        )
        controlnets = {IDENTITYNET: identitynet, "pose": pose, "canny": canny}
        for net in controlnets.values():
            net.to(runtime.device, dtype)
        return cls(base, controlnets, runtime, faces)

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a `width` × `height` avatar is generated at (see the module docstring)."""
        return avatar_working_size(width, height, side=self._side)

    def arguments(self, job: LocalJob) -> dict[str, Any]:
        params = job.params
        selection = tuple(dict.fromkeys(_option(params, "controlnet_selection")))
        if "depth" in selection:
            raise InvalidRequest(NO_DEPTH)
        requested = (_option(params, "width"), _option(params, "height"))
        width, height = size = self.working_size(*requested)
        face = self._faces.analyse(job.face)
        reference, framing = job.face, face
        if job.pose is not None:
            try:
                framing = self._faces.analyse(job.pose)
            except NoFaceFound:
                raise InvalidRequest(NO_FACE_IN_POSE) from None
            reference = job.pose
        keypoints, box = _framed(framing, reference.size, size)
        # The photo is cropped around the face, not its centre, so that an off-centre face in a
        # photo of another shape stays in the picture.
        focus = _centre(framing)
        maps = {
            "pose": lambda: head_pose_map(size, keypoints),
            "canny": lambda: _canny(fit(reference.convert("RGB"), size, focus)),
        }
        return {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "width": width,
            "height": height,
            "output_size": requested,
            "num_inference_steps": _option(params, "num_inference_steps"),
            "guidance_scale": float(_option(params, "guidance_scale")),
            "num_images_per_prompt": params.samples,
            "seeds": [job.seed + i for i in range(params.samples)],
            "controlnets": [IDENTITYNET, *selection],
            "controlnet_conditioning_scale": [
                float(_option(params, "identitynet_strength_ratio")),
                *(float(_option(params, _STRENGTHS[name])) for name in selection),
            ],
            "control_images": [
                keypoint_map(size, keypoints),
                *(maps[name]() for name in selection),
            ],
            "face_box": box,
            "ip_adapter_scale": float(_option(params, "adapter_strength_ratio")),
            # InstantID's resampler was trained on insightface's raw embedding, not the unit one.
            "face_embedding": np.asarray(face.embedding, dtype=np.float32),
        }

    def generate(self, job: LocalJob) -> list[Image.Image]:
        arguments = self.arguments(job)
        output_size = arguments.pop("output_size")
        return [fit(image, output_size) for image in self._run(**arguments)]

    def warm_up(self) -> None:
        """Run every denoiser once before the first job, so that torch.compile compiles then,
        at the working size of the default request (compiled graphs are shape-specific; every
        pass makes one image). Nothing compiles on the CPU: there one run at the smallest size
        is enough."""
        if self._runtime.on_gpu:
            size = self.working_size(_DEFAULTS["width"], _DEFAULTS["height"])
        else:
            size = (SDXL_MULTIPLE, SDXL_MULTIPLE)
        width, height = size
        self._run(
            prompt="a portrait photo",
            negative_prompt=None,
            width=width,
            height=height,
            num_inference_steps=2,
            guidance_scale=float(_DEFAULTS["guidance_scale"]),
            num_images_per_prompt=1,
            seeds=[0],
            controlnets=[IDENTITYNET, "pose", "canny"],
            controlnet_conditioning_scale=[0.8, 0.4, 0.3],
            control_images=[Image.new("RGB", size)] * 3,
            face_box=(width // 4, height // 4, width * 3 // 4, height * 3 // 4),
            ip_adapter_scale=1.0,
            face_embedding=np.zeros(512, dtype=np.float32),
        )

    def _run(
        self, *, num_images_per_prompt: int, seeds: Sequence[int], **arguments: Any
    ) -> list[Image.Image]:
        """`arguments`' images, one denoising pass each (see `one_pass_per_image`)."""
        assert len(seeds) == num_images_per_prompt, "one seed per image"
        return one_pass_per_image(seeds, lambda seed: self._image(seed=seed, **arguments))

    def _image(
        self,
        *,
        seed: int,
        prompt: str,
        negative_prompt: str | None,
        width: int,
        height: int,
        num_inference_steps: int,
        guidance_scale: float,
        controlnets: Sequence[str],
        controlnet_conditioning_scale: Sequence[float],
        control_images: Sequence[Image.Image],
        face_box: tuple[int, int, int, int],
        ip_adapter_scale: float,
        face_embedding: np.ndarray,
    ) -> list[Image.Image]:
        """The one image of `seed`: a batch of one (two rows with guidance)."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        base, runtime = self._base, self._runtime
        device, dtype = torch.device(runtime.device), runtime.torch_dtype()
        guided = guidance_scale > 1.0
        generator = runtime.generator(seed)
        with torch.inference_mode():
            text, negative_text, pooled, negative_pooled = base.encode_prompt(
                prompt,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guided,
                negative_prompt=negative_prompt,
            )
            # InstantID's unconditional identity is the zero embedding.
            face = torch.as_tensor(face_embedding, device=device, dtype=dtype).view(1, 1, 1, -1)
            identity = torch.cat([torch.zeros_like(face), face]) if guided else face
            if guided:
                text = torch.cat([negative_text, text])
                pooled = torch.cat([negative_pooled, pooled])
            # IdentityNet attends to the identity tokens alone; the UNet gets them through the
            # adapter (from `image_embeds`), beside the text.
            identity_tokens = base.unet.encoder_hid_proj([identity])[0].squeeze(1)
            contexts = [identity_tokens if name == IDENTITYNET else text for name in controlnets]
            rows = text.shape[0]
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device)
            conditioning = {"text_embeds": pooled, "time_ids": time_ids.to(dtype).repeat(rows, 1)}
            images = [self._control_tensor(image, rows) for image in control_images]
            # Tensors, not floats: torch.compile would recompile for every new float value.
            scales = [
                torch.tensor(s, device=device, dtype=dtype) for s in controlnet_conditioning_scale
            ]
            self._identity_strength.fill_(ip_adapter_scale)
            face_region = FaceRegion(face_box, (width, height), device)

            scheduler = base.scheduler
            scheduler.set_timesteps(num_inference_steps, device=device)
            shape = (
                1,
                base.unet.config.in_channels,
                height // base.vae_scale_factor,
                width // base.vae_scale_factor,
            )
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = latents * scheduler.init_noise_sigma
            step_options = base.prepare_extra_step_kwargs(generator, 0.0)
            for t in scheduler.timesteps:
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                down: list[torch.Tensor] | None = None
                mid: torch.Tensor | None = None
                for name, context, image, scale in zip(
                    controlnets, contexts, images, scales, strict=True
                ):
                    net_down, net_mid = self._denoisers[name](
                        model_input,
                        t,
                        encoder_hidden_states=context,
                        controlnet_cond=image,
                        conditioning_scale=scale,
                        added_cond_kwargs=conditioning,
                        return_dict=False,
                    )
                    if name == IDENTITYNET:
                        net_down = [face_region.apply(residual) for residual in net_down]
                        net_mid = face_region.apply(net_mid)
                    down = (
                        net_down
                        if down is None
                        else [a + b for a, b in zip(down, net_down, strict=True)]
                    )
                    mid = net_mid if mid is None else mid + net_mid
                noise = self._denoisers["unet"](
                    model_input,
                    t,
                    encoder_hidden_states=text,
                    added_cond_kwargs={**conditioning, "image_embeds": [identity]},
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                    cross_attention_kwargs={"ip_adapter_masks": [face_region.pixels]},
                    return_dict=False,
                )[0]
                if guided:
                    unconditional, conditional = noise.chunk(2)
                    noise = unconditional + guidance_scale * (conditional - unconditional)
                latents = scheduler.step(noise, t, latents, **step_options, return_dict=False)[0]
            vae = base.vae
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
            return base.image_processor.postprocess(decoded, output_type="pil")  # type: ignore[no-any-return]

    def _control_tensor(self, image: Image.Image, rows: int) -> torch.Tensor:
        import torch

        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        return tensor.to(self._runtime.device, self._runtime.torch_dtype()).repeat(rows, 1, 1, 1)

    @contextmanager
    def _speed_options_off(self) -> Iterator[None]:
        """The modules as plain diffusers has them (unfused attention, default memory format,
        the adapter's strength in its processors' `scale`), for the plain pipeline's run; the
        very same processors come back after, so that no compiled graph is invalidated."""
        import torch
        from diffusers.models.attention_processor import AttnProcessor2_0

        channels_last = self._runtime.channels_last and self._runtime.on_gpu
        modules = [self._base.unet, *self._controlnets.values()]
        for attention, _ in self._fused:
            attention.set_processor(AttnProcessor2_0())
        if channels_last:
            for module in modules:
                module.to(memory_format=torch.contiguous_format)
        self._identity_strength.fill_(1.0)  # the plain run sets the processors' own scale
        # We keep SDXL's VAE in float32 under float16; plain diffusers expects it in float16
        # and upcasts it around each decode itself (given float32, it fails on float16 latents).
        vae = self._base.vae
        upcast = vae.dtype == torch.float32 and self._runtime.torch_dtype() == torch.float16
        if upcast:
            vae.to(torch.float16)
        try:
            yield
        finally:
            if upcast:
                vae.to(torch.float32)
            self._base.set_ip_adapter_scale(1.0)
            for attention, processor in self._fused:
                attention.set_processor(processor)
            if channels_last:
                for module in modules:
                    module.to(memory_format=torch.channels_last)


def plain_pipeline(pipeline: AvatarPipeline) -> Callable[[LocalJob], list[Image.Image]]:
    """A plain diffusers StableDiffusionXLControlNetPipeline over the same modules and the same
    arguments (the working size, then fitted to the requested size), without our speed options
    (no compile, no fused QKV, default memory format), as a timing baseline. It is not InstantID:
    it feeds IdentityNet the text rather than the identity tokens and leaves out the face-region
    mask on IdentityNet's residuals and on the adapter's attention (plain diffusers can do
    neither), so its images differ; its work is the same, but for those few multiplications."""
    import torch
    from diffusers import StableDiffusionXLControlNetPipeline

    base, runtime = pipeline._base, pipeline._runtime

    def run(job: LocalJob) -> list[Image.Image]:
        arguments = pipeline.arguments(job)
        plain = StableDiffusionXLControlNetPipeline(
            **base.components,
            controlnet=[pipeline._controlnets[name] for name in arguments["controlnets"]],
            add_watermarker=False,
        )
        plain.set_progress_bar_config(disable=True)
        face = torch.as_tensor(arguments["face_embedding"], device=runtime.device)
        face = face.to(runtime.torch_dtype()).view(1, 1, 1, -1)
        guided = arguments["guidance_scale"] > 1.0
        identity = torch.cat([torch.zeros_like(face), face]) if guided else face
        with pipeline._speed_options_off():
            plain.set_ip_adapter_scale(arguments["ip_adapter_scale"])
            output = plain(
                prompt=arguments["prompt"],
                negative_prompt=arguments["negative_prompt"],
                image=arguments["control_images"],
                controlnet_conditioning_scale=arguments["controlnet_conditioning_scale"],
                ip_adapter_image_embeds=[identity],
                width=arguments["width"],
                height=arguments["height"],
                num_inference_steps=arguments["num_inference_steps"],
                guidance_scale=arguments["guidance_scale"],
                num_images_per_prompt=arguments["num_images_per_prompt"],
                generator=runtime.generators(job.seed, job.params.samples),
            )
        return [fit(image, arguments["output_size"]) for image in output.images]

    return run


def _identity_strength(unet: Any, runtime: Runtime) -> torch.Tensor:
    """The identity adapter's strength, as a tensor the adapter's value projections are
    multiplied by (the attention's output scales with its values, so this is the processors'
    `scale`). diffusers keeps that scale as a float on each processor, and torch.compile
    would recompile the UNet for every new value; a tensor's value it does not guard."""
    import torch
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    strength = torch.ones((), device=runtime.device, dtype=runtime.torch_dtype())
    for processor in unet.attn_processors.values():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            for values in processor.to_v_ip:
                values.register_forward_hook(lambda _module, _input, output: output * strength)
    return strength


def _fuse_qkv(module: Any) -> list[tuple[Any, Any]]:
    """Fused QKV projections on the attentions that run diffusers' plain SDPA processor.

    Left alone: the UNet's cross-attentions, whose IP-Adapter processors read the separate
    key/value projections (diffusers' `fuse_qkv_projections` would replace those processors,
    dropping the identity), and the adapter's resampler under `encoder_hid_proj`, which calls a
    self-attention module with a separate context (so it needs its separate projections too).
    Returns each fused attention with its new processor."""
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
    )

    fused = []
    for name, attention in module.named_modules():
        if (
            isinstance(attention, Attention)
            and type(attention.processor) is AttnProcessor2_0
            and not name.startswith("encoder_hid_proj")
        ):
            attention.fuse_projections()
            processor = FusedAttnProcessor2_0()
            attention.set_processor(processor)
            fused.append((attention, processor))
    return fused


def _option(params: Any, name: str) -> Any:
    value = getattr(params, name)
    return _DEFAULTS[name] if value is None else value


def avatar_working_size(width: int, height: int, *, side: int) -> tuple[int, int]:
    """About `side`² pixels at width:height, sides multiples of 64: for SDXL's side of 1024,
    512 × 768 → 832 × 1280, what InstantID's app.py (`resize_img`, 1280 px long side) makes of
    a 2:3 photo."""
    return working_size(width, height, side=side, multiple=SDXL_MULTIPLE)


def _framed(
    face: Face, source: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`face`'s keypoints and box moved with its image as `fit` brings it to `size`, cropping
    around the face: the box in whole pixels (truncated, as InstantID's demo does) and clipped
    to the frame."""
    scaled, (left, top) = cover(source, size, _centre(face))
    factors = np.array([scaled[0] / source[0], scaled[1] / source[1]])
    offset = np.array([left, top])
    keypoints = np.asarray(face.keypoints, dtype=np.float64) * factors - offset
    corners = np.asarray(face.box, dtype=np.float64).reshape(2, 2) * factors - offset
    box_left, box_top, box_right, box_bottom = (
        int(value) for value in np.clip(corners, 0, size).reshape(-1)
    )
    return keypoints, (box_left, box_top, box_right, box_bottom)


def _centre(face: Face) -> tuple[float, float]:
    left, top, right, bottom = face.box
    return (left + right) / 2, (top + bottom) / 2


class FaceRegion:
    """InstantID's "enhance non-face region" mask: 1 inside the face box, 0 outside.

    `pixels` is the mask at the working size, (1, 1, height, width); diffusers' IP-Adapter
    attention processors take it as `ip_adapter_masks` and scale it to each attention's
    resolution themselves, multiplying the adapter's output by it. `apply` multiplies a
    ControlNet residual by the mask resized (bilinear, as InstantID does) to the residual's
    resolution. Both are tensors, so that torch.compile does not recompile per face."""

    def __init__(
        self, box: tuple[int, int, int, int], size: tuple[int, int], device: torch.device
    ) -> None:
        import torch

        left, top, right, bottom = box
        self.pixels = torch.zeros((1, 1, size[1], size[0]), device=device)
        self.pixels[..., top:bottom, left:right] = 1.0
        self._resized: dict[tuple[int, ...], torch.Tensor] = {}

    def apply(self, residual: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional

        size = tuple(residual.shape[-2:])
        if size not in self._resized:
            mask = functional.interpolate(self.pixels, size=size, mode="bilinear")
            self._resized[size] = mask.to(residual.dtype)
        return residual * self._resized[size]


def _canny(image: Image.Image) -> Image.Image:
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), *CANNY_THRESHOLDS)
    return Image.fromarray(edges).convert("RGB")

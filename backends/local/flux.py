"""flux_headshot on the local GPU: FLUX.1 Kontext [dev] with the selfie as its reference image.

Why Kontext among the FLUX identity methods: it is in diffusers core (`FluxKontextPipeline`), it
is one model, and it keeps the person of the reference image by itself, with no extra identity
encoder (PuLID-FLUX needs its own ID encoder, EVA-CLIP and face-parsing models and lives outside
diffusers core). The weights are under the FLUX.1 [dev] Non-Commercial License.

How the ModelsLab parameters reach the pipeline:

- `prompt` is wrapped in an editing instruction (`INSTRUCTION`): Kontext is trained on
  instructions ("turn this photo into …, keep …"), while our styles send descriptions.
- `width` × `height` (default 1024 × 1024, at most 2048²) is the size delivered. Kontext was
  trained at about one megapixel, on the resolutions diffusers lists as
  `PREFERRED_KONTEXT_RESOLUTIONS`: the image is generated at the one nearest the asked aspect
  ratio (`generation_size`; `max_area` set to it, so that Kontext does not rescale it) and then
  cover-resized and centre-cropped to the asked size (`sizes.fit`). A 2048² request is generated
  at 1024² and upscaled.
- `guidance_scale` is FLUX [dev]'s distilled guidance (the transformer's guidance embedding).
- `negative_prompt` is not used. FLUX [dev] is guidance-distilled: honouring a negative prompt
  takes "true" classifier-free guidance (`true_cfg_scale` > 1), which runs the transformer twice
  per step (twice the cost) and which the distilled model was not trained for. Our styles'
  negative prompts are SD-era keyword lists that FLUX does not need.
- `samples` (`num_images_per_prompt`) images are made one pass each, image i with seed + i, so
  that it is the very image of seed + i made alone (see `one_pass_per_image`); ModelsLab allows
  one image for this operation.

The selfie is the reference image. Left to itself, Kontext resizes it to the preferred resolution
nearest its aspect ratio, and every new reference shape is a new shape for the compiled
transformer (a recompile during a user's job). So we fit it (cover + centre crop) to the nearest
of the few buckets that selfies hit, the Kontext resolutions nearest 3:4, 4:5, 1:1 and 9:16
(`WARMED_REFERENCE_ASPECTS`), call Kontext with `_auto_resize=False`, and `warm_up` runs each of
them once at the default output size.

Kontext needs no face embedding; the selfie still goes through the face analyser so that a
photo with no face is refused (NoFaceFound) as in the other operations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from PIL import Image

from backends.local.components import COMPONENTS, MissingComponent, ModelPaths
from backends.local.faces import FaceAnalyser
from backends.local.pipeline import LocalJob
from backends.local.runtime import Runtime, one_pass_per_image, speed_up
from backends.local.sizes import REFERENCE_SIDE, fit, working_size
from backends.params import LIMITS, GenerationParams, Operation

if TYPE_CHECKING:
    import torch
    from diffusers import FluxKontextPipeline

COMPONENT = "flux_kontext"
_SUBFOLDERS = (
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "transformer",
    "vae",
)
INSTRUCTION = (
    "Turn this photo into: {prompt}. Keep the exact same person, with the same face, "
    "facial features and identity."
)
MAX_SEQUENCE_LENGTH = 512
_DEFAULTS = LIMITS[Operation.FLUX_HEADSHOT].defaults
# The shapes of most selfies: phone cameras' 3:4, full-screen 9:16, and the 4:5 and 1:1 crops of
# social apps. Their Kontext resolutions are the reference shapes compiled before the first job.
WARMED_REFERENCE_ASPECTS = ((3, 4), (4, 5), (1, 1), (9, 16))

Size = tuple[int, int]


def kontext_resolutions() -> list[Size]:
    """FLUX.1 Kontext's preferred (width, height) resolutions, about 1 MP each, given at
    `REFERENCE_SIDE` (diffusers' `PREFERRED_KONTEXT_RESOLUTIONS`)."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    return list(PREFERRED_KONTEXT_RESOLUTIONS)


def generation_size(width: int, height: int, *, side: int, multiple: int) -> Size:
    """The size a `width` × `height` request is generated at: the Kontext resolution nearest its
    aspect ratio, scaled to `side` (the VAE's `sample_size`: 1024 for FLUX's)."""
    return working_size(width, height, side=side, multiple=multiple, buckets=kontext_resolutions())


def reference_buckets() -> list[Size]:
    """The Kontext resolutions nearest `WARMED_REFERENCE_ASPECTS`, at `REFERENCE_SIDE`."""
    resolutions = kontext_resolutions()
    nearest = (
        working_size(width, height, side=REFERENCE_SIDE, multiple=1, buckets=resolutions)
        for width, height in WARMED_REFERENCE_ASPECTS
    )
    return list(dict.fromkeys(nearest))


def reference_size(image_size: Size, *, side: int, multiple: int) -> Size:
    """The size the reference image (the selfie) is fitted to: the reference bucket nearest its
    aspect ratio, scaled to `side`."""
    width, height = image_size
    return working_size(width, height, side=side, multiple=multiple, buckets=reference_buckets())


def warmed_reference_sizes(*, side: int, multiple: int) -> list[Size]:
    """Every size `reference_size` gives at `side` (fewer than the buckets where a small side
    rounds two of them to one size)."""
    sizes = (reference_size(bucket, side=side, multiple=multiple) for bucket in reference_buckets())
    return list(dict.fromkeys(sizes))


def load(models: ModelPaths, runtime: Runtime, faces: FaceAnalyser) -> KontextHeadshot:
    """Read FLUX.1 Kontext [dev] from its local folder and build the resident pipeline."""
    folder = models.require(COMPONENT)
    for name in _SUBFOLDERS:
        # A partial download: name the missing part rather than fail deep inside from_pretrained.
        part = folder / name
        if not part.is_dir() or not any(part.iterdir()):
            raise MissingComponent(COMPONENTS[COMPONENT], part)

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    dtype = runtime.torch_dtype()
    local: dict[str, Any] = {"local_files_only": True}
    return KontextHeadshot.from_modules(
        transformer=FluxTransformer2DModel.from_pretrained(
            folder / "transformer", torch_dtype=dtype, **local
        ),
        vae=AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, **local),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype, **local),
        text_encoder_2=T5EncoderModel.from_pretrained(
            folder / "text_encoder_2", dtype=dtype, **local
        ),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", **local),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder / "tokenizer_2", **local),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler", **local),
        runtime=runtime,
        faces=faces,
    )


class KontextHeadshot:
    """The resident flux_headshot pipeline: FluxKontextPipeline with the speed options on its
    transformer (fused QKV, torch.compile on a GPU), in the runtime's precision."""

    operations = (Operation.FLUX_HEADSHOT,)

    def __init__(
        self,
        pipe: FluxKontextPipeline,
        transformer: torch.nn.Module,
        runtime: Runtime,
        faces: FaceAnalyser,
    ) -> None:
        self.pipe = pipe
        # The transformer as loaded (not compiled), for plain_pipeline.
        self.transformer = transformer
        self.runtime = runtime
        self.faces = faces
        # The resolution the model was trained at; sides are multiples of the VAE's 8× times the
        # transformer's 2 × 2 latent patches.
        self.side: int = pipe.vae.config.sample_size
        self.multiple: int = pipe.vae_scale_factor * 2

    @property
    def warmed_reference_sizes(self) -> list[Size]:
        return warmed_reference_sizes(side=self.side, multiple=self.multiple)

    @classmethod
    def from_modules(
        cls,
        *,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler: Any,
        runtime: Runtime,
        faces: FaceAnalyser,
    ) -> KontextHeadshot:
        """Build from modules already in memory (moved to the runtime's device and precision)."""
        from diffusers import FluxKontextPipeline

        dtype = runtime.torch_dtype()
        for module in (transformer, vae, text_encoder, text_encoder_2):
            module.to(runtime.device)
            if next(module.parameters()).dtype != dtype:
                module.to(dtype=dtype)
            module.eval().requires_grad_(False)
        pipe = FluxKontextPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            # Kontext loads no IP-Adapter here, so fusing every QKV projection drops nothing.
            transformer=speed_up(transformer, runtime),
        )
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, transformer, runtime, faces)

    def arguments(self, job: LocalJob) -> dict[str, Any]:
        params = job.params
        output_size = (params.width or _DEFAULTS["width"], params.height or _DEFAULTS["height"])
        width, height = generation_size(*output_size, side=self.side, multiple=self.multiple)
        return {
            "prompt": INSTRUCTION.format(prompt=params.prompt.strip().rstrip(".")),
            "width": width,
            "height": height,
            # Kontext scales width × height to `max_area`; the size's own area leaves it as it is.
            "max_area": width * height,
            "num_inference_steps": params.num_inference_steps or _DEFAULTS["num_inference_steps"],
            "guidance_scale": (
                params.guidance_scale
                if params.guidance_scale is not None
                else _DEFAULTS["guidance_scale"]
            ),
            "num_images_per_prompt": params.samples,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            # The reference is fitted to `reference_size` here; Kontext would resize it again.
            "_auto_resize": False,
            "seeds": [job.seed + i for i in range(params.samples)],
            "output_size": output_size,
            "reference_size": reference_size(job.face.size, side=self.side, multiple=self.multiple),
        }

    def generate(self, job: LocalJob) -> list[Image.Image]:
        return self._generate(self.pipe, job)

    def warm_up(self) -> None:
        """One 1-step run of the default output size (1024²) with each warmed reference size,
        so that torch.compile compiles, before the first job, the shapes of every job of the
        default size (compiled graphs are shape-specific). On the CPU nothing compiles; the same
        runs happen at the tiny model's side."""
        params = GenerationParams.create(
            Operation.FLUX_HEADSHOT,
            prompt="a professional headshot",
            seed=0,
            num_inference_steps=1,
        )
        for size in self.warmed_reference_sizes:
            # A plain grey reference: no face check here (there is no face to find).
            self._run(self.pipe, LocalJob(params, Image.new("RGB", size, (128, 128, 128))))

    def _generate(self, pipe: FluxKontextPipeline, job: LocalJob) -> list[Image.Image]:
        # Kontext takes no face embedding; analysing the selfie only refuses one without a face.
        self.faces.analyse(job.face)
        return self._run(pipe, job)

    def _run(self, pipe: FluxKontextPipeline, job: LocalJob) -> list[Image.Image]:
        arguments = self.arguments(job)
        seeds = arguments.pop("seeds")
        output_size = arguments.pop("output_size")
        reference = fit(job.face.convert("RGB"), arguments.pop("reference_size"))

        def image(seed: int) -> list[Image.Image]:
            return list(
                pipe(
                    image=reference,
                    generator=self.runtime.generator(seed),
                    **{**arguments, "num_images_per_prompt": 1},
                ).images
            )

        images = one_pass_per_image(seeds, image)
        return [fit(image, output_size) for image in images]


def plain_pipeline(pipeline: KontextHeadshot) -> Callable[[LocalJob], list[Image.Image]]:
    """The same runs on a plain FluxKontextPipeline built from the same modules, without our
    speed options (no torch.compile, QKV projections unfused while it runs): the benchmark's
    baseline."""
    from diffusers import FluxKontextPipeline

    modules = {name: getattr(pipeline.pipe, name) for name in _SUBFOLDERS}
    plain = FluxKontextPipeline(**{**modules, "transformer": pipeline.transformer})
    plain.set_progress_bar_config(disable=True)

    def run(job: LocalJob) -> list[Image.Image]:
        with _unfused(pipeline.transformer):
            return pipeline._generate(plain, job)

    return run


@contextmanager
def _unfused(module: torch.nn.Module) -> Iterator[None]:
    # Fusing keeps the separate q/k/v weights: the attention layers use them again while the
    # flag is off, and the fused ones once it is back.
    fused = [m for m in module.modules() if getattr(m, "fused_projections", False)]
    for attention in fused:
        attention.fused_projections = False
    try:
        yield
    finally:
        for attention in fused:
            attention.fused_projections = True

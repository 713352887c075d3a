"""How the worker runs the pipelines: device, precision and the speed options.

Every option here is on by default where it does not change results (bf16/fp16 on a GPU, SDPA
attention, fused QKV projections, channels-last memory, torch.compile with a warm-up); each can
be turned off (`LOCAL_COMPILE=0` and friends) to compare or to debug.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

_T = TypeVar("_T")


@dataclass(frozen=True)
class Runtime:
    device: str = "cuda"
    # "auto": bfloat16 on a GPU that has it, else float16 on a GPU, float32 on the CPU.
    dtype: str = "auto"
    compile: bool = True
    fuse_qkv: bool = True
    channels_last: bool = True

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def torch_dtype(self) -> torch.dtype:
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if not self.on_gpu:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def generator(self, seed: int) -> torch.Generator:
        """The generator of one image. Our pipelines make each of a job's images in a pass of
        its own, with `generator(seed + i)` for image i (see `one_pass_per_image`)."""
        import torch

        return torch.Generator(self.device if self.on_gpu else "cpu").manual_seed(seed)

    def generators(self, seed: int, count: int) -> list[torch.Generator]:
        """One generator per sample of one batch, seeded seed, seed+1, … (the plain diffusers
        baselines, which batch; their image i matches ours only up to rounding)."""
        return [self.generator(seed + i) for i in range(count)]


def one_pass_per_image(seeds: Sequence[int], make: Callable[[int], list[_T]]) -> list[_T]:
    """A job's images, each made by a denoising pass of its own: `make(seed)` makes the one
    image of that seed.

    Not one batch: a matrix product picks its kernel, and with it the order in which it adds,
    by the shapes it is given, the number of rows included (MKL on the CPU does; so may cuBLAS
    and torch.compile's kernels on a GPU). Image 0 of a two-image batch and the one image of
    the same seed then differ in their last bits, and after the denoising steps by a level in a
    pixel here and there. Made alone, image i is the image of seed + i to the bit, whatever
    `samples` was. The price is the speed a batch would gain where one pass does not fill the
    GPU.
    """
    return [image for seed in seeds for image in make(seed)]


# Each new image size compiles the denoiser again; torch's default of 8 compiled versions would
# fall back to slow eager runs once a few sizes have been seen.
COMPILED_VERSIONS = 64


def speed_up(module: Any, runtime: Runtime, *, fuse: bool = True) -> Any:
    """Channels-last memory, fused QKV and torch.compile on one denoiser (UNet, ControlNet or
    transformer), as the runtime asks; returns the module to call (compiled or not).

    Pass `fuse=False` for a UNet that carries an IP-Adapter: diffusers' fuse_qkv_projections
    replaces every attention processor, the IP-Adapter's included (fuse what is safe yourself).
    """
    import torch

    if runtime.channels_last and runtime.on_gpu:
        module.to(memory_format=torch.channels_last)
    if fuse and runtime.fuse_qkv and hasattr(module, "fuse_qkv_projections"):
        module.fuse_qkv_projections()
    if runtime.compile and runtime.on_gpu:
        import torch._dynamo

        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), COMPILED_VERSIONS))
        return torch.compile(module, fullgraph=False, dynamic=False)
    return module

"""diffusers' resampler state dicts back under the original checkpoints' names: the inverse of
diffusers' `_convert_ip_adapter_image_proj_to_diffusers`, so the real loading code converts the
tiny adapters forward as it does the published ones."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# diffusers' resampler layer names -> the original Resampler's, under a prefix given per model.
_LAYER_NAMES = (
    (r"layers\.(\d+)\.ln0\.", r"layers.\1.0.norm1."),
    (r"layers\.(\d+)\.ln1\.", r"layers.\1.0.norm2."),
    (r"layers\.(\d+)\.attn\.to_q\.", r"layers.\1.0.to_q."),
    (r"layers\.(\d+)\.attn\.to_out\.0\.", r"layers.\1.0.to_out."),
    (r"layers\.(\d+)\.ff\.0\.", r"layers.\1.1.0."),
    (r"layers\.(\d+)\.ff\.1\.net\.0\.proj\.", r"layers.\1.1.1."),
    (r"layers\.(\d+)\.ff\.1\.net\.2\.", r"layers.\1.1.3."),
)


def original_names(
    state: dict[str, Any], *, prefix: str = "", more: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """`state` renamed: the resampler's layers under `prefix`, then the `more` (pattern,
    replacement) pairs for the projection's own parts."""
    import torch

    names = [(pattern, prefix + replacement) for pattern, replacement in _LAYER_NAMES]
    names += list(more)
    original = {}
    for name, tensor in state.items():
        attention = re.fullmatch(r"layers\.(\d+)\.attn\.to_([kv])\.weight", name)
        if attention:
            # The original keeps key and value in one `to_kv` matrix, key rows first.
            if attention.group(2) == "k":
                fused = torch.cat([tensor, state[name.replace("to_k.", "to_v.")]])
                original[f"{prefix}layers.{attention.group(1)}.0.to_kv.weight"] = fused
            continue
        for pattern, replacement in names:
            if re.match(pattern, name):
                original[re.sub(pattern, replacement, name, count=1)] = tensor
                break
        else:
            raise KeyError(f"no original name for {name}")
    return original

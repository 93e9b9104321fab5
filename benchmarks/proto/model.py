"""Prototype forwards of an isotropic GFNet (timm_gfnet's `GFNet` from main, its own modules and weights) with other
filter formulations and residual-stream layouts. Same math as `model(x)`; nothing in the model is changed.

* `forward_contig(model, x, filt)`: the residual stream made contiguous channels-last once after the patch embed (on
  main it is a permuted view of the conv's (B, C, H, W) output, so every residual add and LayerNorm moves memory
  across strides), the filter replaced by `filt(x, complex_weight)` on (B, H, W, C).
* `forward_tokens_first(model, x, filt)`: the whole stream as (N, B, C), token-first: the filter is two plain GEMMs
  (F @ (N, B C)), LayerNorm / MLP / residual adds are per token and do not care.
"""
from typing import Callable

import torch
import torch.nn.functional as F
from filters import filter_full2d_t, filter_sep_t, filter_tokens_first


def _cast(x: torch.Tensor) -> torch.Tensor:
    """The dtype the filter's GEMMs run in: autocast's on CPU, else the input's."""
    if torch.is_autocast_enabled('cpu') and x.dtype == torch.float32:
        return x.to(torch.get_autocast_dtype('cpu'))
    return x


def forward_contig(model, x: torch.Tensor, filt: Callable = filter_full2d_t) -> torch.Tensor:
    x = model.patch_embed.proj(x).permute(0, 2, 3, 1)
    B, H, W, C = x.shape
    x = (x + model.pos_embed.reshape(1, H, W, C)).contiguous()
    for blk in model.blocks:
        y = _cast(blk.norm1(x))  # before autocast is switched off: the filter runs in autocast's dtype
        with torch.autocast('cpu', enabled=False):
            y = filt(y, blk.filter.complex_weight)
        x = x + blk.mlp(blk.norm2(y))
    x = model.norm(x).mean(dim=(1, 2))
    return model.head(x)


FULL2D_MAX_TOKENS = 256  # full2d up to 16 x 16 tokens (wins at 14 x 14), the separable form above (wins at 28 x 28)


def forward_fused(
        model, x: torch.Tensor, mats=None, full2d_max_tokens: int = FULL2D_MAX_TOKENS, large=None,
        sep_mats=None) -> torch.Tensor:
    """forward_contig with filter_full2d_t, plus: the cast to autocast's dtype done by the filter's transposing copy
    (not a separate pass), and norm2 run in bf16 on the filter's bf16 output (torch's CPU LayerNorm takes bf16
    input with float32 weights and computes in float32): fc1 then gets bf16 with no cast. The residual stream stays
    in float32 under autocast. `mats`: per-grid (F, G4) buffers (export)."""
    dt = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else None
    x = model.patch_embed.proj(x).permute(0, 2, 3, 1)
    B, H, W, C = x.shape
    x = (x + model.pos_embed.reshape(1, H, W, C)).contiguous()
    for blk in model.blocks:
        y = blk.norm1(x)
        with torch.autocast('cpu', enabled=False):
            if mats is None and H * W > full2d_max_tokens:  # the separable form on larger grids
                if large is None:
                    y = filter_sep_t(y, blk.filter.complex_weight, dtype=dt or y.dtype, mats=sep_mats)
                else:
                    y = large(y.to(dt or y.dtype), blk.filter.complex_weight)
            else:
                y = filter_full2d_t(y, blk.filter.complex_weight, dtype=dt or y.dtype, mats=mats)
            n2 = blk.norm2
            y = F.layer_norm(y, n2.normalized_shape, n2.weight, n2.bias, n2.eps)
        x = x + blk.mlp(y)
    x = model.norm(x).mean(dim=(1, 2))
    return model.head(x)


def forward_tokens_first(model, x: torch.Tensor, filt: Callable = filter_tokens_first) -> torch.Tensor:
    x = model.patch_embed.proj(x)
    B, C, H, W = x.shape
    x = x.flatten(2).permute(2, 0, 1) + model.pos_embed.reshape(H * W, 1, C)  # (N, B, C), contiguous
    x = x.contiguous()
    for blk in model.blocks:
        y = _cast(blk.norm1(x))  # before autocast is switched off: the filter runs in autocast's dtype
        with torch.autocast('cpu', enabled=False):
            y = filt(y, blk.filter.complex_weight)
        x = x + blk.mlp(blk.norm2(y))
    x = model.norm(x).mean(dim=0)
    return model.head(x)


def main_dft(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    from timm_gfnet.filter_backends import global_filter_matmul
    return global_filter_matmul(x, w)


def filter_rule(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """full2d (one Linear per direction) up to 16 x 16 tokens, main's separable dft_filter above (measured
    crossover: full2d wins at 14 x 14, loses at 28 x 28 where it does ~9x the separable FLOPs)."""
    if x.shape[1] * x.shape[2] <= 256:
        return filter_full2d_t(x, w)
    return main_dft(x, w)


VARIANTS = {
    'contig stream + main dft_filter': lambda m, x: forward_contig(m, x, main_dft),
    'fused: full2d (<= 256 tokens) / sep_t': forward_fused,
    'fused: sep_t at every size': lambda m, x: forward_fused(m, x, full2d_max_tokens=0),
    'fused: full2d (<= 256 tokens) / main dft_filter': lambda m, x: forward_fused(m, x, large=main_dft),
}

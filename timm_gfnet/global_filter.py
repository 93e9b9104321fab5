""" Global filter layer of GFNet

`Global Filter Networks for Image Classification` - https://arxiv.org/abs/2107.00645

A global filter mixes tokens with a 2-D FFT of the token grid, an element-wise product with a learned
complex filter, and an inverse FFT: a depth-wise global circular convolution in O(N log N).
"""
from collections import OrderedDict
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple

__all__ = ['GlobalFilter', 'global_filter_fft', 'resample_filter', 'filter_spectrum_size']


def filter_spectrum_size(grid_size: Tuple[int, int]) -> Tuple[int, int]:
    """(h, w // 2 + 1): the size of the real FFT of an h x w grid, i.e. of the filter for that grid."""
    return grid_size[0], grid_size[1] // 2 + 1


def resample_filter(
        weight: torch.Tensor,
        grid_size: Tuple[int, int],
        mode: str = 'bicubic',
) -> torch.Tensor:
    """Resample a filter of shape (h, w // 2 + 1, C, 2) to the spectrum of a `grid_size` grid.

    Real and imaginary parts are interpolated as channels with align_corners=True, as in the authors'
    fine-tuning (bicubic) and dense-prediction (bilinear) code. The same size returns `weight` itself.
    """
    h, wf, c, _ = weight.shape
    new_h, new_wf = filter_spectrum_size(grid_size)
    if h == new_h and wf == new_wf:
        return weight
    w = weight.float().reshape(1, h, wf, c * 2).permute(0, 3, 1, 2)
    w = F.interpolate(w, size=(new_h, new_wf), mode=mode, align_corners=True)
    return w.permute(0, 2, 3, 1).reshape(new_h, new_wf, c, 2).to(weight.dtype)


def global_filter_fft(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The authors' formulation: float32 `rfft2` (ortho) of a (B, H, W, C) grid, complex product, `irfft2`."""
    H, W = x.shape[1], x.shape[2]
    y = torch.fft.rfft2(x.float(), dim=(1, 2), norm='ortho')
    y = y * torch.view_as_complex(weight.float().contiguous())
    y = torch.fft.irfft2(y, s=(H, W), dim=(1, 2), norm='ortho')
    return y.to(x.dtype)


@register_notrace_module  # shape checks and the resample cache are not symbolically traceable
class GlobalFilter(nn.Module):
    """Global filter token mixer, usable on its own as the paper's plug-and-play layer.

    Takes a (B, H, W, C) grid, or (B, N, C) tokens with `spatial_size=(H, W)` (a square grid is assumed
    when it is omitted and N is a perfect square). The filter is learned for `grid_size`; with
    `dynamic_size=True` other grid sizes use a bilinearly resampled filter (cached in inference).

    Args:
        dim: Channels C.
        grid_size: Token grid (H, W) the filter is learned for.
        dynamic_size: Accept other grid sizes by resampling the filter on the fly.
        cache_size: How many resampled filters to keep for inference at dynamic sizes.
    """

    def __init__(
            self,
            dim: int,
            grid_size: Union[int, Tuple[int, int]] = 14,
            dynamic_size: bool = False,
            cache_size: int = 8,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.dim = dim
        self.grid_size = to_2tuple(grid_size)
        self.dynamic_size = dynamic_size
        self.cache_size = cache_size
        h, wf = filter_spectrum_size(self.grid_size)
        # stored real with a trailing (real, imag) axis, the authors' layout: checkpoints load as they are
        self.complex_weight = nn.Parameter(torch.randn(h, wf, dim, 2, device=device, dtype=dtype) * 0.02)
        self._cache: 'OrderedDict[Tuple[int, int, int, str, str], torch.Tensor]' = OrderedDict()

    def forward(self, x: torch.Tensor, spatial_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if x.ndim == 3:
            B, N, C = x.shape
            if spatial_size is None:
                side = int(round(N ** 0.5))
                if side * side != N:
                    raise ValueError(
                        f'GlobalFilter got {N} tokens, which is not a square grid: pass spatial_size=(H, W).')
                H, W = side, side
            else:
                H, W = spatial_size[0], spatial_size[1]
                if H * W != N:
                    raise ValueError(
                        f'GlobalFilter got {N} tokens but spatial_size {H}x{W} holds {H * W}.')
            return self._filter(x.reshape(B, H, W, C)).reshape(B, N, C)
        if x.ndim != 4:
            raise ValueError(
                f'GlobalFilter expects (B, H, W, C) or (B, N, C) input, got a tensor of shape {list(x.shape)}.')
        return self._filter(x)

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f'GlobalFilter has {self.dim} channels, got input with {x.shape[-1]} (channels last).')
        return global_filter_fft(x, self.filter_for(x.shape[1], x.shape[2]))

    def filter_for(self, H: int, W: int) -> torch.Tensor:
        """The (H, W // 2 + 1, C, 2) filter for an H x W grid."""
        weight = self.complex_weight
        h, wf = filter_spectrum_size((H, W))
        if weight.shape[0] == h and weight.shape[1] == wf:
            return weight
        if not self.dynamic_size:
            raise ValueError(
                f'GlobalFilter was built for a {self.grid_size[0]}x{self.grid_size[1]} token grid and got '
                f'{H}x{W}: create the model with img_size= for that input, or with dynamic_img_size=True.')
        if torch.jit.is_scripting():
            return resample_filter(weight, (H, W), mode='bilinear')
        return self._cached_filter(H, W)

    @torch.jit.unused
    def _cached_filter(self, H: int, W: int) -> torch.Tensor:
        weight = self.complex_weight
        # training and compiled graphs need the filter in the autograd graph / traced: no cache there
        if (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
            return resample_filter(weight, (H, W), mode='bilinear')
        key = (H, W, weight._version, str(weight.device), str(weight.dtype))
        cached = self._cache.get(key)
        if cached is None:
            cached = resample_filter(weight.detach(), (H, W), mode='bilinear')
            self._cache[key] = cached
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached

    def extra_repr(self) -> str:
        return f'dim={self.dim}, grid_size={self.grid_size}, dynamic_size={self.dynamic_size}'

""" Global filter layers of GFNet: 1-D, 2-D and 3-D, channels last or first

`Global Filter Networks for Image Classification` - https://arxiv.org/abs/2107.00645

A global filter mixes tokens with a real FFT over the spatial axes (norm='ortho', the last axis halved), an
element-wise product with a learned complex filter, and the inverse FFT: a depth-wise global circular convolution in
O(N log N). One N-d layer serves sequences (`GlobalFilter1d`), images / token grids (`GlobalFilter`) and volumes
(`GlobalFilter3d`). The learned parameter is `complex_weight` of shape `(*spectrum, dim, 2)`, the authors' layout.
How it is computed (`fft`, `matmul`, the `auto` rule and its global switch) is `filter_backends.py`. A layer holds
nothing but its weights: a filter for another size is resampled from them on each call.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .filter_backends import FILTER_BACKENDS, _check_backend, _global_filter, clear_filter_caches

__all__ = [
    'GlobalFilter', 'GlobalFilter1d', 'GlobalFilter3d', 'FILTER_BACKENDS', 'clear_filter_caches', 'resample_filter',
    'set_filter_backend',
]

_FORMATS = {1: ('NLC', 'NCL'), 2: ('NHWC', 'NCHW'), 3: ('NDHWC', 'NCDHW')}  # (channels last, channels first)


def _sizes(value, rank: int, what: str, axes: str = '') -> Tuple[int, ...]:
    """`value` as `rank` positive whole numbers (one number: the same for every axis), or a ValueError naming `what`."""
    sizes = (value,) * rank if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(sizes) != rank or not all(isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) and s > 0
                                     for s in sizes):
        count = 'a positive whole number' if rank == 1 else f'{rank} positive whole numbers'
        raise ValueError(f'{what} takes {count}{axes}, got {value!r}.')
    return sizes


def _x(size: List[int]) -> str:
    return 'x'.join([str(s) for s in size])


def resample_filter(weight: torch.Tensor, grid_size: Sequence[int], mode: str = 'bicubic') -> torch.Tensor:
    """Resample a filter of shape (*spectrum, C, 2) to the spectrum of a `grid_size` grid (1, 2 or 3 axes).

    Real and imaginary parts are interpolated as channels with align_corners=True, as in the authors' fine-tuning
    (bicubic) and dense-prediction (bilinear) code. 'linear', 'bilinear' and 'trilinear' all mean the linear mode of
    the filter's rank; 'bicubic' is for 2-D filters. A grid of the same spectrum returns `weight` itself.
    """
    rank = weight.dim() - 2
    if rank not in _FORMATS or weight.shape[-1] != 2:
        raise ValueError(f'resample_filter takes a (*spectrum, C, 2) filter of 1 to 3 spatial axes, got shape '
                         f'{list(weight.shape)}.')
    size = _sizes(grid_size, rank, f'resample_filter grid_size (for a {rank}-D filter)')
    if mode not in ('linear', 'bilinear', 'trilinear') and (mode != 'bicubic' or rank != 2):
        raise ValueError(f"resample_filter cannot use mode={mode!r} for a {rank}-D filter: use 'linear'"
                         + (" or 'bicubic'." if rank == 2 else '.'))
    return _resample(weight, list(size), mode)


def _resample(weight: torch.Tensor, size: List[int], mode: str = 'linear') -> torch.Tensor:
    rank = weight.dim() - 2
    new_spec = size[:-1] + [size[-1] // 2 + 1]
    if list(weight.shape[:rank]) == new_spec:
        return weight
    if mode != 'bicubic':
        mode = 'linear' if rank == 1 else 'bilinear' if rank == 2 else 'trilinear'
    w = weight if weight.dtype == torch.float64 else weight.float()
    w = w.reshape(list(weight.shape[:rank]) + [-1]).movedim(-1, 0).unsqueeze(0)  # real, imag of each channel
    w = F.interpolate(w, size=new_spec, mode=mode, align_corners=True)
    # contiguous: it becomes a parameter that safetensors (save_for_hf) must be able to write
    return w[0].movedim(0, -1).reshape(new_spec + list(weight.shape[rank:])).to(weight.dtype).contiguous()


class _GlobalFilterNd(nn.Module):
    """The global filter over 1, 2 or 3 spatial axes; see GlobalFilter1d, GlobalFilter and GlobalFilter3d."""

    def __init__(self, dim: int, grid_size, fmt: str, dynamic_size: bool, filter_backend: str, device, dtype,
                 rank: int, size_arg: str):
        super().__init__()
        self.name = type(self).__name__
        formats = _FORMATS[rank]
        fmt = getattr(fmt, 'value', fmt)  # timm's Format enum or its string
        if fmt not in formats:
            raise ValueError(f'{self.name} takes fmt={formats[0]!r} or {formats[1]!r}, got {fmt!r}.')
        self.dim = _sizes(dim, 1, f'{self.name} dim')[0]
        self.fmt = fmt
        self.rank = rank
        self.channels_last = fmt == formats[0]
        self.axes = '(' + ', '.join(fmt[1:-1] if self.channels_last else fmt[2:]) + ')'  # '(H, W)'
        self.grid_size = _sizes(grid_size, rank, f'{self.name} {size_arg}', f' {self.axes}')
        self.dynamic_size = dynamic_size
        self.filter_backend = _check_backend(filter_backend)
        spectrum = self.grid_size[:-1] + (self.grid_size[-1] // 2 + 1,)
        # stored real with a trailing (real, imag) axis, the authors' layout: checkpoints load as they are
        self.complex_weight = nn.Parameter(torch.randn(*spectrum, self.dim, 2, device=device, dtype=dtype) * 0.02)

    def forward(self, x: torch.Tensor, spatial_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.channels_last and self.rank > 1 and x.dim() == 3:
            B, N, C = x.shape
            size = self._token_grid(N, spatial_size)
            return self._filter(x.reshape([B] + size + [C])).reshape(B, N, C)
        if x.dim() != self.rank + 2:
            layout = '(' + ', '.join(['B' if c == 'N' else c for c in self.fmt]) + ')'
            tokens = ' or (B, N, C)' if self.channels_last and self.rank > 1 else ''
            raise ValueError(f'{self.name} expects {layout}{tokens} input, got a tensor of shape {list(x.shape)}.')
        return self._filter(x)

    def _token_grid(self, n: int, spatial_size: Optional[List[int]]) -> List[int]:
        """The grid of `n` tokens: `spatial_size`, or a square / cube."""
        if spatial_size is None:
            side = int(round(n ** (1. / self.rank)))
            if side ** self.rank != n:
                raise ValueError(f'{self.name} got {n} tokens, which is not a {"square" if self.rank == 2 else "cube"} '
                                 f'grid: pass spatial_size={self.axes}.')
            return [side] * self.rank
        if not torch.jit.is_scripting():
            _sizes(spatial_size, self.rank, f'{self.name} spatial_size', f' {self.axes}')
        size = [s for s in spatial_size]
        count = 1
        for s in size:
            count *= s
        if len(size) != self.rank or count != n:
            raise ValueError(f'{self.name} got {n} tokens but spatial_size {_x(size)} holds {count}: pass the grid '
                             f'the tokens come from.')
        return size

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1] if self.channels_last else x.shape[1]
        if c != self.dim:
            raise ValueError(f'{self.name} has {self.dim} channels, got input with {c} '
                             f'({"channels last" if self.channels_last else "channels first"}).')
        if not x.is_floating_point():  # the result would be cast back to the input's dtype: truncated or all zeros
            raise ValueError(f'{self.name} needs a floating-point input, got {x.dtype}: convert it with x.float().')
        size = [s for s in (x.shape[1:-1] if self.channels_last else x.shape[2:])]
        if min(size) == 0:
            raise ValueError(f'{self.name} got an empty {_x(size)} token grid: the input is smaller than one patch.')
        weight = self.complex_weight
        if size != list(self.grid_size):
            if not self.dynamic_size:
                raise ValueError(f'{self.name} was built for a {_x(list(self.grid_size))} token grid and got '
                                 f'{_x(size)}: create the layer with dynamic_size=True to resample its filter to other '
                                 f'sizes.')
            # resampled on every call, from the weights as they are now: no cache to go stale
            weight = _resample(weight, size)
        return _global_filter(x, weight, self.filter_backend, self.channels_last)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, grid_size={self.grid_size}, fmt={self.fmt!r}, dynamic_size={self.dynamic_size}, '
                f'filter_backend={self.filter_backend!r}')


@register_notrace_module  # shape checks and size-dependent resampling are not symbolically traceable
class GlobalFilter(_GlobalFilterNd):
    """2-D global filter token mixer: the paper's plug-and-play layer, for token grids and CNN feature maps.

    Takes a (B, H, W, C) grid or (B, N, C) tokens with `spatial_size=(H, W)` (a square grid is assumed when it is
    omitted) with fmt='NHWC', or (B, C, H, W) maps with fmt='NCHW'.

    Args:
        dim: Channels C.
        grid_size: Grid (H, W) the filter is learned for (default 14x14). Other grids are refused, unless
        dynamic_size: Other grids use the filter resampled bilinearly from the current weights on each call.
        fmt: 'NHWC' (grids and tokens, channels last) or 'NCHW' (feature maps, channels first).
        filter_backend: 'auto' (a fixed rule: matmul when compiled, exported, traced or scripted, and for bf16 / fp16
            on a CPU with matrix units for them; fft otherwise), 'fft' (the authors' float32 FFTs) or 'matmul' (real
            DFT matrices: exports to ONNX, runs in the input's or autocast's dtype). Same parameters, same result
            to the dtype's rounding.
        h, w: The filter's spectrum size, as in the authors' `GlobalFilter(dim, h=14, w=8)`: the grid is
            (h, 2 * (w - 1)). Instead of grid_size.
    """

    def __init__(
            self,
            dim: int,
            grid_size: Optional[Union[int, Tuple[int, int]]] = None,
            *,
            fmt: str = 'NHWC',
            dynamic_size: bool = False,
            filter_backend: str = 'auto',
            h: Optional[int] = None,
            w: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        if h is not None or w is not None:
            if grid_size is not None:
                raise ValueError('GlobalFilter takes grid_size=(H, W) or the spectrum size h=, w=, not both.')
            h = _sizes(14 if h is None else h, 1, 'GlobalFilter h')[0]
            w = 8 if w is None else w
            if _sizes(w, 1, 'GlobalFilter w')[0] < 2:
                raise ValueError(f'GlobalFilter w (the spectrum width of a grid 2 * (w - 1) wide) takes at least 2, '
                                 f'got w={w}: pass grid_size=(H, W) for other grids.')
            grid_size = (h, 2 * (w - 1))  # the even grid whose real FFT is h x w, as in the authors' models
        super().__init__(dim, 14 if grid_size is None else grid_size, fmt, dynamic_size, filter_backend, device, dtype,
                         rank=2, size_arg='grid_size')


@register_notrace_module
class GlobalFilter1d(_GlobalFilterNd):
    """1-D global filter for sequences: (B, L, C) with fmt='NLC' or (B, C, L) with fmt='NCL'.

    `complex_weight` has shape (length // 2 + 1, dim, 2). Other lengths need `dynamic_size=True` (the filter is
    linearly resampled). Backends as for GlobalFilter.
    """

    def __init__(
            self,
            dim: int,
            length: int,
            *,
            fmt: str = 'NLC',
            dynamic_size: bool = False,
            filter_backend: str = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__(dim, length, fmt, dynamic_size, filter_backend, device, dtype, rank=1, size_arg='length')


@register_notrace_module
class GlobalFilter3d(_GlobalFilterNd):
    """3-D global filter for volumes: (B, D, H, W, C) with fmt='NDHWC' (or (B, N, C) tokens with
    `spatial_size=(D, H, W)`), or (B, C, D, H, W) with fmt='NCDHW'.

    `complex_weight` has shape (D, H, W // 2 + 1, dim, 2) (`rfftn` over the three axes). Other sizes need
    `dynamic_size=True` (trilinear resampling of the filter). Backends as for GlobalFilter.
    """

    def __init__(
            self,
            dim: int,
            size: Union[int, Tuple[int, int, int]],
            *,
            fmt: str = 'NDHWC',
            dynamic_size: bool = False,
            filter_backend: str = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__(dim, size, fmt, dynamic_size, filter_backend, device, dtype, rank=3, size_arg='size')


def set_filter_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every global filter (1-D, 2-D, 3-D) of `model` to `backend` (one of FILTER_BACKENDS); returns it."""
    backend = _check_backend(backend)
    for m in model.modules():
        if isinstance(m, _GlobalFilterNd):
            m.filter_backend = backend
    return model

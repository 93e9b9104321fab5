""" Global filter layers of GFNet: 1-D, 2-D and 3-D, any layout

`Global Filter Networks for Image Classification` - https://arxiv.org/abs/2107.00645

A global filter mixes tokens with a real FFT over the spatial axes (norm='ortho', the last axis halved), an
element-wise product with a learned complex filter, and the inverse FFT: a depth-wise global circular convolution in
O(N log N). One N-d implementation serves sequences (`GlobalFilter1d`), images / token grids (`GlobalFilter`) and
volumes (`GlobalFilter3d`), channels-last or channels-first, so the layer drops into a transformer or a CNN as is.
The learned parameter is `complex_weight` of shape `(*spectrum, dim, 2)`, the authors' layout.

How it is computed (`fft` or `matmul`, and the `auto` rule) is `filter_backends.py`; the DFT-as-matmul math is
`dft.py`. A layer holds nothing but its weights: a filter for another size is resampled from them on each call.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .dft import _dft_matrices_nd, clear_dft_cache, dft_filter
from .filter_backends import FILTER_BACKENDS, check_backend, global_filter, global_filter_fft

__all__ = [
    'GlobalFilter', 'GlobalFilter1d', 'GlobalFilter3d', 'FILTER_BACKENDS', 'resample_filter', 'filter_spectrum_size',
    'set_filter_backend', 'clear_filter_caches',
]


def filter_spectrum_size(grid_size: Sequence[int]) -> Tuple[int, ...]:
    """(..., w // 2 + 1): the size of the real FFT of a grid (last axis halved), i.e. of the filter for that grid."""
    return (*grid_size[:-1], grid_size[-1] // 2 + 1)


def resample_filter(
        weight: torch.Tensor,
        grid_size: Sequence[int],
        mode: str = 'bicubic',
) -> torch.Tensor:
    """Resample a filter of shape (*spectrum, C, 2) to the spectrum of a `grid_size` grid (1, 2 or 3 axes).

    Real and imaginary parts are interpolated as channels with align_corners=True, as in the authors' fine-tuning
    (bicubic) and dense-prediction (bilinear) code. 'linear', 'bilinear' and 'trilinear' all mean the linear mode of
    the filter's rank; 'bicubic' is for 2-D filters. The same size returns `weight` itself.
    """
    rank = weight.dim() - 2
    if len(grid_size) != rank:
        raise ValueError(f'resample_filter got a {rank}-D filter and the {len(grid_size)}-D grid_size '
                         f'{tuple(grid_size)}: pass {rank} sizes.')
    if mode not in ('linear', 'bilinear', 'trilinear') and (mode != 'bicubic' or rank != 2):
        raise ValueError(f"resample_filter cannot use mode={mode!r} for a {rank}-D filter: use 'linear'"
                         + (" or 'bicubic'." if rank == 2 else '.'))
    return _resample(weight, [int(s) for s in grid_size], mode)


def _spectrum(size: List[int]) -> List[int]:
    return size[:-1] + [size[-1] // 2 + 1]


def _resample(weight: torch.Tensor, size: List[int], mode: str = 'linear') -> torch.Tensor:
    rank = weight.dim() - 2
    spec = [int(s) for s in weight.shape[:rank]]
    new_spec = _spectrum(size)
    if spec == new_spec:
        return weight
    if mode != 'bicubic':
        mode = 'linear' if rank == 1 else 'bilinear' if rank == 2 else 'trilinear'
    c = weight.shape[-2]
    w = weight.float().reshape([1] + spec + [c * 2]).movedim(-1, 1)
    w = F.interpolate(w, size=new_spec, mode=mode, align_corners=True)
    return w.movedim(1, -1).reshape(new_spec + [c, 2]).to(weight.dtype)


_AXES = {1: '(L,)', 2: '(H, W)', 3: '(D, H, W)'}


def _as_size(size: Union[int, Sequence[int]], rank: int, what: str) -> Tuple[int, ...]:
    """`size` as `rank` positive whole numbers, or a ValueError that says what the argument takes."""
    whole = isinstance(size, int) and not isinstance(size, bool)
    sizes = (size,) * rank if whole else tuple(size) if isinstance(size, (tuple, list, torch.Size)) else ()
    if len(sizes) != rank or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f'{what} takes {rank} positive whole number{"s" if rank > 1 else ""} {_AXES[rank]}, '
                         f'got {size!r}.')
    return sizes


def _x(size: List[int]) -> str:
    return 'x'.join([str(s) for s in size])


class _GlobalFilterNd(nn.Module):
    """The global filter over 1, 2 or 3 spatial axes; see GlobalFilter1d, GlobalFilter and GlobalFilter3d."""
    rank: int = 2
    formats: Tuple[str, str] = ('NHWC', 'NCHW')  # (channels last, channels first)
    layout_names: Tuple[str, str] = ('(B, H, W, C)', '(B, C, H, W)')
    name: str = 'GlobalFilter'

    def __init__(
            self,
            dim: int,
            grid_size: Union[int, Sequence[int]],
            fmt: str = '',
            dynamic_size: bool = False,
            filter_backend: str = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__()
        fmt = getattr(fmt, 'value', fmt) or self.formats[0]  # timm's Format enum or its string
        if fmt not in self.formats:
            raise ValueError(f'{self.name} takes fmt={self.formats[0]!r} or {self.formats[1]!r}, got {fmt!r}.')
        # class constants as instance attributes: TorchScript reads a module's attributes from the instance
        self.rank = type(self).rank
        self.name = type(self).name
        self.layout_names = type(self).layout_names
        self.dim = dim
        self.fmt = fmt
        self.channels_last = fmt == self.formats[0]
        self.grid_size = _as_size(grid_size, self.rank, f'{self.name} grid_size')
        self.dynamic_size = dynamic_size
        self.filter_backend = check_backend(filter_backend)
        spectrum = filter_spectrum_size(self.grid_size)
        # stored real with a trailing (real, imag) axis, the authors' layout: checkpoints load as they are
        self.complex_weight = nn.Parameter(torch.randn(*spectrum, dim, 2, device=device, dtype=dtype) * 0.02)

    def forward(self, x: torch.Tensor, spatial_size: Optional[List[int]] = None) -> torch.Tensor:
        rank = self.rank
        if self.channels_last and rank > 1 and x.dim() == 3:
            return self._tokens(x, spatial_size)
        if x.dim() != rank + 2:
            layouts = self.layout_names[0] + ' or (B, N, C)' if self.channels_last and rank > 1 \
                else self.layout_names[0 if self.channels_last else 1]
            raise ValueError(f'{self.name} expects {layouts} input, got a tensor of shape {list(x.shape)}.')
        return self._filter(x)

    def _tokens(self, x: torch.Tensor, spatial_size: Optional[List[int]]) -> torch.Tensor:
        B, N, C = x.shape
        rank = self.rank
        if spatial_size is None:
            side = int(round(N ** (1. / rank)))
            n = 1
            for _ in range(rank):
                n *= side
            if n != N:
                what = 'square' if rank == 2 else 'cube'
                sizes = '(H, W)' if rank == 2 else '(D, H, W)'
                raise ValueError(
                    f'{self.name} got {N} tokens, which is not a {what} grid: pass spatial_size={sizes}.')
            size = [side] * rank
        else:
            size = [s for s in spatial_size]
            ok = len(size) == rank
            n = 1
            for s in size:
                ok = ok and s > 0
                n *= s
            if not ok:
                axes = '(H, W)' if rank == 2 else '(D, H, W)'  # tokens are 2-D or 3-D grids
                raise ValueError(f'{self.name} takes spatial_size={axes}: {rank} positive sizes, got {spatial_size}.')
            if n != N:
                raise ValueError(f'{self.name} got {N} tokens but spatial_size {_x(size)} holds {n}: pass the grid '
                                 f'the tokens come from.')
        return self._filter(x.reshape([B] + size + [C])).reshape(B, N, C)

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        c_axis = -1 if self.channels_last else 1
        if x.shape[c_axis] != self.dim:
            raise ValueError(f'{self.name} has {self.dim} channels, got input with {x.shape[c_axis]} '
                             f'({"channels last" if self.channels_last else "channels first"}).')
        if not x.is_floating_point():
            # the result would be cast back to the input's dtype: truncated or all zeros
            raise ValueError(f'{self.name} needs a floating-point input, got {x.dtype}: convert it with x.float().')
        size = [s for s in (x.shape[1:-1] if self.channels_last else x.shape[2:])]
        if min(size) == 0:
            raise ValueError(
                f'{self.name} got an empty {_x(size)} token grid: the input is smaller than one patch.')
        weight = self._filter_for_size(size)
        if torch.jit.is_scripting():
            # TorchScript is a traced context for the fixed rule: matmul unless fft is asked for
            if self.filter_backend == 'fft':
                return global_filter_fft(x, weight, self.channels_last)
            return dft_filter(x, weight, _dft_matrices_nd(size, x.device, x.dtype, False), self.channels_last)
        return global_filter(x, weight, self.filter_backend, self.channels_last)

    @torch.jit.unused
    def filter_for(self, *size: Union[int, Sequence[int]]) -> torch.Tensor:
        """The (*spectrum, C, 2) filter for a grid of `size` (e.g. `filter_for(H, W)` or `filter_for((H, W))`)."""
        if len(size) == 1 and not isinstance(size[0], int):
            size = tuple(size[0])
        return self._filter_for_size([int(s) for s in size])

    def _filter_for_size(self, size: List[int]) -> torch.Tensor:
        weight = self.complex_weight
        spectrum = _spectrum(size)
        if list(weight.shape[:self.rank]) == spectrum:
            return weight
        if not self.dynamic_size:
            raise ValueError(f'{self.name} was built for a {_x(list(self.grid_size))} token grid and got '
                             f'{_x(size)}: create the layer with dynamic_size=True to resample its filter to other '
                             f'sizes.')
        # resampled on every call, from the weights as they are now: no cache to go stale (a cache bought no
        # measurable time: benchmarks/results/README.md)
        return _resample(weight, size)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, grid_size={self.grid_size}, fmt={self.fmt!r}, dynamic_size={self.dynamic_size}, '
                f'filter_backend={self.filter_backend!r}')


@register_notrace_module  # shape checks and size-dependent resampling are not symbolically traceable
class GlobalFilter(_GlobalFilterNd):
    """2-D global filter token mixer: the paper's plug-and-play layer, for token grids and CNN feature maps.

    Takes a (B, H, W, C) grid or (B, N, C) tokens with `spatial_size=(H, W)` (a square grid is assumed when it is
    omitted and N is a perfect square) with fmt='NHWC', or (B, C, H, W) maps with fmt='NCHW'. The filter is
    learned for `grid_size`; with `dynamic_size=True` other sizes use a bilinearly resampled filter (resampled on
    each call from the current weights).

    Args:
        dim: Channels C.
        grid_size: Grid (H, W) the filter is learned for.
        fmt: 'NHWC' (grids and tokens, channels last) or 'NCHW' (feature maps, channels first).
        dynamic_size: Accept other grid sizes by resampling the filter on the fly.
        filter_backend: 'auto' (a fixed rule: matmul when compiled, exported, traced or scripted, and under bf16
            autocast on a CPU with bf16 matrix units; fft otherwise), 'fft' (the authors' float32 FFTs) or 'matmul'
            (real DFT matrices: exports to ONNX, runs in the autocast dtype). Results agree to float32 rounding; the
            parameters are the same.
        h, w: The filter's spectrum size, as in the authors' `GlobalFilter(dim, h=14, w=8)`: the grid is
            (h, 2 * (w - 1)). Instead of grid_size.
    """
    rank = 2
    formats = ('NHWC', 'NCHW')
    layout_names = ('(B, H, W, C)', '(B, C, H, W)')
    name = 'GlobalFilter'

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
            h = 14 if h is None else h
            w = 8 if w is None else w
            grid_size = (h, 2 * (w - 1))  # the even grid whose real FFT is h x w, as in the authors' models
        super().__init__(dim, 14 if grid_size is None else grid_size, fmt, dynamic_size, filter_backend,
                         device, dtype)


@register_notrace_module
class GlobalFilter1d(_GlobalFilterNd):
    """1-D global filter for sequences: (B, L, C) with fmt='NLC' or (B, C, L) with fmt='NCL'.

    `complex_weight` has shape (length // 2 + 1, dim, 2). Other lengths need `dynamic_size=True` (the filter is
    linearly resampled). Backends as for GlobalFilter.
    """
    rank = 1
    formats = ('NLC', 'NCL')
    layout_names = ('(B, L, C)', '(B, C, L)')
    name = 'GlobalFilter1d'

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
        super().__init__(dim, (length,) if isinstance(length, int) else length, fmt, dynamic_size, filter_backend,
                         device, dtype)


@register_notrace_module
class GlobalFilter3d(_GlobalFilterNd):
    """3-D global filter for volumes: (B, D, H, W, C) with fmt='NDHWC' (or (B, N, C) tokens with
    `spatial_size=(D, H, W)`), or (B, C, D, H, W) with fmt='NCDHW'.

    `complex_weight` has shape (D, H, W // 2 + 1, dim, 2) (`rfftn` over the three axes). Other sizes need
    `dynamic_size=True` (trilinear resampling of the filter). Backends as for GlobalFilter.
    """
    rank = 3
    formats = ('NDHWC', 'NCDHW')
    layout_names = ('(B, D, H, W, C)', '(B, C, D, H, W)')
    name = 'GlobalFilter3d'

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
        super().__init__(dim, size, fmt, dynamic_size, filter_backend, device, dtype)


def set_filter_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every global filter (1-D, 2-D, 3-D) of `model` to `backend` (one of FILTER_BACKENDS); returns it."""
    backend = check_backend(backend)
    for m in model.modules():
        if isinstance(m, _GlobalFilterNd):
            m.filter_backend = backend
    return model


def clear_filter_caches() -> None:
    """Clear the module-level cache of DFT matrices (derived from grid sizes only, never from weights). Layers keep
    nothing: a resampled filter is made from the current weights on each call."""
    clear_dft_cache()

""" Global filter layer of GFNet

`Global Filter Networks for Image Classification` - https://arxiv.org/abs/2107.00645

A global filter mixes tokens with a 2-D FFT of the token grid, an element-wise product with a learned
complex filter, and an inverse FFT: a depth-wise global circular convolution in O(N log N).

Two interchangeable backends compute it:
* `fft`: the authors' formulation (float32 `rfft2` with norm='ortho', complex product, `irfft2`), the reference.
* `matmul`: the same transform as real DFT matrices applied along each spatial axis (four small matmuls and a
  real-valued complex product). No complex tensors in the graph, so it exports to ONNX / TensorRT, fuses under
  torch.compile, runs in the autocast dtype, and beats FFT libraries at GFNet's small grids.
`auto` (the default) measures both per device, dtype, batch and grid size the first time a shape is seen in eager
mode (as cudnn.benchmark does) and picks `matmul` when tracing, compiling or exporting.
"""
import math
import time
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, to_2tuple

__all__ = [
    'GlobalFilter', 'FILTER_BACKENDS', 'global_filter', 'global_filter_fft', 'global_filter_matmul', 'dft_matrices',
    'resample_filter', 'filter_spectrum_size', 'set_filter_backend', 'auto_backend_choices',
]

FILTER_BACKENDS = ('auto', 'fft', 'matmul')


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


def dft_matrices(
        H: int,
        W: int,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
        exact: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real matrices of the ortho-normalised 2-D real DFT of an H x W grid and of its inverse.

    Returns (fw, fh, ih, iw), with Wf = W // 2 + 1:
        fw (2 Wf, W): real DFT along W, the real parts of the Wf bins stacked over their imaginary parts.
        fh (2 H, 2 H): complex DFT along H as a real matrix, rows and columns interleaved (h, real/imag).
        ih (2 H, 2 H): its inverse.
        iw (W, 2 Wf): the c2r inverse along W as irfft computes it: imaginary parts of the DC and Nyquist
            bins are ignored, every other bin counts twice (for itself and its conjugate mirror).
    `exact` computes the angles in float64 (eager cache); traced graphs use float32 ops that every runtime has.
    """
    work = torch.float64 if exact else torch.float32
    wf = W // 2 + 1
    k = torch.arange(wf, device=device)
    n = torch.arange(W, device=device)
    # angles from exact integer products reduced mod W: no precision lost to large k * n at big grids
    # (the modulus as a tensor: exporters take a symbolic grid size there, not as a Python scalar)
    ang_w = torch.remainder(k[:, None] * n[None, :], torch.full_like(n[:1], W)).to(work) * (2 * math.pi / W)
    real_bin = ((k == 0) | (2 * k == W))[:, None]
    cos_w = torch.cos(ang_w)
    sin_w = torch.where(real_bin, torch.zeros_like(ang_w), torch.sin(ang_w))  # exact zeros, not sin(pi)
    fw = torch.cat([cos_w, -sin_w], 0) * (1. / math.sqrt(W))
    mult = 2. - real_bin.to(work)
    iw = (fw * torch.cat([mult, mult], 0)).t()

    h = torch.arange(H, device=device)
    ang_h = torch.remainder(h[:, None] * h[None, :], torch.full_like(h[:1], H)).to(work) * (2 * math.pi / H)
    c = torch.cos(ang_h) * (1. / math.sqrt(H))
    s = torch.sin(ang_h) * (1. / math.sqrt(H))
    # exp(-i a) (xr + i xi) = (c xr + s xi) + i (c xi - s xr); the inverse uses exp(+i a)
    fh = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], 1).reshape(2 * H, 2 * H)
    ih = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1).reshape(2 * H, 2 * H)
    return fw.to(dtype), fh.to(dtype), ih.to(dtype), iw.contiguous().to(dtype)


def _dft_filter(
        x: torch.Tensor,
        weight: torch.Tensor,
        fw: torch.Tensor,
        fh: torch.Tensor,
        ih: torch.Tensor,
        iw: torch.Tensor,
        inplace_product: bool = False,
) -> torch.Tensor:
    """The global filter of a (B, H, W, C) grid with the matrices of `dft_matrices`, computed in their dtype."""
    B, H, W, C = x.shape
    wf = W // 2 + 1
    dtype = fw.dtype
    # channels stay last throughout: each step contracts a middle axis, so no transposes are needed
    z = torch.matmul(fw, x.to(dtype).reshape(B * H, W, C))
    z = torch.matmul(fh, z.reshape(B, 2 * H, wf * C)).reshape(B, H, 2, wf, C)
    w = weight.to(dtype)
    wr, wi = w[..., 0], w[..., 1]
    zr, zi = z[:, :, 0], z[:, :, 1]
    if inplace_product:
        # inference in eager mode: four passes over the spectrum into one buffer instead of six and a stack
        y = torch.empty_like(z)
        yr, yi = y[:, :, 0], y[:, :, 1]
        torch.mul(zr, wr, out=yr)
        yr.addcmul_(zi, wi, value=-1.)
        torch.mul(zr, wi, out=yi)
        yi.addcmul_(zi, wr)
    else:
        y = torch.stack((zr * wr - zi * wi, zr * wi + zi * wr), 2)
    y = torch.matmul(ih, y.reshape(B, 2 * H, wf * C))
    y = torch.matmul(iw, y.reshape(B * H, 2 * wf, C))
    return y.reshape(B, H, W, C).to(x.dtype)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _is_traced() -> bool:
    """Inside torch.compile / torch.export / ONNX export / jit tracing, where nothing can be measured or cached."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


_DFT_CACHE: 'OrderedDict[Tuple[int, int, str, torch.dtype], Tuple[torch.Tensor, ...]]' = OrderedDict()
_DFT_CACHE_SIZE = 64


def _matrices(H: int, W: int, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    if _is_traced():
        # built in the graph from the (possibly symbolic) grid size: constants a compiler folds, never weights
        return dft_matrices(H, W, device, dtype, exact=False)
    key = (H, W, str(device), dtype)
    mats = _DFT_CACHE.get(key)
    if mats is None:
        # normal tensors even when first asked for under inference_mode: training may reuse them later
        with torch.inference_mode(False):
            mats = tuple(m.to(device) for m in dft_matrices(H, W, None, dtype))  # float64 angles on the CPU
        _DFT_CACHE[key] = mats
        while len(_DFT_CACHE) > _DFT_CACHE_SIZE:
            _DFT_CACHE.popitem(last=False)
    return mats


def global_filter_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The global filter as real DFT matrix products, no complex tensors: the same result as `global_filter_fft`.

    Runs in the input's dtype, or in the autocast dtype when autocast is on (matmuls accumulate in float32);
    the output has the input's dtype, as in the reference.
    """
    H, W = x.shape[1], x.shape[2]
    autocast_dtype = _autocast_dtype(x.device.type)
    dtype = autocast_dtype if autocast_dtype is not None and x.dtype == torch.float32 else x.dtype
    fw, fh, ih, iw = _matrices(H, W, x.device, dtype)
    inplace = not (_is_traced() or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))
    if autocast_dtype is None:
        return _dft_filter(x, weight, fw, fh, ih, iw, inplace)
    # the dtype is chosen above: autocast must not re-cast the DFT matrices on every call
    with torch.autocast(x.device.type, enabled=False):
        return _dft_filter(x, weight, fw, fh, ih, iw, inplace)


# resampled filters above this many elements (1 MiB in float32) are not cached
_FILTER_CACHE_MAX_NUMEL = 1 << 18

_BACKEND_FNS = {'fft': global_filter_fft, 'matmul': global_filter_matmul}
# LRU of what `auto` measured: enough for multi-scale training and detection, bounded for any number of sizes
_AUTO_CACHE: 'OrderedDict[tuple, str]' = OrderedDict()
_AUTO_CACHE_SIZE = 256
# matmul replaces the reference only when measurably faster: a tie keeps the authors' numerics
_AUTO_MARGIN = 0.95


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def _measure(x: torch.Tensor, weight: torch.Tensor, repeats: int = 5, min_sample_s: float = 2e-3) -> str:
    x, weight = x.detach(), weight.detach()
    for fn in _BACKEND_FNS.values():
        fn(x, weight)  # warm-up: DFT matrices, FFT plans, allocator
    _sync(x.device)
    t = time.perf_counter()
    global_filter_fft(x, weight)
    _sync(x.device)
    # small grids take microseconds: enough calls per sample that timer and scheduler noise do not decide
    calls = max(1, math.ceil(min_sample_s / max(time.perf_counter() - t, 1e-7)))
    times: Dict[str, float] = {}
    for _ in range(repeats):  # interleaved, best of: robust to a busy machine
        for name, fn in _BACKEND_FNS.items():
            _sync(x.device)
            t = time.perf_counter()
            for _ in range(calls):
                fn(x, weight)
            _sync(x.device)
            times[name] = min(times.get(name, math.inf), time.perf_counter() - t)
    return 'matmul' if times['matmul'] < _AUTO_MARGIN * times['fft'] else 'fft'


def _auto_backend(x: torch.Tensor, weight: torch.Tensor) -> str:
    if _is_traced() or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        # real-valued ops only: what exports, and what inductor fuses (it has no codegen for complex ops)
        return 'matmul'
    B, H, W, C = x.shape
    key = (str(x.device), x.dtype, _autocast_dtype(x.device.type), 1 << max(B - 1, 0).bit_length(), H, W, C)
    choice = _AUTO_CACHE.get(key)
    if choice is None:
        choice = _AUTO_CACHE[key] = _measure(x, weight)
        while len(_AUTO_CACHE) > _AUTO_CACHE_SIZE:
            _AUTO_CACHE.popitem(last=False)
    else:
        _AUTO_CACHE.move_to_end(key)
    return choice


def auto_backend_choices() -> Dict[tuple, str]:
    """What `auto` picked so far: {(device, dtype, autocast dtype, batch bucket, H, W, C): backend}."""
    return dict(_AUTO_CACHE)


@torch.jit.unused
def global_filter(x: torch.Tensor, weight: torch.Tensor, backend: str = 'auto') -> torch.Tensor:
    """Filter a (B, H, W, C) grid with a (H, W // 2 + 1, C, 2) filter using `backend` ('auto', 'fft', 'matmul')."""
    if x.numel() == 0 and not _is_traced():
        return torch.zeros_like(x)  # an empty batch: FFT libraries refuse it, torch layers return empty
    if backend == 'auto':
        backend = _auto_backend(x, weight)
    fn = _BACKEND_FNS.get(backend)
    if fn is None:
        raise ValueError(f'Unknown filter backend {backend!r}: use one of {", ".join(FILTER_BACKENDS)}.')
    return fn(x, weight)


def _check_backend(backend: str) -> str:
    if backend not in FILTER_BACKENDS:
        raise ValueError(f'Unknown filter_backend {backend!r}: use one of {", ".join(FILTER_BACKENDS)}.')
    return backend


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
        filter_backend: 'fft' (the authors' float32 FFTs), 'matmul' (real DFT matrices: exports to ONNX, runs in
            the autocast dtype) or 'auto' (measured per device, dtype and grid size; matmul when compiled or
            exported). Results agree to float32 rounding; the parameters are the same.
    """

    def __init__(
            self,
            dim: int,
            grid_size: Union[int, Tuple[int, int]] = 14,
            dynamic_size: bool = False,
            cache_size: int = 8,
            filter_backend: str = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.dim = dim
        self.grid_size = to_2tuple(grid_size)
        self.dynamic_size = dynamic_size
        self.cache_size = cache_size
        self.filter_backend = _check_backend(filter_backend)
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
        if not x.is_floating_point():
            # the result would be cast back to the input's dtype: truncated or all zeros
            raise ValueError(f'GlobalFilter needs a floating-point input, got {x.dtype}: convert it with x.float().')
        H, W = x.shape[1], x.shape[2]
        if H == 0 or W == 0:
            raise ValueError(f'GlobalFilter got an empty {H}x{W} token grid: the input is smaller than one patch.')
        weight = self.filter_for(H, W)
        if torch.jit.is_scripting():
            # TorchScript cannot measure: the reference unless matmul is asked for
            if self.filter_backend == 'matmul':
                fw, fh, ih, iw = dft_matrices(H, W, x.device, x.dtype, False)
                return _dft_filter(x, weight, fw, fh, ih, iw)
            return global_filter_fft(x, weight)
        return global_filter(x, weight, self.filter_backend)

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
        h, wf = filter_spectrum_size((H, W))
        # training and compiled graphs need the filter in the autograd graph / traced: no cache there. Large
        # filters are resampled on every call: cached, each layer would hold an activation-sized tensor to save
        # well under 1% of its time (0.1-0.4% of a gfnet_s block at 512-2048 px, measured on CPU)
        if (torch.is_grad_enabled() and weight.requires_grad) or _is_traced() \
                or h * wf * weight.shape[2] * 2 > _FILTER_CACHE_MAX_NUMEL:
            return resample_filter(weight, (H, W), mode='bilinear')
        key = (H, W, weight._version, str(weight.device), str(weight.dtype))
        cached = self._cache.get(key)
        if cached is None:
            with torch.inference_mode(False):  # usable outside inference_mode too (e.g. a frozen filter)
                cached = resample_filter(weight.detach(), (H, W), mode='bilinear')
            self._cache[key] = cached
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, grid_size={self.grid_size}, dynamic_size={self.dynamic_size}, '
                f'filter_backend={self.filter_backend!r}')


def set_filter_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every GlobalFilter of `model` to `backend` ('auto', 'fft' or 'matmul'); returns the model."""
    backend = _check_backend(backend)
    for m in model.modules():
        if isinstance(m, GlobalFilter):
            m.filter_backend = backend
    return model

""" Global filter layers of GFNet: 1-D, 2-D and 3-D, any layout

`Global Filter Networks for Image Classification` - https://arxiv.org/abs/2107.00645

A global filter mixes tokens with a real FFT over the spatial axes (norm='ortho', the last axis halved), an
element-wise product with a learned complex filter, and the inverse FFT: a depth-wise global circular convolution in
O(N log N). One N-d implementation serves sequences (`GlobalFilter1d`), images / token grids (`GlobalFilter`) and
volumes (`GlobalFilter3d`), channels-last or channels-first, so the layer drops into a transformer or a CNN as is.
The learned parameter is `complex_weight` of shape `(*spectrum, dim, 2)`, the authors' layout.

Two interchangeable backends compute it:
* `fft`: the authors' formulation (float32 `rfftn` with norm='ortho', complex product, `irfftn`), the reference.
* `matmul`: the same transform as real DFT matrices applied along each spatial axis (a real DFT along the last
  axis, complex DFTs along the others, a real-valued complex product). No complex tensors in the graph: it exports
  to ONNX / TensorRT, fuses under torch.compile (inductor has no codegen for complex ops) and runs in the autocast
  dtype.

`auto` (the default) is a fixed rule, no timing: `matmul` inside torch.compile, torch.export, ONNX export, jit
tracing and TorchScript (the graph must hold real ops only), `fft` everywhere else, eager autocast included:
* eager float32: on the CPU measured for this project the two are within noise of each other over all seven
  variants (benchmarks/results/cpu_backends.txt, 0.89x-1.16x), so the authors' numerics win the tie;
* eager autocast: the float32 FFT is the more accurate of the two for every variant (bf16 logit error 3.7-4.9e-3
  against 4.7-7.0e-3 for matmul, fp16 4.5-5.8e-4 against 6.5-9.0e-4; benchmarks/results/cpu_autocast_agreement.txt)
  and no faster backend was measured: on a CPU without bf16 units the linear layers dominate (ours / reference
  0.98x, benchmarks/results/cpu_compile_amp_first_run.txt). Casting to float32 also keeps cuFFT's half-precision
  restriction to power-of-two sizes away.
`benchmark` is the opt-in timing selection (as cudnn.benchmark): both backends are timed the first time a (device,
dtype, autocast, batch, layout, size) shape is seen in eager mode and the faster kept (matmul only when at least 5%
faster); `benchmark_choices()` shows the picks.
"""
import math
import threading
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .flops import register_fft_flop_formulas

__all__ = [
    'GlobalFilter', 'GlobalFilter1d', 'GlobalFilter3d', 'FILTER_BACKENDS', 'global_filter', 'global_filter_fft',
    'global_filter_matmul', 'dft_matrices', 'resample_filter', 'filter_spectrum_size', 'set_filter_backend',
    'clear_filter_caches', 'benchmark_choices',
]

FILTER_BACKENDS = ('auto', 'fft', 'matmul', 'benchmark')

# FlopCounterMode counts the FFTs once the package is imported (timm's plugin autoload imports it)
register_fft_flop_formulas()


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


def _spatial_dims(rank: int, channels_last: bool) -> List[int]:
    return list(range(1, rank + 1)) if channels_last else list(range(2, rank + 2))


def global_filter_fft(x: torch.Tensor, weight: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """The authors' formulation: float32 `rfftn` (ortho) over the spatial axes, complex product, `irfftn`.

    `x` is (B, *S, C) (channels_last) or (B, C, *S); `weight` is (*spectrum, C, 2). The output has x's dtype.
    """
    rank = weight.dim() - 2
    dims = _spatial_dims(rank, channels_last)
    size = [x.shape[d] for d in dims]
    y = torch.fft.rfftn(x.float(), dim=dims, norm='ortho')
    w = torch.view_as_complex(weight.float().contiguous())
    if not channels_last:
        w = w.movedim(-1, 0)  # (C, *spectrum): broadcasts against (B, C, *spectrum), no copy of x
    y = y * w
    y = torch.fft.irfftn(y, s=size, dim=dims, norm='ortho')
    return y.to(x.dtype)


def _real_dft(W: int, device: Optional[torch.device], work: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fw, iw): ortho real DFT of W points, real parts of the W // 2 + 1 bins stacked over their imaginary parts,
    and the c2r inverse as irfft computes it (imaginary DC / Nyquist ignored, other bins counted twice)."""
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
    return fw, iw


def _complex_dft(H: int, device: Optional[torch.device], work: torch.dtype) -> List[torch.Tensor]:
    """[fh, ih, cs]: ortho complex DFT of H points as real matrices. fh / ih (2H, 2H) act on rows interleaved as
    (h, real/imag); cs (2H, H) stacks the cos and sin parts for an axis whose real/imag pair is not adjacent."""
    h = torch.arange(H, device=device)
    ang_h = torch.remainder(h[:, None] * h[None, :], torch.full_like(h[:1], H)).to(work) * (2 * math.pi / H)
    c = torch.cos(ang_h) * (1. / math.sqrt(H))
    s = torch.sin(ang_h) * (1. / math.sqrt(H))
    # exp(-i a) (xr + i xi) = (c xr + s xi) + i (c xi - s xr); the inverse uses exp(+i a)
    fh = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], 1).reshape(2 * H, 2 * H)
    ih = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1).reshape(2 * H, 2 * H)
    return [fh, ih, torch.cat([c, s], 0)]


def _dft_matrices_nd(
        size: List[int],
        device: Optional[torch.device],
        dtype: torch.dtype,
        exact: bool = True,
) -> List[torch.Tensor]:
    """[fw, iw] for the last axis, then [fh, ih, cs] for each other axis, first to last."""
    work = torch.float64 if exact else torch.float32
    fw, iw = _real_dft(size[-1], device, work)
    mats = [fw, iw.contiguous()]
    for n in size[:-1]:
        mats += _complex_dft(n, device, work)
    return [m.to(dtype) for m in mats]


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
    fw, iw, fh, ih, _ = _dft_matrices_nd([H, W], device, dtype, exact)
    return fw, fh, ih, iw


def _along(m: torch.Tensor, t: torch.Tensor, pre: int, n: int, post: int) -> torch.Tensor:
    """Apply matrix `m` (k, n) along the middle axis of `t` viewed as (pre, n, post): (pre, k, post)."""
    if post == 1:
        # channels-first last axis: one (pre, n) x (n, k) product instead of pre matrix-vector products
        return torch.matmul(t.reshape(pre, n), m.t())
    # channels stay last: each step contracts a middle axis, so no transposes are needed
    return torch.matmul(m, t.reshape(pre, n, post))


def _complex_along(
        cs: torch.Tensor, t: torch.Tensor, pre: int, n: int, mid: int, post: int, inverse: bool) -> torch.Tensor:
    """Complex DFT along the axis n of `t` viewed as (pre, n, mid, 2, post), its real/imag pair not adjacent:
    one product with the stacked (cos; sin) matrix, then the four terms combined."""
    r = torch.matmul(cs, t.reshape(pre, n, mid * 2 * post)).reshape(pre, 2, n, mid, 2, post)
    cr, ci, sr, si = r[:, 0, :, :, 0], r[:, 0, :, :, 1], r[:, 1, :, :, 0], r[:, 1, :, :, 1]
    if inverse:  # exp(+i a): (c zr - s zi) + i (c zi + s zr)
        return torch.stack((cr - si, ci + sr), 3)
    return torch.stack((cr + si, ci - sr), 3)  # exp(-i a): (c zr + s zi) + i (c zi - s zr)


def _around(lead: int, outer: List[int], k: int) -> Tuple[int, int]:
    """(elements before, elements after) the outer spatial axis k, the leading batch(-channel) block included."""
    pre, mid = lead, 1
    for s in outer[:k]:
        pre *= s
    for s in outer[k + 1:]:
        mid *= s
    return pre, mid


def _dft_filter(
        x: torch.Tensor,
        weight: torch.Tensor,
        mats: List[torch.Tensor],
        channels_last: bool = True,
) -> torch.Tensor:
    """The global filter of (B, *S, C) or (B, C, *S) with the matrices of `_dft_matrices_nd`, in their dtype."""
    rank = weight.dim() - 2
    dtype = mats[0].dtype
    B = x.shape[0]
    if channels_last:
        C = x.shape[-1]
        size = [s for s in x.shape[1:rank + 1]]  # no int(): symbolic sizes stay symbolic when compiled
        lead, tail = B, C
    else:
        C = x.shape[1]
        size = [s for s in x.shape[2:rank + 2]]
        lead, tail = B * C, 1
    W = size[-1]
    wf = W // 2 + 1
    outer = size[:-1]
    n_outer = 1
    for s in outer:
        n_outer *= s
    post = wf * tail  # what follows the (real, imag) axis

    # real DFT along the last spatial axis: (lead, *outer, 2, wf, tail)
    z = _along(mats[0], x.to(dtype), lead * n_outer, W, tail)
    # complex DFTs along the other axes, innermost first
    for k in range(rank - 2, -1, -1):
        pre, mid = _around(lead, outer, k)
        fh, cs = mats[2 + 3 * k], mats[4 + 3 * k]
        if mid == 1:  # the axis next to the (real, imag) pair: one interleaved real matrix
            z = _along(fh, z, pre, 2 * outer[k], post)
        else:
            z = _complex_along(cs, z, pre, outer[k], mid, post, False)

    shape = ([B] + outer + [2, wf, C]) if channels_last else ([B, C] + outer + [2, wf])
    ri = -3 if channels_last else -2
    z = z.reshape(shape)
    w = weight.to(dtype)
    wr, wi = w[..., 0], w[..., 1]
    if not channels_last:
        wr, wi = wr.movedim(-1, 0), wi.movedim(-1, 0)
    zr, zi = z.select(ri, 0), z.select(ri, 1)
    # out-of-place: torch.func (vmap, jvp) has no batching rules for out= products
    y = torch.stack((zr * wr - zi * wi, zr * wi + zi * wr), ri)

    for k in range(rank - 1):
        pre, mid = _around(lead, outer, k)
        ih, cs = mats[3 + 3 * k], mats[4 + 3 * k]
        if mid == 1:
            y = _along(ih, y, pre, 2 * outer[k], post)
        else:
            y = _complex_along(cs, y, pre, outer[k], mid, post, True)
    # the c2r inverse last: it drops what is left of the imaginary parts
    y = _along(mats[1], y, lead * n_outer, 2 * wf, tail)
    return y.reshape(x.shape).to(x.dtype)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    # 'meta' (shape and FLOP counting) has no autocast: asking it would raise (torch.amp.is_autocast_available
    # would say so, but breaks the graph in torch < 2.7's dynamo)
    if device_type != 'meta' and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _is_traced() -> bool:
    """Inside torch.compile / torch.export / ONNX export / jit tracing: real ops only, nothing measured or cached."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# one lock for the module-level caches: dict operations only, never held while computing, so threads sharing a
# model never see an OrderedDict changed under them (move_to_end / popitem race)
_LOCK = threading.RLock()

_DFT_CACHE: 'OrderedDict[tuple, List[torch.Tensor]]' = OrderedDict()
_DFT_CACHE_SIZE = 64


def _matrices(size: List[int], device: torch.device, dtype: torch.dtype) -> List[torch.Tensor]:
    if _is_traced():
        # built in the graph from the (possibly symbolic) grid size: constants a compiler folds, never weights
        return _dft_matrices_nd(size, device, dtype, exact=False)
    key = (tuple(size), str(device), dtype)
    with _LOCK:
        mats = _DFT_CACHE.get(key)
        if mats is not None:
            _DFT_CACHE.move_to_end(key)
            return mats
    # normal tensors even when first asked for under inference_mode: training may reuse them later
    with torch.inference_mode(False):
        mats = [m.to(device) for m in _dft_matrices_nd(size, None, dtype)]  # float64 angles on the CPU
    with _LOCK:
        mats = _DFT_CACHE.setdefault(key, mats)  # another thread may have been first: one copy is kept
        while len(_DFT_CACHE) > _DFT_CACHE_SIZE:
            _DFT_CACHE.popitem(last=False)
    return mats


def global_filter_matmul(x: torch.Tensor, weight: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """The global filter as real DFT matrix products, no complex tensors: the same result as `global_filter_fft`.

    Runs in the input's dtype, or in the autocast dtype when autocast is on (matmuls accumulate in float32);
    the output has the input's dtype, as in the reference.
    """
    rank = weight.dim() - 2
    size = [x.shape[d] for d in _spatial_dims(rank, channels_last)]
    autocast_dtype = _autocast_dtype(x.device.type)
    dtype = autocast_dtype if autocast_dtype is not None and x.dtype == torch.float32 else x.dtype
    mats = _matrices(size, x.device, dtype)
    if autocast_dtype is None:
        return _dft_filter(x, weight, mats, channels_last)
    # the dtype is chosen above: autocast must not re-cast the DFT matrices on every call
    with torch.autocast(x.device.type, enabled=False):
        return _dft_filter(x, weight, mats, channels_last)


_BACKEND_FNS = {'fft': global_filter_fft, 'matmul': global_filter_matmul}
# LRU of what `benchmark` measured: enough for multi-scale training and detection, bounded for any number of sizes
_BENCHMARK_CHOICES: 'OrderedDict[tuple, str]' = OrderedDict()
_BENCHMARK_CACHE_SIZE = 256
# matmul replaces the reference only when measurably faster: a tie keeps the authors' numerics
_BENCHMARK_MARGIN = 0.95


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def _measure(x: torch.Tensor, weight: torch.Tensor, channels_last: bool, repeats: int = 5,
             min_sample_s: float = 2e-3) -> str:
    x, weight = x.detach(), weight.detach()
    for fn in _BACKEND_FNS.values():
        fn(x, weight, channels_last)  # warm-up: DFT matrices, FFT plans, allocator
    _sync(x.device)
    t = time.perf_counter()
    global_filter_fft(x, weight, channels_last)
    _sync(x.device)
    # small grids take microseconds: enough calls per sample that timer and scheduler noise do not decide
    calls = max(1, math.ceil(min_sample_s / max(time.perf_counter() - t, 1e-7)))
    times: Dict[str, float] = {}
    for _ in range(repeats):  # interleaved, best of: robust to a busy machine
        for name, fn in _BACKEND_FNS.items():
            _sync(x.device)
            t = time.perf_counter()
            for _ in range(calls):
                fn(x, weight, channels_last)
            _sync(x.device)
            times[name] = min(times.get(name, math.inf), time.perf_counter() - t)
    return 'matmul' if times['matmul'] < _BENCHMARK_MARGIN * times['fft'] else 'fft'


def _benchmark_backend(x: torch.Tensor, weight: torch.Tensor, channels_last: bool) -> str:
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return 'fft'  # nothing can be timed inside a CUDA graph capture: the fixed rule's eager choice
    B = x.shape[0]
    key = (str(x.device), x.dtype, _autocast_dtype(x.device.type), 1 << max(B - 1, 0).bit_length(),
           'channels_last' if channels_last else 'channels_first', tuple(x.shape[1:]))
    with _LOCK:
        choice = _BENCHMARK_CHOICES.get(key)
        if choice is not None:
            _BENCHMARK_CHOICES.move_to_end(key)
            return choice
    choice = _measure(x, weight, channels_last)
    with _LOCK:
        _BENCHMARK_CHOICES[key] = choice
        while len(_BENCHMARK_CHOICES) > _BENCHMARK_CACHE_SIZE:
            _BENCHMARK_CHOICES.popitem(last=False)
    return choice


def benchmark_choices() -> Dict[tuple, str]:
    """What `benchmark` picked so far: {(device, dtype, autocast dtype, batch bucket, layout, shape): backend}."""
    with _LOCK:
        return dict(_BENCHMARK_CHOICES)


def _resolve_backend(backend: str, x: torch.Tensor, weight: torch.Tensor, channels_last: bool) -> str:
    if backend in ('auto', 'benchmark') and _is_traced():
        # real-valued ops only: what exports, and what inductor fuses (it has no codegen for complex ops)
        return 'matmul'
    if backend == 'auto':
        return 'fft'
    if backend == 'benchmark':
        return _benchmark_backend(x, weight, channels_last)
    return backend


@torch.jit.unused
def global_filter(
        x: torch.Tensor,
        weight: torch.Tensor,
        backend: str = 'auto',
        channels_last: bool = True,
) -> torch.Tensor:
    """Filter (B, *S, C) (or (B, C, *S) with channels_last=False) with a (*spectrum, C, 2) filter using `backend`
    ('auto', 'fft', 'matmul' or 'benchmark')."""
    if x.numel() == 0 and not _is_traced():
        return torch.zeros_like(x)  # an empty batch: FFT libraries refuse it, torch layers return empty
    if backend not in FILTER_BACKENDS:
        raise ValueError(f'Unknown filter backend {backend!r}: use one of {", ".join(FILTER_BACKENDS)}.')
    backend = _resolve_backend(backend, x, weight, channels_last)
    return _BACKEND_FNS[backend](x, weight, channels_last)


def _check_backend(backend: str) -> str:
    if backend not in FILTER_BACKENDS:
        raise ValueError(f'Unknown filter_backend {backend!r}: use one of {", ".join(FILTER_BACKENDS)}.')
    return backend


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
        self.filter_backend = _check_backend(filter_backend)
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
            return _dft_filter(x, weight, _dft_matrices_nd(size, x.device, x.dtype, False), self.channels_last)
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
        # resampled on every call, from the weights as they are now: no cache to go stale (it bought no measurable
        # time: gfnet_s at 256 px, batch 8, cached vs not within noise, 0.88x-1.07x)
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
        filter_backend: 'auto' (fft in eager mode, matmul when compiled, exported, traced or scripted), 'fft' (the
            authors' float32 FFTs), 'matmul' (real DFT matrices: exports to ONNX, runs in the autocast dtype) or
            'benchmark' (timed per shape in eager mode). Results agree to float32 rounding; the parameters are
            the same.
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
    backend = _check_backend(backend)
    for m in model.modules():
        if isinstance(m, _GlobalFilterNd):
            m.filter_backend = backend
    return model


def clear_filter_caches() -> None:
    """Clear the module-level caches: the DFT matrices (derived from grid sizes only, never from weights) and the
    `benchmark` backend's choices. Layers keep nothing: a resampled filter is made from the current weights on each
    call."""
    with _LOCK:
        _DFT_CACHE.clear()
        _BENCHMARK_CHOICES.clear()

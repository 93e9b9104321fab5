"""How a global filter is computed: `fft`, `matmul`, and the `auto` rule that picks one of them.

* `fft`: the authors' formulation: `rfftn` (norm='ortho') over the spatial axes, complex product, `irfftn`, in float32
  (float64 stays float64). The reference.
* `matmul`: the same transform as real DFT matrix products, in the input's dtype or the autocast dtype, with no complex
  tensors: what exports, what inductor fuses, what bf16 / fp16 matrix units run.
* `auto` (the default) is a fixed rule, no timing (`_auto_backend`): `matmul` inside torch.compile, torch.export, ONNX
  export, jit tracing and TorchScript, and where the compute dtype (the input's, or autocast's) is bf16 or fp16 on a
  CPU with matrix instructions for it; `fft` everywhere else. `set_default_filter_backend` (or the environment
  variable TIMM_GFNET_FILTER_BACKEND, read at import) replaces the rule for every layer left at `auto`.
"""
import functools
import math
import os
from typing import List, Tuple

import torch

__all__ = ['FILTER_BACKENDS', 'clear_filter_caches', 'set_default_filter_backend']

FILTER_BACKENDS = ('auto', 'fft', 'matmul')


def _check_backend(backend: str, what: str = 'filter_backend') -> str:
    if backend not in FILTER_BACKENDS:
        raise ValueError(f'Unknown {what} {backend!r}: use one of {", ".join(FILTER_BACKENDS)}.')
    return backend


_DEFAULT_BACKEND = _check_backend(os.environ.get('TIMM_GFNET_FILTER_BACKEND', 'auto'), 'TIMM_GFNET_FILTER_BACKEND')


def set_default_filter_backend(backend: str = 'auto') -> None:
    """What every layer with filter_backend='auto' runs from now on: 'fft', 'matmul', or 'auto' (the rule)."""
    global _DEFAULT_BACKEND
    _DEFAULT_BACKEND = _check_backend(backend)


@functools.lru_cache(maxsize=None)  # a machine does not change while a process runs
def _cpu_features() -> frozenset:
    """The CPU's instruction sets, from torch.cpu.get_capabilities(). Older torch releases (2.6, the floor, included)
    have no public API for them: there, the flags of /proc/cpuinfo (Linux; elsewhere none are known, and `auto` keeps
    the float32 FFT)."""
    if hasattr(torch.cpu, 'get_capabilities'):
        return frozenset(k for k, v in torch.cpu.get_capabilities().items() if v is True)
    try:
        with open('/proc/cpuinfo') as f:
            flags = [line for line in f if line.startswith(('flags', 'Features'))]
    except OSError:
        flags = []
    return frozenset(flags[0].partition(':')[2].split() if flags else ())


# instructions that multiply bf16 / fp16 matrices natively (x86; Arm's BF16): without them such products are emulated
# and slower than the float32 FFT. With them the products win: the layer at gfnet_s's shape (8x14x14x384, 2 threads,
# best of 40 interleaved calls, Intel Xeon with AMX-BF16 and AVX512-FP16) ran 1.1-1.3x the FFT's speed under bf16
# autocast, 2.5-3.5x under fp16 autocast, 4-7.6x with bf16 or fp16 tensors.
_HALF_UNITS = {
    torch.bfloat16: {'avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16'},
    torch.float16: {'avx512_fp16', 'amx_fp16'},
}


def _is_exporting() -> bool:
    """Inside torch.export or the ONNX export. torch < 2.7 has no is_exporting, and its exporter fails on the
    right-operand form (symbolic numel): exports there keep the eager form, which NNCF's defaults cannot quantize."""
    return hasattr(torch.compiler, 'is_exporting') and torch.compiler.is_exporting()


def _is_traced() -> bool:
    """Inside torch.compile / torch.export / ONNX export / jit tracing: real ops only."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _auto_backend(x: torch.Tensor, dtype: torch.dtype) -> str:
    """The backend `auto` runs for `x`, whose matrix products would run in `dtype`. The one place to retune."""
    if _DEFAULT_BACKEND != 'auto':
        return _DEFAULT_BACKEND
    if _is_traced():
        return 'matmul'  # real-valued ops only: what exports, and what inductor fuses (no codegen for complex ops)
    if x.device.type == 'cpu' and dtype in _HALF_UNITS and _HALF_UNITS[dtype] & _cpu_features():
        return 'matmul'
    return 'fft'


def _fft_filter(x: torch.Tensor, weight: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The authors' formulation on (B, *S, C) (channels_last) or (B, C, *S), with a (*spectrum, C, 2) filter."""
    rank = weight.dim() - 2
    dims = list(range(1, rank + 1)) if channels_last else list(range(2, rank + 2))
    size = [x.shape[d] for d in dims]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.fft.rfftn(x.to(dtype), dim=dims, norm='ortho')
    w = torch.view_as_complex(weight.to(dtype).contiguous())
    if not channels_last:
        w = w.movedim(-1, 0)  # (C, *spectrum): broadcasts against (B, C, *spectrum), no copy of x
    y = torch.fft.irfftn(y * w, s=size, dim=dims, norm='ortho')
    return y.to(x.dtype)


def _angles(n: int, rows: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """2 pi k m / n for k in `rows`, m < n: exact integer products reduced mod n, so no precision is lost at large
    grids (the modulus as a tensor: exporters take a symbolic n there)."""
    m = torch.arange(n, device=rows.device)
    return torch.remainder(rows[:, None] * m[None, :], torch.full_like(m[:1], n)).to(work) * (2 * math.pi / n)


def _dft_matrices(size: List[int], device: torch.device, dtype: torch.dtype, exact: bool) -> List[torch.Tensor]:
    """Real matrices of the ortho DFT of a grid of `size`, in `dtype` (angles in float64 when `exact`):

    fw (2 Wf, W): the real DFT of the last axis, the Wf = W // 2 + 1 bins' real parts over their imaginary parts;
    iw (W, 2 Wf): its c2r inverse as irfft computes it (imaginary DC / Nyquist ignored, other bins counted twice);
    then for each other axis of n points, (2n, 2n): the complex DFT taking (axis, real/imag) pairs to
    (real/imag, axis) pairs; its transpose is the inverse, from (real/imag, axis) back to (axis, real/imag).
    """
    work = torch.float64 if exact else torch.float32
    W = size[-1]
    k = torch.arange(W // 2 + 1, device=device)
    ang = _angles(W, k, work)
    real_bin = ((k == 0) | (2 * k == W))[:, None]
    sin = torch.where(real_bin, torch.zeros_like(ang), torch.sin(ang))  # exact zeros, not sin(pi)
    fw = torch.cat([torch.cos(ang), -sin], 0) / math.sqrt(W)
    mult = 2. - real_bin.to(work)
    mats = [fw, (fw * torch.cat([mult, mult], 0)).t()]
    for n in size[:-1]:
        ang = _angles(n, torch.arange(n, device=device), work)
        c, s = torch.cos(ang) / math.sqrt(n), torch.sin(ang) / math.sqrt(n)
        # exp(-i a) (zr + i zi) = (c zr + s zi) + i (c zi - s zr)
        mats.append(torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], 0).reshape(2 * n, 2 * n))
    return [m.to(dtype).contiguous() for m in mats]


@functools.lru_cache(maxsize=64)  # grid sizes: enough for multi-scale training, bounded for any number of sizes
def _cached_dft_matrices(size: Tuple[int, ...], device: torch.device, dtype: torch.dtype) -> List[torch.Tensor]:
    with torch.inference_mode(False):  # plain tensors even when first asked for under inference_mode
        return [m.to(device) for m in _dft_matrices(list(size), torch.device('cpu'), dtype, True)]


def clear_filter_caches() -> None:
    """Empty the cache of DFT matrices (derived from grid sizes only, never from weights; layers keep nothing)."""
    _cached_dft_matrices.cache_clear()


def _along(m: torch.Tensor, t: torch.Tensor, pre: int, n: int, post: int, right: bool = False) -> torch.Tensor:
    """Matrix `m` (k, n) applied along the middle axis of `t` viewed as (pre, n, post): as the left operand, no
    transposes, no copies; or (`right`, for export) as the right operand between transposes of `t`: NNCF scales a
    constant operand per output channel, which OpenVINO's CPU plugin compiles for the right operand only."""
    if post == 1:
        return torch.matmul(t.reshape(pre, n), m.t())  # one product, not pre matrix-vector products
    if right:
        return torch.matmul(t.reshape(pre, n, post).transpose(1, 2), m.t()).transpose(1, 2)
    return torch.matmul(m, t.reshape(pre, n, post))


def _matmul_filter(x: torch.Tensor, weight: torch.Tensor, mats: List[torch.Tensor], channels_last: bool,
                   right: bool = False):
    """The global filter as products with the matrices of `_dft_matrices`, in their dtype (`right`: see `_along`)."""
    rank = weight.dim() - 2
    shape = list(x.shape)
    lead = 1 if channels_last else 2  # batch (and channel) axes before the grid
    size = shape[lead:lead + rank]
    outer = size[:-1]
    wf = size[-1] // 2 + 1
    tail = shape[-1] if channels_last else 1
    rows = x.numel() // (size[-1] * tail)  # lines along the last axis (0 for an empty batch)
    # the real DFT of the last axis, then the other axes innermost first: each moves the real/imag axis one step out
    z = _along(mats[0], x.to(mats[0].dtype), rows, size[-1], tail, right)
    before, after = rows, wf * tail
    for k in range(rank - 2, -1, -1):
        before = before // outer[k]
        z = _along(mats[2 + k], z, before, 2 * outer[k], after, right)
        after = after * outer[k]
    # the spectrum as (lead, real/imag, *spectrum, tail), the filter as (real/imag, *spectrum, C) or (C, real/imag, ..)
    z = z.reshape(shape[:lead] + [2] + outer + [wf] + shape[lead + rank:])
    w = weight.to(z.dtype).movedim(-1, 0)
    if not channels_last:
        w = w.movedim(-1, 0)
    w = w.contiguous()  # real and imaginary planes each contiguous: strided ones made the products 2x slower
    zr, zi = z.select(lead, 0), z.select(lead, 1)
    wr, wi = w.select(lead - 1, 0), w.select(lead - 1, 1)
    y = torch.stack((zr * wr - zi * wi, zr * wi + zi * wr), lead)
    for k in range(rank - 1):
        after = after // outer[k]
        y = _along(mats[2 + k].t(), y, before, 2 * outer[k], after, right)
        before = before * outer[k]
    # the c2r inverse last: it drops what is left of the imaginary parts
    return _along(mats[1], y, rows, 2 * wf, tail, right).reshape(shape).to(x.dtype)


def _global_filter(x: torch.Tensor, weight: torch.Tensor, backend: str, channels_last: bool) -> torch.Tensor:
    """Filter x, (B, *S, C) (channels_last) or (B, C, *S), with a (*spectrum, C, 2) filter by `backend`."""
    if torch.jit.is_scripting():  # scripting counts as tracing for `auto`: matmul unless fft is asked for
        if backend == 'fft':
            return _fft_filter(x, weight, channels_last)
        size = x.shape[1:-1] if channels_last else x.shape[2:]
        mats = _dft_matrices(size, x.device, x.dtype, x.dtype == torch.float64)
        return _matmul_filter(x, weight, mats, channels_last)
    return _eager_filter(x, weight, backend, channels_last)


@torch.jit.unused
def _eager_filter(x: torch.Tensor, weight: torch.Tensor, backend: str, channels_last: bool) -> torch.Tensor:
    """Eager, compiled and exported: the `auto` rule, autocast's dtype, cached or traced DFT matrices."""
    dtype = x.dtype  # of the products: the input's, or autocast's for float32 ('meta' has no autocast to ask)
    if dtype == torch.float32 and x.device.type != 'meta' and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    if backend == 'auto':
        backend = _auto_backend(x, dtype)
    if backend == 'fft' and x.numel() > 0:  # FFT libraries refuse an empty batch; the products give one, with grads
        return _fft_filter(x, weight, channels_last)
    size = list(x.shape[1:-1] if channels_last else x.shape[2:])  # no int(): symbolic sizes stay symbolic
    if _is_traced():  # built in the graph, from the possibly symbolic size: constants a compiler folds
        mats = _dft_matrices(size, x.device, dtype, dtype == torch.float64)
    else:
        mats = _cached_dft_matrices(tuple(size), x.device, dtype)
    return _matmul_filter(x, weight, mats, channels_last, _is_exporting())

"""The global filter as real DFT matrix products: the math of the `matmul` backend.

A real DFT along the last spatial axis (the W // 2 + 1 bins' real parts stacked over their imaginary parts), complex
DFTs along the other axes as real matrices, a real-valued complex product and the inverses, ortho-normalised: the
same result as `irfftn(rfftn(x) * weight)`, with no complex tensors in the graph (what exports to ONNX / TensorRT
and what inductor fuses), in any dtype.

The matrices depend on the grid size only (never on weights): eager calls take them from a small module-level LRU
cache; traced and compiled graphs build them in the graph.
"""
import math
import threading
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch

__all__ = ['dft_matrices', 'dft_filter', 'cached_dft_matrices', 'cached_sizes', 'clear_dft_cache']


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


def dft_filter(
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
    # the filter laid out as the spectrum is, (real, imag) on the same axis: the product is then a few passes over
    # contiguous memory, y = z * [wr, wr] + swap(z) * [-wi, wi], instead of strided half-planes and a stack
    w = weight.to(dtype)
    w = w.movedim(-1, -3) if channels_last else w.permute([rank] + list(range(rank - 1)) + [rank + 1, rank - 1])
    wr, wi = w.select(ri, 0), w.select(ri, 1)
    # out-of-place: torch.func (vmap, jvp) has no batching rules for out= products. No addcmul: torch < 2.7 exports
    # it as a function OpenVINO cannot read, and its fake-tensor kernel fails on these broadcasts
    y = z * torch.stack((wr, wr), ri) + z.flip([ri]) * torch.stack((-wi, wi), ri)

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


# a lock for the cache: dict operations only, never held while computing, so threads sharing a model never see an
# OrderedDict changed under them (move_to_end / popitem race)
_LOCK = threading.RLock()
_CACHE: 'OrderedDict[tuple, List[torch.Tensor]]' = OrderedDict()
_CACHE_SIZE = 64  # grid sizes: enough for multi-scale training and detection, bounded for any number of sizes


def cached_dft_matrices(size: List[int], device: torch.device, dtype: torch.dtype, traced: bool) -> List[torch.Tensor]:
    """The matrices of `_dft_matrices_nd` for a grid of `size`: built in the graph when `traced` (from the possibly
    symbolic size: constants a compiler folds), else from the cache (float64 angles, cast to `dtype`)."""
    if traced:
        return _dft_matrices_nd(size, device, dtype, exact=False)
    key = (tuple(size), str(device), dtype)
    with _LOCK:
        mats = _CACHE.get(key)
        if mats is not None:
            _CACHE.move_to_end(key)
            return mats
    # normal tensors even when first asked for under inference_mode: training may reuse them later
    with torch.inference_mode(False):
        mats = [m.to(device) for m in _dft_matrices_nd(size, None, dtype)]  # float64 angles on the CPU
    with _LOCK:
        mats = _CACHE.setdefault(key, mats)  # another thread may have been first: one copy is kept
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return mats


def clear_dft_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def cached_sizes() -> List[tuple]:
    """(size, device, dtype) of the matrices in the cache, oldest first."""
    with _LOCK:
        return list(_CACHE)

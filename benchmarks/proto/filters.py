"""Prototype formulations of GFNet's global filter for bf16 on CPUs with matrix units (issue 23).

Every `filter_*` takes a channels-last (B, H, W, C) input and the authors' (H, W // 2 + 1, C, 2) `complex_weight` and
computes `irfft2(rfft2(x, norm='ortho') * complex(weight), s=(H, W), norm='ortho')` over (H, W) in the input's dtype
(the matmuls accumulate in float32). `filter_ref` is the authors' formulation (float32 FFT).

The winner, `filter_full2d`: the whole 2-D real DFT of the H x W grid as ONE real matrix F (2M, N) (N = H * W tokens,
M = H * (W // 2 + 1) bins, real parts stacked over imaginary parts) and its c2r inverse G (N, 2M), applied to the
tokens of every (batch, channel) column at once. `filter_tokens_first` is the same on a (N, B, C) token-first stream
(no transposes at all: what a model whose residual stream is token-first would call).
"""
import math
from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['filter_ref', 'filter_full2d', 'filter_full2d_left', 'filter_full2d_t', 'filter_tokens_first',
           'filter_sep_tokens_first', 'full2d_matrices', 'full2d_weight']


def filter_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The authors' formulation: float32 rfft2 / irfft2 (ortho) and a complex product."""
    H, W = x.shape[1:3]
    y = torch.fft.rfft2(x.float(), dim=(1, 2), norm='ortho')
    y = y * torch.view_as_complex(weight.float().contiguous())
    return torch.fft.irfft2(y, s=(H, W), dim=(1, 2), norm='ortho').to(x.dtype)


def _full2d_f64(H: int, W: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(F (2M, N), G (N, 2M)) in float64: the ortho rfft2 of an H x W grid and irfft2's c2r inverse as real
    matrices. Bins (k1, k2) and tokens (h, w) in row-major order; real parts first, then imaginary parts."""
    wf = W // 2 + 1
    k1 = torch.arange(H, dtype=torch.int64)[:, None, None, None]
    k2 = torch.arange(wf, dtype=torch.int64)[None, :, None, None]
    h = torch.arange(H, dtype=torch.int64)[None, None, :, None]
    w = torch.arange(W, dtype=torch.int64)[None, None, None, :]
    # exact integer phases reduced mod H and mod W before the float division: no precision lost at large grids
    phase = (k1 * h % H).double() / H + (k2 * w % W).double() / W  # (H, wf, H, W)
    ang = (2 * math.pi) * phase.reshape(H * wf, H * W)
    scale = 1. / math.sqrt(H * W)
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    fwd = torch.cat([cos, -sin], 0)  # (2M, N): exp(-i a)
    # c2r: bins 0 < k2 < W / 2 stand for themselves and their conjugate mirror (x2); DC and Nyquist count once, and
    # sin(a) there is sin(2 pi k1 h / H) alone, which drops nothing irfft keeps (it ignores Im of those bins after
    # the inverse along H, and sin(pi w) = 0)
    k2f = torch.arange(wf)
    mult = torch.where((k2f == 0) | (2 * k2f == W), 1., 2.).double()
    mult = mult.repeat(H)[:, None]  # (M, 1)
    inv = torch.cat([cos * mult, -sin * mult], 0).t()  # (N, 2M): Re(Y exp(+i a)) = Yr cos - Yi sin
    return fwd, inv


@lru_cache(maxsize=16)
def full2d_matrices(H: int, W: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cached (F, G) in `dtype` (grid size and dtype only: no weights in the key)."""
    fwd, inv = _full2d_f64(H, W)
    return fwd.to(dtype).contiguous(), inv.to(dtype).contiguous()


def full2d_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(H, wf, C, 2) -> (C, 2, 2M): [[wr, wr], [wi, wi]] over the (real, imag) halves of the 2M spectrum axis.
    With z = [zr, zi]: z * [wr, wr] = [zr wr, zi wr], z * [wi, wi] = [zr wi, zi wi]; G4 = [Gr, Gi | Gi, -Gr] then
    sums them into Gr (zr wr - zi wi) + Gi (zr wi + zi wr) = G y: the complex product folded into the inverse."""
    H, wf, C, _ = weight.shape
    w = weight.to(dtype).reshape(H * wf, C, 2).permute(1, 2, 0)  # (C, 2, M): real, imag
    return w.repeat(1, 1, 2)  # (C, 2, 2M)


@lru_cache(maxsize=16)
def _g4(H: int, W: int, dtype: torch.dtype) -> torch.Tensor:
    _, inv = _full2d_f64(H, W)
    M = inv.shape[1] // 2
    gr, gi = inv[:, :M], inv[:, M:]
    return torch.cat([gr, gi, gi, -gr], 1).to(dtype).contiguous()  # (N, 4M)


def _product(z: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """z (..., C, 2M) [zr, zi] times the complex filter: [zr wr - zi wi, zr wi + zi wr], 4 elementwise passes."""
    H, wf, C, _ = weight.shape
    w = weight.to(dtype).reshape(H * wf, C, 2).permute(1, 2, 0)  # (C, 2, M)
    wr, wi = w[:, 0], w[:, 1]
    zc = z.unflatten(-1, (2, H * wf))
    zr, zi = zc.select(-2, 0), zc.select(-2, 1)
    return torch.cat([zr * wr - zi * wi, zr * wi + zi * wr], -1)


def filter_full2d_t(x: torch.Tensor, weight: torch.Tensor, fold: bool = True, dtype=None, mats=None) -> torch.Tensor:
    """THE WINNER at 14 x 14. Channels-first columns, DFT matrices as the RIGHT operand (a Linear's weight):
    (B C, N) @ F^T, the complex product folded into the inverse, @ G4^T. Every GEMM 2-D on a contiguous operand
    (a 3-D or strided input makes F.linear fall back to bmm on an expanded copy of the weight); the two transposes
    of the activations (in and out) are explicit copies. `dtype`: the GEMMs' dtype (autocast's), the cast done by
    the transposing copy (one pass); the output is in `dtype`. `mats`: (F, G4) given (export: module buffers)."""
    B, H, W, C = x.shape
    N = H * W
    dtype = dtype or x.dtype
    fwd, g4 = mats if mats is not None else (full2d_matrices(H, W, dtype)[0], _g4(H, W, dtype))
    inv = None if fold else full2d_matrices(H, W, dtype)[1]
    xt = x.reshape(B, N, C).transpose(1, 2).to(dtype, memory_format=torch.contiguous_format).reshape(B * C, N)
    z = F.linear(xt, fwd)  # (B C, 2M)
    if fold:
        # [zr, zi] * [[wr], [wi]] broadcast (no repeated copy of the filter): (B, C, 2, 2, M) = [z wr, z wi]
        # the filter contiguous (a small copy): the product is then laid out as G4 reads it (strided operands
        # would make TensorIterator pick another layout, and a copy of the product)
        wt = weight.to(dtype).reshape(-1, C, 2).permute(1, 2, 0).unsqueeze(2).contiguous()  # (C, 2, 1, M)
        q = (z.view(B, C, 1, 2, -1) * wt).view(B * C, -1)  # (B C, 4M)
        y = F.linear(q, g4)
    else:
        y = F.linear(_product(z.view(B, C, -1), weight, dtype).view(B * C, -1), inv)
    return y.view(B, C, N).transpose(1, 2).reshape(B, H, W, C).contiguous()


def filter_full2d_left(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Channels-last, DFT matrices as the LEFT operand, broadcast over the batch: F @ (B, N, C)."""
    B, H, W, C = x.shape
    dtype = x.dtype
    fwd, inv = full2d_matrices(H, W, dtype)
    M = H * (W // 2 + 1)
    z = torch.matmul(fwd, x.reshape(B, H * W, C))  # (B, 2M, C)
    w = weight.to(dtype).reshape(M, C, 2)
    wr, wi = w[..., 0], w[..., 1]
    zr, zi = z[:, :M], z[:, M:]
    y = torch.cat([zr * wr - zi * wi, zr * wi + zi * wr], 1)
    return torch.matmul(inv, y).reshape(B, H, W, C)


def filter_tokens_first(x: torch.Tensor, weight: torch.Tensor, fold: bool = False) -> torch.Tensor:
    """x: (N, B, C) token-first stream of an H x W grid (weight's grid): two plain 2-D GEMMs, F (2M, N) @ (N, B C)
    and G (N, 2M) @ (2M, B C), no transposes, no batch broadcast."""
    N, B, C = x.shape
    H = weight.shape[0]
    W = N // H
    dtype = x.dtype
    fwd, inv = full2d_matrices(H, W, dtype)
    M = H * (W // 2 + 1)
    z = torch.mm(fwd, x.reshape(N, B * C)).view(2, M, B, C)
    w = weight.to(dtype).reshape(M, 1, C, 2)
    wr, wi = w[..., 0], w[..., 1]
    if fold:
        q = torch.stack([z * wr, z * wi], 0).view(4 * M, B * C)
        return torch.mm(_g4(H, W, dtype), q).view(N, B, C)
    zr, zi = z[0], z[1]
    y = torch.stack([zr * wr - zi * wi, zr * wi + zi * wr], 0).view(2 * M, B * C)
    return torch.mm(inv, y).view(N, B, C)


def filter_full2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Drop-in (B, H, W, C) filter: the token-first GEMMs with the transposes at both ends."""
    B, H, W, C = x.shape
    xt = x.reshape(B, H * W, C).transpose(0, 1).contiguous()
    y = filter_tokens_first(xt, weight)
    return y.transpose(0, 1).reshape(B, H, W, C)


@lru_cache(maxsize=16)
def _sep_matrices(H: int, W: int, dtype: torch.dtype):
    from timm_gfnet.dft import _dft_matrices_nd
    fw, iw, fh, ih, _ = _dft_matrices_nd([H, W], None, dtype)
    return fw.contiguous(), iw.contiguous(), fh.contiguous(), ih.contiguous()


def filter_sep_tokens_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Separable form on an (H, W, B, C) token-first stream: real DFT along W (H batched GEMMs), complex DFT along H
    as ONE (2H, 2H) GEMM over (h, real/imag) rows, product, inverses. Fewer FLOPs than full2d, more passes."""
    N, B, C = x.shape
    H = weight.shape[0]
    W = N // H
    wf = W // 2 + 1
    dtype = x.dtype
    fw, iw, fh, ih = _sep_matrices(H, W, dtype)
    z = torch.matmul(fw, x.view(H, W, B * C))  # (H, 2 wf, BC) = (2H interleaved, wf BC)
    z = torch.mm(fh, z.view(2 * H, wf * B * C)).view(H, 2, wf, B, C)
    w = weight.to(dtype).permute(0, 3, 1, 2).unsqueeze(3)  # (H, 2, wf, 1, C)
    wr, wi = w[:, 0], w[:, 1]
    zr, zi = z[:, 0], z[:, 1]
    y = torch.stack([zr * wr - zi * wi, zr * wi + zi * wr], 1).view(2 * H, wf * B * C)
    y = torch.mm(ih, y).view(H, 2 * wf, B * C)
    return torch.matmul(iw, y).view(N, B, C)


@lru_cache(maxsize=16)
def _sep_t_matrices(H: int, W: int, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """Linear weights of the separable form: fw (2 wf, W) real DFT along W, fh (2H, 2H) complex DFT along H on
    [real; imag] halves, ih4 (2H, 4H) its inverse with the complex product folded in, iw (W, 2 wf) c2r along W."""
    from timm_gfnet.dft import _dft_matrices_nd
    fw, iw, _, _, cs = _dft_matrices_nd([H, W], None, torch.float64)
    c, s = cs[:H], cs[H:]
    fh = torch.cat([torch.cat([c, s], 1), torch.cat([-s, c], 1)], 0)  # exp(-i a) on [zr; zi]
    # exp(+i a) on y = z w: out_r = c yr - s yi, out_i = s yr + c yi, y from q = [zr wr, zi wr, zr wi, zi wi]
    ih4 = torch.cat([torch.cat([c, -s, -s, -c], 1), torch.cat([s, c, c, -s], 1)], 0)
    return tuple(m.to(dtype).contiguous() for m in (fw, fh, ih4, iw))


def filter_sep_t(x: torch.Tensor, weight: torch.Tensor, dtype=None, mats=None) -> torch.Tensor:
    """The separable form with every DFT matrix as the RIGHT operand of a 2-D GEMM (a Linear's weight): the winner
    on larger grids (28 x 28). Channels-first (B C, H, W) columns: Linear along W (real DFT), one permute so that
    (real, imag) x H is last, Linear along H, the product folded into the inverse along H, one permute back, c2r
    Linear along W. Four copies of the activations (two transposes at the ends, two permutes)."""
    B, H, W, C = x.shape
    wf = W // 2 + 1
    dtype = dtype or x.dtype
    fw, fh, ih4, iw = mats if mats is not None else _sep_t_matrices(H, W, dtype)
    xt = x.permute(0, 3, 1, 2).to(dtype, memory_format=torch.contiguous_format).reshape(B * C * H, W)
    z = F.linear(xt, fw).view(B * C, H, 2, wf)
    z = z.permute(0, 3, 2, 1).reshape(B * C * wf, 2 * H)  # (B C wf, [real; imag] x H)
    z = F.linear(z, fh).view(B, C, wf, 1, 2, H)
    wt = weight.to(dtype).permute(2, 1, 3, 0).unsqueeze(3).contiguous()  # (C, wf, 2, 1, H)
    q = (z * wt).view(B * C * wf, 4 * H)  # [zr wr, zi wr, zr wi, zi wi]
    y = F.linear(q, ih4).view(B * C, wf, 2, H)
    y = y.permute(0, 3, 2, 1).reshape(B * C * H, 2 * wf)
    y = F.linear(y, iw).view(B, C, H, W)
    return y.permute(0, 2, 3, 1).contiguous()

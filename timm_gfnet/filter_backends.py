"""The two ways to compute a global filter, and which one runs (`filter_backend`).

* `fft`: the authors' formulation, float32 `rfftn` (norm='ortho'), complex product, `irfftn`: the reference.
* `matmul`: the same transform as real DFT matrix products (`dft.py`), in the input's dtype or the autocast dtype,
  with no complex tensors: what exports, what inductor fuses, what bf16 matrix units run.
* `auto` (the default) is a fixed rule, no timing: the same backend, hence the same bits, for the same inputs on the
  same machine. `matmul` inside torch.compile, torch.export, ONNX export, jit tracing and TorchScript (real ops only);
  `matmul` under bfloat16 autocast on a CPU with bf16 matrix units; `fft` everywhere else. Why, with the machines
  it was measured on: README, "Filter backends", and benchmarks/results/.
"""
from typing import List, Optional

import torch

from .dft import cached_dft_matrices, dft_filter
from .hardware import cpu_has_bf16_units

__all__ = ['FILTER_BACKENDS', 'global_filter', 'global_filter_fft', 'global_filter_matmul', 'resolve_backend',
           'check_backend']

FILTER_BACKENDS = ('auto', 'fft', 'matmul')


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


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    # 'meta' (shape and FLOP counting) has no autocast: asking it would raise (torch.amp.is_autocast_available
    # would say so, but breaks the graph in torch < 2.7's dynamo)
    if device_type != 'meta' and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _is_traced() -> bool:
    """Inside torch.compile / torch.export / ONNX export / jit tracing: real ops only."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def global_filter_matmul(x: torch.Tensor, weight: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """The global filter as real DFT matrix products, no complex tensors: the same result as `global_filter_fft`.

    Runs in the input's dtype, or in the autocast dtype when autocast is on (matmuls accumulate in float32);
    the output has the input's dtype, as in the reference.
    """
    rank = weight.dim() - 2
    size = [x.shape[d] for d in _spatial_dims(rank, channels_last)]
    autocast_dtype = _autocast_dtype(x.device.type)
    dtype = autocast_dtype if autocast_dtype is not None and x.dtype == torch.float32 else x.dtype
    mats = cached_dft_matrices(size, x.device, dtype, _is_traced())
    if autocast_dtype is None:
        return dft_filter(x, weight, mats, channels_last)
    # the dtype is chosen above: autocast must not re-cast the DFT matrices on every call
    with torch.autocast(x.device.type, enabled=False):
        return dft_filter(x, weight, mats, channels_last)


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The backend that runs for `x` (the fixed rule of `auto`, or the one asked for)."""
    if backend != 'auto':
        return backend
    if _is_traced():
        return 'matmul'  # real-valued ops only: what exports, and what inductor fuses (no codegen for complex ops)
    if x.device.type == 'cpu' and _autocast_dtype('cpu') == torch.bfloat16 and cpu_has_bf16_units():
        # bf16 DFT matrix products on bf16 units beat the float32 FFT; emulated ones (no bf16 units) do not
        return 'matmul'
    return 'fft'


def check_backend(backend: str) -> str:
    if backend not in FILTER_BACKENDS:
        raise ValueError(f'Unknown filter_backend {backend!r}: use one of {", ".join(FILTER_BACKENDS)}.')
    return backend


_BACKEND_FNS = {'fft': global_filter_fft, 'matmul': global_filter_matmul}


@torch.jit.unused
def global_filter(
        x: torch.Tensor,
        weight: torch.Tensor,
        backend: str = 'auto',
        channels_last: bool = True,
) -> torch.Tensor:
    """Filter (B, *S, C) (or (B, C, *S) with channels_last=False) with a (*spectrum, C, 2) filter using `backend`
    ('auto', 'fft' or 'matmul')."""
    if x.numel() == 0 and not _is_traced():
        return torch.zeros_like(x)  # an empty batch: FFT libraries refuse it, torch layers return empty
    return _BACKEND_FNS[resolve_backend(check_backend(backend), x)](x, weight, channels_last)

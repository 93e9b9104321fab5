"""Model cost: parameters, MACs with the FFTs counted (torch's FLOP counter and fvcore leave them out), activations.

The FFTs are counted the authors' way (Table 1 of the paper, and raoyongming/GFNet#3, #12, #15): a real FFT of an
n-point grid (rfft, or the irfft back to it) costs n * ceil(log2 n) multiply-accumulates per channel and image,
`HWD ceil(log2 HW)` for a 2-D filter layer, a complex FFT twice that. Everything else follows torch's FLOP counter /
fvcore (MACs of linear, conv and matmul layers).

Importing this module (the plugin's model module does, so `import timm` does) registers these formulas with
`torch.utils.flop_counter`, once: `FlopCounterMode` then counts the FFT ops of the `fft` backend. Under tracing,
compiling or export the `auto` backend runs the DFT as real matmuls: a count of such a graph counts those matmuls
(more MACs than the FFTs; see `count_macs`, which says which it did).
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from .global_filter import _GlobalFilterNd

__all__ = [
    'FFT_CONVENTION', 'FlopCount', 'count_macs', 'fft_macs', 'fvcore_handles', 'profile_model',
    'register_fft_flop_formulas',
]

FFT_CONVENTION = ("each real FFT (rfft, or irfft back to the grid) of n points counted as n * ceil(log2 n) "
                  "multiply-adds per channel, the authors' HWD ceil(log2 HW); a complex FFT twice that")


def fft_macs(shape: Sequence[int], dim: Sequence[int], complex_fft: bool = False) -> int:
    """MACs of an FFT over the axes `dim` of a real grid of `shape` (the authors' count; 2x for a complex FFT)."""
    n = math.prod(shape[d] for d in dim)
    batch = math.prod(shape) // max(n, 1)
    macs = batch * n * math.ceil(math.log2(n)) if n > 1 else 0
    return 2 * macs if complex_fft else macs


# torch's FLOP counter counts 2 flops per multiply-add (MACs = flops / 2): the formulas follow that convention
def _r2c_flops(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return 2 * fft_macs(x_shape, dim)


def _c2r_flops(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return 2 * fft_macs(out_shape, dim)  # counted on the real grid it returns, as Table 1 counts the inverse


def _c2c_flops(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return 2 * fft_macs(x_shape, dim, complex_fft=True)


FFT_FLOP_FORMULAS: Dict[Any, Callable[..., int]] = {
    torch.ops.aten._fft_r2c: _r2c_flops,
    torch.ops.aten._fft_c2r: _c2r_flops,
    torch.ops.aten._fft_c2c: _c2c_flops,
}


def register_fft_flop_formulas() -> None:
    """Register the FFT formulas with torch.utils.flop_counter (a formula torch has is kept)."""
    for op, formula in FFT_FLOP_FORMULAS.items():
        try:
            register_flop_formula(op)(formula)
        except RuntimeError:  # "duplicate registrations": registered already (by us, or by torch itself)
            pass


def fvcore_handles() -> Dict[str, Callable]:
    """fvcore op handles for the FFT ops (MACs, the authors' count), for `FlopCountAnalysis.set_op_handle(**...)`.

    fvcore counts a traced model: set the `fft` backend first (`set_filter_backend(model, 'fft')`), otherwise the
    traced graph holds the DFT matrix products of `auto`, which fvcore counts as matmuls.
    """
    def shape(value) -> list:
        return value.type().sizes()

    def dims(value, rank: int, default: Optional[Sequence[int]]) -> list:
        d = value.toIValue()
        if d is None and value.node().kind() == 'prim::ListConstruct':  # dims traced as a list of constants
            d = [v.toIValue() for v in value.node().inputs()]
        d = default if d is None else [d] if isinstance(d, int) else d
        return list(range(rank)) if d is None else [a % rank for a in d]

    def fft(default: Optional[Sequence[int]], inverse: bool = False) -> Callable:
        def handle(inputs, outputs) -> int:
            grid = shape(outputs[0] if inverse else inputs[0])  # the real grid: an inverse FFT's output
            return fft_macs(grid, dims(inputs[2], len(grid), default))
        return handle

    return {
        'aten::fft_rfft': fft((-1,)), 'aten::fft_rfft2': fft((-2, -1)), 'aten::fft_rfftn': fft(None),
        'aten::fft_irfft': fft((-1,), True), 'aten::fft_irfft2': fft((-2, -1), True),
        'aten::fft_irfftn': fft(None, True),
    }


def _filters(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, _GlobalFilterNd)]


@contextmanager
def _pinned_backend(model: nn.Module, backend: Optional[str]) -> Iterator[None]:
    """Every global filter of `model` on `backend` for the duration (None: as the model is); restored after."""
    layers = _filters(model) if backend is not None else []
    saved = [m.filter_backend for m in layers]
    try:
        for m in layers:
            m.filter_backend = backend
        yield
    finally:
        for m, b in zip(layers, saved):
            m.filter_backend = b


def _runs_filters(model: nn.Module) -> bool:
    """Whether the model holds global filters: as modules, or (exported / traced graphs) in the nodes' module stack."""
    if _filters(model):
        return True
    graph = getattr(model, 'graph', None)
    for node in getattr(graph, 'nodes', ()):
        stack = node.meta.get('nn_module_stack') or {}
        if any('GlobalFilter' in str(v) for v in stack.values()):
            return True
    return False


@dataclass
class FlopCount:
    """MACs of one forward and how its global filters were counted.

    convention: 'fft' (FFTs counted as FFT_CONVENTION says), 'matmul' (the filters ran as DFT matrix products,
    counted as the matmuls they are: the cost of that backend, not of the FFT formulation) or 'none' (no global
    filter ran).
    """
    macs: int
    convention: str
    by_op: Dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def __str__(self) -> str:
        how = {'fft': f'FFTs: {FFT_CONVENTION}',
               'matmul': 'filters as DFT matrix products, counted as matmuls (not the FFT formulation)',
               'none': 'no global filter'}[self.convention]
        return f'{self.gmacs:.3f} GMACs ({how})'


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: Any, backend: Optional[str] = 'fft', **kwargs: Any) -> FlopCount:
    """MACs of `model(*inputs, **kwargs)` with torch's FLOP counter, the FFTs included.

    backend='fft' (default) runs every global filter with the FFT and counts it the authors' way: the model's cost
    as published. 'matmul' counts the DFT matrix products instead, None the model as it is (an exported program's
    `.module()` or a traced graph runs `matmul`). The result says which convention it used.
    """
    if hasattr(model, 'module') and hasattr(model, 'graph_signature'):  # a torch.export ExportedProgram
        model = model.module()
    with _pinned_backend(model, backend), FlopCounterMode(display=False, custom_mapping=FFT_FLOP_FORMULAS) as c:
        model(*inputs, **kwargs)
    by_op = {str(op): flops // 2 for op, flops in c.get_flop_counts().get('Global', {}).items()}  # one key per op
    ffts = any('_fft_' in op for op in by_op)
    convention = 'fft' if ffts else 'matmul' if _runs_filters(model) else 'none'
    return FlopCount(macs=c.get_total_flops() // 2, convention=convention, by_op=by_op)


@torch.no_grad()
def profile_model(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Dict[str, float]:
    """{'params_m', 'gmacs', 'macts'}: millions of parameters, GMACs (the FFTs counted the authors' way, whatever
    backend the model is set to: deterministic) and millions of activations (outputs of the linear and conv layers,
    as fvcore counts them) for one image of `input_size`."""
    was_training = model.training
    model.eval()
    activations = [0]

    def count(module, inputs, output):
        activations[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        x = torch.zeros(1, *input_size, dtype=next(model.parameters()).dtype)
        cost = count_macs(model, x, backend='fft')
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
        'gmacs': cost.macs / 1e9,
        'macts': activations[0] / 1e6,
    }


register_fft_flop_formulas()

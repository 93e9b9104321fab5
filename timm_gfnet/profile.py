"""Measured model cost: parameters, MACs (including the FFTs, which torch's FLOP counter leaves out) and activations."""
import math
from typing import Dict, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['profile_model']


def _fft_flops(x_shape: Sequence[int], dim: Sequence[int]) -> int:
    # a real FFT of n points costs about 2.5 n log2 n flops (half the 5 n log2 n of a complex one)
    points = math.prod(x_shape[d] for d in dim)
    return int(2.5 * math.prod(x_shape) * math.log2(max(points, 2)))


def _r2c(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(x_shape, dim)


def _c2r(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_flops(out_shape, dim)


_FFT_FLOPS = {torch.ops.aten._fft_r2c: _r2c, torch.ops.aten._fft_c2r: _c2r}


@torch.no_grad()
def profile_model(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Dict[str, float]:
    """{'params_m', 'gmacs', 'macts'}: millions of parameters, GMACs and millions of activations (outputs of the
    linear and conv layers, as fvcore counts them) for one image of `input_size`."""
    was_training = model.training
    model.eval()
    activations = [0]

    def count(module, inputs, output):
        activations[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        x = torch.zeros(1, *input_size, dtype=next(model.parameters()).dtype)
        with FlopCounterMode(display=False, custom_mapping=_FFT_FLOPS) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
        'gmacs': counter.get_total_flops() / 2e9,
        'macts': activations[0] / 1e6,
    }

"""The filter alone, bf16, (B, H, W, C) input: main's dft_filter vs the prototypes vs the authors' float32 FFT."""
import os
import sys

import torch
from filters import (
    filter_full2d,
    filter_full2d_left,
    filter_full2d_t,
    filter_ref,
    filter_sep_t,
    filter_sep_tokens_first,
    filter_tokens_first,
)
from harness import interleaved, table

from timm_gfnet.filter_backends import global_filter_matmul

torch.set_num_threads(int(os.environ.get("THREADS", "2")))  # THREADS=1 on a crowded machine


def run(B, H, W, C, dtype=torch.bfloat16):
    x = torch.randn(B, H, W, C).to(dtype)
    w = torch.randn(H, W // 2 + 1, C, 2) * 0.5
    xt = x.reshape(B, H * W, C).transpose(0, 1).contiguous()
    fns = {
        'main matmul backend (dft_filter)': lambda: global_filter_matmul(x, w),
        'authors fft (float32)': lambda: filter_ref(x, w),
        'full2d, transposes (drop-in)': lambda: filter_full2d(x, w),
        'full2d right operand (Linear), fold': lambda: filter_full2d_t(x, w, True),
        'full2d left operand, broadcast': lambda: filter_full2d_left(x, w),
        'tokens-first full2d (no transposes)': lambda: filter_tokens_first(xt, w),
        'tokens-first separable': lambda: filter_sep_tokens_first(xt, w),
        'separable right operand (Linear), fold (sep_t)': lambda: filter_sep_t(x, w),
    }
    with torch.inference_mode():
        rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
        res = interleaved(fns, 'main matmul backend (dft_filter)', rounds=rounds, inner=1)
    print(table(res, f'filter {B}x{H}x{W}x{C} {dtype}'))


if __name__ == '__main__':
    run(8, 14, 14, 384)
    run(2, 28, 28, 384)
    run(1, 48, 48, 384)

"""torch.profiler op table of one forward of gfnet_s (prototype variants) and deit_small, b8 224, bf16.
Usage: profile_model.py VARIANT|main|deit autocast|weights [ROWS]."""
import os
import sys

import timm
import torch
from model import VARIANTS
from torch.profiler import ProfilerActivity, profile

import timm_gfnet  # noqa: F401
from timm_gfnet.global_filter import set_filter_backend

torch.set_num_threads(int(os.environ.get('THREADS', '2')))


def main():
    which, mode = sys.argv[1], sys.argv[2]
    size = int(os.environ.get('SIZE', '224'))
    batch = int(os.environ.get('BATCH', '8'))
    name = 'deit_small_patch16_224' if which == 'deit' else 'gfnet_s'
    m = timm.create_model(name, img_size=size).eval()
    x = torch.randn(batch, 3, size, size)
    if mode == 'weights':
        m, x = m.to(torch.bfloat16), x.to(torch.bfloat16)
    if which == 'main':
        set_filter_backend(m, 'matmul')
    fn = (lambda: m(x)) if which in ('main', 'deit') else (lambda: VARIANTS[which](m, x))
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=mode == 'autocast'):
        for _ in range(2):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 14
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


if __name__ == '__main__':
    main()

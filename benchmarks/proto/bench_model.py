"""gfnet_s: main (auto / matmul / fft = reference) vs the prototype forwards vs timm's deit_small_patch16_224,
bf16 autocast and bf16 weights, interleaved. Usage: bench_model.py SIZE BATCH ROUNDS [autocast|weights|both]."""
import copy
import os
import sys
from functools import partial

import timm
import torch
from harness import interleaved, table
from model import VARIANTS

import timm_gfnet  # noqa: F401  registers gfnet_s
from timm_gfnet.global_filter import set_filter_backend

torch.set_num_threads(int(os.environ.get("THREADS", "2")))  # THREADS=1 on a crowded machine


def main():
    size, batch, rounds = (int(a) for a in sys.argv[1:4])
    modes = sys.argv[4] if len(sys.argv) > 4 else 'both'
    torch.manual_seed(0)
    g = timm.create_model('gfnet_s', img_size=size).eval()
    d = timm.create_model('deit_small_patch16_224', img_size=size).eval()
    x = torch.randn(batch, 3, size, size)
    for mode in (['autocast', 'weights'] if modes == 'both' else [modes]):
        gm, dm, xi = g, d, x
        if mode == 'weights':
            gm, dm, xi = copy.deepcopy(g).to(torch.bfloat16), copy.deepcopy(d).to(torch.bfloat16), x.to(torch.bfloat16)
        gmm = set_filter_backend(copy.deepcopy(gm), 'matmul')
        gref = set_filter_backend(copy.deepcopy(gm), 'fft')
        fns = {
            'deit_small': partial(dm, xi),
            'main auto': partial(gm, xi),
            'main matmul': partial(gmm, xi),
            'reference (fft backend)': partial(gref, xi),
        }
        only = os.environ.get('ONLY')  # comma-separated variant names: a shorter run
        for k, v in VARIANTS.items():
            if not only or k in only.split(','):
                fns['proto ' + k] = partial(v, gm, xi)
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=mode == 'autocast'):
            with torch.autocast('cpu', enabled=False):
                ref = g(x.float()).float()
            outs = {k: f().float() for k, f in fns.items() if k != 'deit_small'}
            for k, o in outs.items():
                print(f'{mode} {k}: rel L2 vs fp32 {((o - ref).norm() / ref.norm()).item():.2e}')
            res = interleaved(fns, 'deit_small', rounds=rounds, inner=1)
        print(table(res, f'gfnet_s {size} b{batch}, bf16 {mode}; baseline deit_small'))


if __name__ == '__main__':
    main()

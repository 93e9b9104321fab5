"""bf16 logits vs float32 on the authors' weight scale (tests/reference.py recipe, its input batch), gfnet_s at 224
and 448: main (auto, matmul, fft) and the prototypes, under bf16 autocast and with bf16 weights."""
import copy
import os
import sys

import timm
import torch
import torch.nn.functional as F
from model import VARIANTS

import timm_gfnet  # noqa: F401
from timm_gfnet.gfnet import checkpoint_filter_fn
from timm_gfnet.global_filter import set_filter_backend

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tests'))
from reference import authors_state_dict, input_batch  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    torch.set_num_threads(1)
    for size in (224, 448):
        m = timm.create_model('gfnet_s', img_size=size).eval()
        m.load_state_dict(checkpoint_filter_fn(authors_state_dict('gfnet_s'), m))
        x = input_batch()
        if size != 224:
            x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
        with torch.inference_mode():
            ref = m(x)
            runs = {'main auto': lambda mm, xx: mm(xx),
                    'main matmul': lambda mm, xx: set_filter_backend(copy.deepcopy(mm), 'matmul')(xx),
                    'reference (fft)': lambda mm, xx: set_filter_backend(copy.deepcopy(mm), 'fft')(xx)}
            runs.update({'proto ' + k: v for k, v in VARIANTS.items()})
            for k, f in runs.items():
                f32 = rel(f(m, x), ref)
                with torch.autocast('cpu', dtype=torch.bfloat16):
                    ac = rel(f(m, x).float(), ref)
                bw = rel(f(copy.deepcopy(m).bfloat16(), x.bfloat16()).float(), ref)
                print(f'| {size} | {k} | {f32:.1e} | {ac:.2e} | {bw:.2e} |')


if __name__ == '__main__':
    print('| size | path | float32 vs main float32 | bf16 autocast | bf16 weights |')
    print('|---|---|---|---|---|')
    main()

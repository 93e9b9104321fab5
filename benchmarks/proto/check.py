"""Float32 (and float64) agreement of every prototype filter with the authors' FFT formulation."""
from functools import partial

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


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    torch.manual_seed(0)
    for (B, H, W, C) in [(2, 14, 14, 16), (2, 28, 28, 8), (1, 7, 7, 8), (2, 14, 9, 8), (1, 5, 12, 4)]:
        x = torch.randn(B, H, W, C)
        w = torch.randn(H, W // 2 + 1, C, 2) * 0.5  # arbitrary: not Hermitian along H at the DC / Nyquist columns
        ref = filter_ref(x, w)
        xt = x.reshape(B, H * W, C).transpose(0, 1).contiguous()  # (N, B, C) token-first

        def tf(f, xt=xt, w=w, shape=x.shape):
            return f(xt, w).transpose(0, 1).reshape(shape)
        out = {
            'full2d': filter_full2d(x, w), 'full2d_t': filter_full2d_t(x, w),
            'full2d_t_nofold': filter_full2d_t(x, w, False), 'full2d_left': filter_full2d_left(x, w),
            'tokens_first_fold': tf(partial(filter_tokens_first, fold=True)),
            'sep_tokens_first': tf(filter_sep_tokens_first), 'sep_t': filter_sep_t(x, w),
        }
        print((B, H, W, C), ' '.join(f'{k} {rel(v, ref):.1e}' for k, v in out.items()))
        assert all(rel(v, ref) < 1e-6 for v in out.values())
        # float64 through the prototype vs float64 FFT: the matrices themselves are exact
        spec = torch.fft.rfft2(x.double(), dim=(1, 2), norm='ortho') * torch.view_as_complex(w.double())
        ref64 = torch.fft.irfft2(spec, s=(H, W), dim=(1, 2), norm='ortho')
        print('   float64 full2d', f'{rel(filter_full2d(x.double(), w.double()), ref64):.1e}')


if __name__ == '__main__':
    main()

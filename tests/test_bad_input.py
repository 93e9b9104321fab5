"""Bad input of every kind gives a clear error that names the problem and the fix, never a silent wrong answer.

The layer's tensors, and the command line through the installed `timm-gfnet` script. The models' input checks are in
test_gfnet.py, files and downloads in test_checkpoint.py.
"""

import pytest
import torch

from timm_gfnet import GlobalFilter

GLOBAL_FILTER_CASES = [
    ('tokens do not match spatial_size', dict(spatial_size=(6, 10)), (2, 59, 16),
     'GlobalFilter got 59 tokens but spatial_size 6x10 holds 60: pass the grid the tokens come from.'),
    ('spatial_size of another rank', dict(spatial_size=(12,)), (2, 12, 16),
     'GlobalFilter takes spatial_size=(H, W): 2 positive sizes, got (12,).'),
    ('negative spatial_size', dict(spatial_size=(-6, -10)), (2, 60, 16),
     'GlobalFilter takes spatial_size=(H, W): 2 positive sizes, got (-6, -10).'),
    ('tokens not a square, no spatial_size', {}, (2, 60, 16),
     'GlobalFilter got 60 tokens, which is not a square grid: pass spatial_size=(H, W).'),
    ('rank 2', {}, (60, 16),
     'GlobalFilter expects (B, H, W, C) or (B, N, C) input, got a tensor of shape [60, 16].'),
    ('rank 5', {}, (1, 2, 6, 10, 16),
     'GlobalFilter expects (B, H, W, C) or (B, N, C) input, got a tensor of shape [1, 2, 6, 10, 16].'),
    ('channels first', {}, (2, 16, 6, 10),
     'GlobalFilter has 16 channels, got input with 10 (channels last).'),
    ('other grid, fixed size', {}, (2, 7, 10, 16),
     'GlobalFilter was built for a 6x10 token grid and got 7x10: create the layer with dynamic_size=True to '
     'resample its filter to other sizes.'),
]


@pytest.mark.parametrize('case,kwargs,shape,message', GLOBAL_FILTER_CASES, ids=[c[0] for c in GLOBAL_FILTER_CASES])
def test_global_filter_bad_input(case, kwargs, shape, message):
    layer = GlobalFilter(16, grid_size=(6, 10))
    with pytest.raises(ValueError) as e:
        layer(torch.randn(*shape), **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize('dtype', [torch.int64, torch.uint8, torch.bool])
def test_global_filter_refuses_integer_input(dtype):
    with pytest.raises(ValueError, match='^GlobalFilter ') as e:
        GlobalFilter(16, grid_size=(6, 10))(torch.ones(2, 6, 10, 16, dtype=dtype))
    assert 'got ' + str(dtype) in str(e.value) and 'x.float()' in str(e.value)



"""FLOPs with the FFT counted: torch's FlopCounterMode once the package is imported, fvcore handles, the authors'
convention, the seven variants against the published figures, and the README's table."""
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from timm_gfnet import GlobalFilter, GlobalFilter1d, GlobalFilter3d, set_filter_backend
from timm_gfnet.flops import count_macs, fvcore_handles, profile_model
from timm_gfnet.published import PUBLISHED

README = Path(__file__).resolve().parent.parent / 'README.md'


def _authors_fft_macs(B: int, size, C: int) -> int:
    """Table 1 of the paper: one real FFT of an H x W x D grid costs HWD ceil(log2 HW) (here for any rank)."""
    n = math.prod(size)
    return B * C * n * math.ceil(math.log2(n))


@pytest.mark.parametrize('layer,x', [
    (GlobalFilter1d(8, 12, fmt='NCL'), torch.randn(2, 8, 12)),
    (GlobalFilter(8, (14, 14)), torch.randn(2, 14, 14, 8)),
    (GlobalFilter3d(8, (3, 4, 6)), torch.randn(2, 3, 4, 6, 8)),
], ids=['1d', '2d', '3d'])
def test_flop_counter_counts_the_ffts(layer, x):
    """Plain FlopCounterMode, no custom mapping: the package registered the FFT formulas (2 flops per MAC)."""
    size = x.shape[2:] if layer.fmt.startswith('NC') else x.shape[1:-1]
    per_fft = _authors_fft_macs(2, size, 8)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        set_filter_backend(layer, 'fft')(x)
    counts = {str(k): v for k, v in counter.get_flop_counts()['Global'].items()}
    assert counts == {'aten._fft_r2c': 2 * per_fft, 'aten._fft_c2r': 2 * per_fft}


def test_count_macs_says_which_convention():
    layer = GlobalFilter(8, (14, 14))
    x = torch.randn(1, 14, 14, 8)
    fft = count_macs(layer, x)
    assert fft.convention == 'fft' and fft.macs == 2 * _authors_fft_macs(1, (14, 14), 8)
    assert 'ceil(log2 n)' in str(fft)
    assert layer.filter_backend == 'auto'  # pinned for the count only
    matmul = count_macs(layer, x, backend='matmul')
    # the four DFT matmuls: (16 x 14) W-DFT on 14 rows, (28 x 28) H-DFT on 8 columns x 8 channels, and back
    assert matmul.convention == 'matmul' and matmul.macs == 14 * 16 * 14 * 8 * 2 + 28 * 28 * 8 * 8 * 2
    exported = torch.export.export(layer, (x,))  # an exported graph runs the real-valued DFT
    assert count_macs(exported, x, backend=None).convention == 'matmul'
    assert count_macs(nn.Linear(8, 4), torch.randn(2, 8)).convention == 'none'


def test_fvcore_handles():
    fvcore = pytest.importorskip('fvcore.nn')
    layer = set_filter_backend(GlobalFilter3d(8, (3, 4, 6), fmt='NCDHW'), 'fft')  # fvcore traces: pin fft
    x = torch.randn(2, 8, 3, 4, 6)
    analysis = fvcore.FlopCountAnalysis(layer, x).set_op_handle(**fvcore_handles())
    analysis.unsupported_ops_warnings(False)
    assert analysis.total() == 2 * _authors_fft_macs(2, (3, 4, 6), 8)
    assert not [op for op in analysis.unsupported_ops() if 'fft' in op]  # element-wise ops stay uncounted


@pytest.fixture(scope='module')
def zoo():
    """Params and GMACs of every variant at 224, counted on the meta device, and each one's downsample conv MACs."""
    out = {}
    for name in timm.list_models('gfnet*'):
        with torch.device('meta'):
            model = timm.create_model(name)
            cost = profile_model(model)
        downsample = sum(m.out_channels * m.in_channels * 4 * (224 // 4 // 2 ** (i + 1)) ** 2
                         for i, m in enumerate(m for n, m in model.named_modules() if n.endswith('downsample.proj')))
        out[name] = (cost, downsample)
    return out


def test_variants_match_the_published_gmacs(zoo):
    """Isotropic: equal to the published figure to its rounding. Hierarchical: the published figures leave out the
    three 2x2 stride-2 downsampling convs (README, "FLOPs"); with them the count is 0.08-0.17 GMACs higher."""
    for name, (cost, downsample) in zoo.items():
        published = float(PUBLISHED[f'{name}.in1k']['flops'].rstrip('G'))
        if name.startswith('gfnet_h_'):
            assert downsample > 0 and round(cost['gmacs'], 1) != published
            assert round(cost['gmacs'] - downsample / 1e9, 1) == published, name
        else:
            assert downsample == 0 and round(cost['gmacs'], 1) == published, name


def test_readme_table_is_the_cli_output(zoo):
    """`timm-gfnet models` prints profile_model's numbers (the fft convention, whatever the backend): the README
    table must be that output."""
    table = re.search(r'\$ timm-gfnet models\n(.*?)```', README.read_text(), flags=re.S).group(1)
    rows = {line.split()[0]: line.split()[1:3] for line in table.splitlines()[2:] if line.strip()}
    assert set(rows) == set(zoo)
    for name, (cost, _) in zoo.items():
        assert rows[name] == [f"{cost['params_m']:.2f}", f"{cost['gmacs']:.2f}"], name

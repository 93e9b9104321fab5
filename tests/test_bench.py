"""`timm-gfnet bench` runs end to end (tiny sizes), and its memory measurement counts what is allocated."""
import json

import pytest
import torch

from timm_gfnet.bench import matrix_share, peak_memory_bytes
from timm_gfnet.cli import main

torch.set_num_threads(1)


def test_peak_memory_counts_live_tensors():
    def fn():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 19)  # 2 MiB, both alive: the peak
        del a, b
        c = torch.ones(1 << 20)  # 4 MiB after the others were freed
        return c.sum()
    peak = peak_memory_bytes(fn, torch.device('cpu'))
    assert 6 << 20 <= peak < (6 << 20) + (64 << 10)


def test_bench_quick_smoke(tmp_path, capsys):
    plot, data = tmp_path / 'bench.png', tmp_path / 'bench.json'
    assert main(['bench', '--quick', '--model', 'gfnet_ti', '--sizes', '64', '128', '--repeats', '1',
                 '--batch-size', '1', '--train-max-size', '64', '--plot', str(plot), '--json', str(data)]) == 0
    out, err = capsys.readouterr()
    assert '[' in err and 'warm-up gfnet_ti (ours)' in err  # progress while it runs
    for text in ('gfnet_ti (ours)', 'gfnet_ti (reference fft)', 'deit_small_patch16_224', 'peak MiB',
                 'the throughput of deit_small_patch16_224'):
        assert text in out, text
    assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rows = json.loads(data.read_text())['rows']
    assert {(r['model'], r['size']) for r in rows} == {
        (m, s) for m in ('gfnet_ti (ours)', 'gfnet_ti (reference fft)', 'deit_small_patch16_224') for s in (64, 128)}
    for r in rows:
        assert r['infer'] and all(v > 0 for v in r['infer']) and r['peak_bytes'] > 0
        assert bool(r['train']) == (r['size'] == 64)


@pytest.mark.parametrize('argv,message', [
    (['--sizes', '100'], 'multiples of 32'),
    (['--model', 'gfnet_zz'], "Unknown model 'gfnet_zz'"),
    (['--device', 'cuda'], 'no CUDA device'),
])
def test_bench_errors(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert main(['bench', '--no-progress', '--sizes', '64', *argv]) == 1
    assert message in capsys.readouterr().err


def test_matrix_share_counts_linear_kernels_only():
    lin = torch.nn.Linear(256, 256)
    a, x = torch.randn(256, 256), torch.randn(512, 256)
    with torch.inference_mode():
        only_linear = matrix_share(lambda: lin(x), torch.device('cpu'))
        no_linear = matrix_share(lambda: (a @ a).exp().sum(), torch.device('cpu'))  # a DFT-like matmul: no bias
    assert 0.5 < only_linear <= 1.0 and no_linear == 0

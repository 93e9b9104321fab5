"""`timm-gfnet bench` runs end to end (tiny sizes), every suite gives its table, and its memory measurement counts
what is allocated. No timings are checked: speed is measured by the benchmark, not asserted by tests."""
import json
from typing import List

import pytest
import timm
import torch
from timm.models import register_model

from timm_gfnet.bench import format_report, matrix_share, memory_use, peak_memory_bytes, run_bench
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


def test_memory_use_counts_what_a_call_keeps():
    cache: List[torch.Tensor] = []

    def fn():
        tmp = torch.ones(1 << 20)  # 4 MiB, freed
        cache.append(torch.ones(1 << 18))  # 1 MiB, kept (as a filter cache would be)
        return tmp.sum()
    use = memory_use(fn, torch.device('cpu'))
    assert use.retained == 1 << 20
    assert 5 << 20 <= use.peak < (5 << 20) + (64 << 10)


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


@register_model
def tiny_bench_gfnet(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """One block of width 32 at 64x64: the suites' structure at a fraction of a second per call. (Registered with
    timm for this process: its name must not match 'gfnet*', which other tests list as the zoo.)"""
    return timm.create_model('gfnet_ti', **dict(dict(depth=1, embed_dim=32, img_size=64), **kwargs))


@register_model
def tiny_bench_vit(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """A one-block ViT as the baseline."""
    return timm.create_model('vit_tiny_patch16_224', **dict(dict(depth=1, img_size=64), **kwargs))


def _lines_after(report: str, title: str) -> List[str]:
    """The table under a title of the report: its header, rule and rows."""
    block = report.split(title, 1)[1].strip('\n').split('\n\n', 1)[0]
    return block.splitlines()


def test_resolution_suite_state_counts_what_a_forward_leaves():
    """Memory column: the state is the weights, plus the DFT matrices the matmul backend caches (module-level,
    derived from the grid size); the fft backends and the ViT keep nothing (layers cache no resampled filters)."""
    result = run_bench(suites=['resolution'], model_name='tiny_bench_gfnet', baselines=['tiny_bench_vit'],
                       sizes=[96], batch_size=1, repeats=1, train_max_size=0, sample_s=0.01, progress=False,
                       backends=['matmul'])
    rows = {r.model: r for r in result['rows']}
    assert sorted(rows) == ['tiny_bench_gfnet (matmul)', 'tiny_bench_gfnet (ours)', 'tiny_bench_gfnet (reference fft)',
                            'tiny_bench_vit']
    weights = sum(p.numel() * 4 for p in timm.create_model('tiny_bench_gfnet').parameters())
    assert rows['tiny_bench_gfnet (ours)'].state_bytes == weights
    assert rows['tiny_bench_gfnet (reference fft)'].state_bytes == weights
    # a 6 x 6 grid: (2*4, 6) and (6, 2*4) for the last axis; (2*6, 2*6) twice and (2*6, 6) for the other; float32
    assert rows['tiny_bench_gfnet (matmul)'].state_bytes == weights + (8 * 6 * 2 + 12 * 12 * 2 + 12 * 6) * 4
    vit = timm.create_model('tiny_bench_vit')
    assert rows['tiny_bench_vit'].state_bytes == sum(t.numel() * 4 for t in [*vit.parameters(), *vit.buffers()])
    for r in rows.values():
        assert r.peak_bytes > r.state_bytes and len(r.infer) == 1 and not r.train
    table = _lines_after(format_report(result), 'Resolution sweep')
    assert table[1].split() == ['size', 'batch', 'model', 'infer', 'img/s', 'ours', 'vs', 'train', 'img/s', 'ours',
                                'vs', 'peak', 'MiB', 'of', 'it', 'state', 'note']
    assert [line.split()[2:4] for line in table[3:]] == [
        ['tiny_bench_gfnet', '(ours)'], ['tiny_bench_gfnet', '(reference'], ['tiny_bench_gfnet', '(matmul)'],
        ['tiny_bench_vit', table[6].split()[3]]]


def test_backends_suite_table():
    result = run_bench(suites=['backends'], variants=['tiny_bench_gfnet'], variant_sizes=[64, 96], batch_size=1,
                       repeats=1, sample_s=0.01, progress=False, baselines=[], backends=['benchmark'])
    assert [(r.model, r.size) for r in result['rows']] == [
        (f'tiny_bench_gfnet ({b})', s) for s in (64, 96) for b in ('ours', 'reference fft', 'matmul', 'benchmark')]
    report = format_report(result)
    table = _lines_after(report, 'Every variant, eager inference, each backend vs the reference:')
    assert [c.strip() for c in table[0].split('  ') if c.strip()] == [
        'variant', 'size', 'batch', 'ours img/s', 'ref img/s', 'matmul img/s', 'benchmark img/s', 'ours / ref',
        'matmul / ref', 'benchmark / ref']
    assert [line.split()[:2] for line in table[2:]] == [['tiny_bench_gfnet', '64'], ['tiny_bench_gfnet', '96']]
    assert all(line.split()[-1].endswith('x') for line in table[2:])
    # the opt-in timing backend ran: what it picked for the filter's shapes (4x4 and 6x6 grids of 32 channels; the
    # batches of 12 and 5 images that keep the pixels per batch constant, in power-of-two buckets)
    picked = report.split('benchmark picked: ', 1)[1]
    assert '4x4x32 batch<=16' in picked and '6x6x32 batch<=8' in picked


def test_compile_suite_table():
    """The compile suite's rows and summary lines (dynamo's 'eager' backend here: the table, not inductor, is
    under test)."""
    result = run_bench(suites=['compile'], model_name='tiny_bench_gfnet', compile_size=64, compile_batch=1,
                       repeats=1, sample_s=0.01, progress=False, baselines=[], compile_backend='eager')
    assert [r.model for r in result['rows']] == [
        'tiny_bench_gfnet (ours) eager', 'tiny_bench_gfnet (reference fft) eager',
        'tiny_bench_gfnet (ours) compiled', 'tiny_bench_gfnet (reference fft) compiled']
    assert sorted(result['compile_shares']) == ['compiled', 'eager']
    assert all(0 < v <= 1 for v in result['compile_shares'].values())
    report = format_report(result)
    assert 'compiled ours / compiled reference: ' in report and 'eager ours / eager reference: ' in report
    assert 'share of time in linear + conv layers (ours): eager ' in report


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_amp_suite_table(dtype):
    result = run_bench(suites=['amp'], model_name='tiny_bench_gfnet', compile_size=64, amp_dtype=dtype,
                       repeats=1, sample_s=0.01, progress=False, baselines=[])
    assert [(r.suite, r.model) for r in result['rows']] == [
        (f'amp {dtype}', f'tiny_bench_gfnet ({b})') for b in ('ours', 'reference fft', 'matmul')]
    assert result['amp']['logit_scale'] > 0 and result['amp']['max_abs_diff'] < result['amp']['logit_scale']
    report = format_report(result)
    assert f'amp {dtype} autocast, 64x64, batch 1:' in report
    assert 'ours / reference: ' in report and 'largest logit difference between the fft and matmul backends' in report

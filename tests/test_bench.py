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


def test_a_cnn_baseline_takes_any_size():
    """A baseline that is not a ViT (no dynamic_img_size argument) is timed as it is, not a TypeError."""
    result = run_bench(suites=['resolution'], model_name='tiny_bench_gfnet', baselines=['resnet10t'], sizes=[64],
                       batch_size=1, repeats=1, train_max_size=0, sample_s=0.01, progress=False)
    rows = {r.model: r for r in result['rows']}
    assert rows['resnet10t'].infer and rows['resnet10t'].peak_bytes > 0


def test_backends_suite_table():
    result = run_bench(suites=['backends'], variants=['tiny_bench_gfnet'], variant_sizes=[64, 96], batch_size=1,
                       repeats=1, sample_s=0.01, progress=False, baselines=[])
    assert [(r.model, r.size) for r in result['rows']] == [
        (f'tiny_bench_gfnet ({b})', s) for s in (64, 96) for b in ('ours', 'reference fft', 'matmul')]
    report = format_report(result)
    table = _lines_after(report, 'Every variant, eager inference, each backend vs the reference:')
    assert [c.strip() for c in table[0].split('  ') if c.strip()] == [
        'variant', 'size', 'batch', 'ours img/s', 'ref img/s', 'matmul img/s', 'ours / ref', 'matmul / ref']
    assert [line.split()[:2] for line in table[2:]] == [['tiny_bench_gfnet', '64'], ['tiny_bench_gfnet', '96']]
    assert all(line.split()[-1].endswith('x') for line in table[2:])


def test_runtimes_suite_table(tmp_path, monkeypatch):
    """Every path's row and columns (dynamo's 'eager' backend for the compiled rows: the table, not inductor, is under
    test), the agreement columns, the flag on OpenVINO's own precision, the matrix shares, the PNG; a runtime that is
    not installed is a skipped row that says how to install it."""
    from timm_gfnet.bench import plot_runtimes
    result = run_bench(suites=['runtimes'], model_name='tiny_bench_gfnet', runtime_size=64, runtime_batch=2,
                       repeats=1, sample_s=0.01, progress=False, baselines=[], compile_backend='eager')
    rows = {r.model: r for r in result['rows']}
    pytorch = [f'{m} {d} ({w})' for m in ('eager', 'compiled') for w in ('ours', 'reference') for d in ('fp32', 'bf16')]
    exported = [k for k in rows if k.startswith(('onnxruntime', 'openvino'))]
    assert sorted(rows) == sorted(pytorch + exported)
    assert exported[:2] == ['onnxruntime fp32 (ours)', 'openvino f32 (ours)'] and len(exported) == 3
    assert exported[2].startswith('openvino default ')
    for label in pytorch + exported:
        r = rows[label]
        assert r.infer and (bool(r.train) == (label in pytorch)), label
        assert set(r.agreement) == {'max_abs_diff', 'rel_l2', 'top1'}
    assert rows['eager fp32 (reference)'].agreement['max_abs_diff'] == 0  # the reference itself
    assert rows['onnxruntime fp32 (ours)'].agreement['rel_l2'] < 1e-5
    assert rows['eager bf16 (ours)'].agreement['rel_l2'] < 5e-2
    assert sorted(result['matrix_shares']) == ['compiled bf16', 'compiled fp32', 'eager bf16', 'eager fp32']
    assert all(0 < v <= 1 for v in result['matrix_shares'].values())
    report = format_report(result)
    table = _lines_after(report, 'agreement is ours against float32 eager ref):')
    assert [c.strip() for c in table[0].split('  ') if c.strip()] == [
        'path', 'ours img/s', 'ref img/s', 'ours / ref', 'train ours', 'train ref', 'ours / ref', 'max |dlogit|',
        'rel L2', 'top-1', 'note']
    paths = [line.split('  ')[0].strip() for line in table[2:9]]
    assert paths == ['eager fp32', 'eager bf16', 'compiled fp32', 'compiled bf16', 'onnxruntime fp32', 'openvino f32',
                     exported[2].rsplit(' (', 1)[0]]
    flagged = table[2 + paths.index(exported[2].rsplit(' (', 1)[0])]
    assert ('not f32' in flagged) == (not exported[2].startswith('openvino default f32'))
    assert table[9].startswith('  share of time in linear + conv kernels (ours): eager fp32 ')
    assert report.startswith('device: ') and 'threads' in report.splitlines()[0]
    assert plot_runtimes(result, str(tmp_path / 'r.png')) and (tmp_path / 'r.png').read_bytes()[:4] == b'\x89PNG'

    # without OpenVINO: a skipped row that says how to install it, never a crash
    from timm_gfnet import bench
    real = bench._runtime

    def without_openvino(name):
        if name == 'openvino':
            raise ImportError("No module named 'openvino'")
        return real(name)
    monkeypatch.setattr(bench, '_runtime', without_openvino)
    result = run_bench(suites=['runtimes'], model_name='tiny_bench_gfnet', runtime_size=64, runtime_batch=1,
                       repeats=1, sample_s=0.01, progress=False, runtimes=['onnxruntime', 'openvino'])
    rows = {r.model: r for r in result['rows']}
    assert sorted(rows) == ['onnxruntime fp32 (ours)', 'openvino f32 (ours)']
    assert rows['openvino f32 (ours)'].note == "skipped: not installed: pip install 'timm-gfnet[openvino]'"
    assert "skipped: not installed: pip install 'timm-gfnet[openvino]'" in format_report(result)

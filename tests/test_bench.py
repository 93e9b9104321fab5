"""`timm-gfnet bench`'s suites through `run_bench` / `format_report` / `plot_bench` (what the CLI calls), on tiny
models: each suite's rows and its table's columns, what the memory column counts. No timings are checked: speed is
measured by the benchmark, not asserted by tests."""
import re
import sys
from typing import List

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import register_model

from timm_gfnet.bench import format_report, plot_bench, run_bench

TINY = dict(repeats=2, sample_s=0.01, progress=False)


@register_model
def tiny_bench_gfnet(pretrained: bool = False, **kwargs) -> nn.Module:
    """One block of width 32 at 64x64. (Its name must not match 'gfnet*', which other tests list as the zoo.)"""
    return timm.create_model('gfnet_ti', **dict(dict(depth=1, embed_dim=32, img_size=64), **kwargs))


@register_model
def tiny_bench_vit(pretrained: bool = False, **kwargs) -> nn.Module:
    """A one-block ViT as the baseline."""
    return timm.create_model('vit_tiny_patch16_224', **dict(dict(depth=1, img_size=64), **kwargs))


class _Allocates(nn.Module):
    """Known memory: 4 + 2 MiB alive together in a forward, and a 1 MiB cache kept from the first call on."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 10)
        self.cache: List[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.ones(1 << 20), torch.ones(1 << 19)
        if not self.cache:
            self.cache.append(torch.ones(1 << 18))
        return self.head(x.mean((2, 3))) + float(a[0] + b[0])


@register_model
def tiny_bench_allocates(pretrained: bool = False, **kwargs) -> nn.Module:
    return _Allocates()


def _table(report: str, title: str) -> List[List[str]]:
    """The table under a title of the report, as cells: header, rule, rows."""
    lines = report.split(title, 1)[1].split(':\n', 1)[1].split('\n\n', 1)[0].splitlines()
    spans = [m.span() for m in re.finditer('-+', lines[1])]  # the rule under the header marks the columns
    return [[line[a:b if i < len(spans) - 1 else None].strip() for i, (a, b) in enumerate(spans)] for line in lines]


def test_resolution_suite(tmp_path):
    result = run_bench(suites=['resolution'], model_name='tiny_bench_gfnet', baselines=['tiny_bench_vit', 'resnet10t'],
                       sizes=[64, 96], batch_size=1, train_max_size=64, backends=['matmul'], **TINY)
    models = ['tiny_bench_gfnet (ours)', 'tiny_bench_gfnet (reference fft)', 'tiny_bench_gfnet (matmul)',
              'tiny_bench_vit', 'resnet10t']  # resnet10t: a CNN baseline takes any size as it is
    assert [(r.model, r.size) for r in result['rows']] == [(m, s) for s in (64, 96) for m in models]
    weights = sum(p.nbytes for p in timm.create_model('tiny_bench_gfnet').parameters())
    for r in result['rows']:
        assert len(r.infer) == 2 and all(v > 0 for v in r.infer) and len(r.train) == 2 * (r.size == 64), r
        assert r.peak_bytes > r.state_bytes > 0 and not r.note
        if r.model.startswith('tiny_bench_gfnet'):
            assert r.state_bytes >= weights
    table = _table(format_report(result), 'Resolution sweep')
    assert table[0] == ['size', 'batch', 'model', 'img/s', '1st / this', 'train img/s', 'train 1st / this', 'peak MiB',
                        'of it state']
    assert [line[2] for line in table[2:]] == models * 2
    assert [line[4] for line in table[2:] if line[2] != models[0]] and \
        all(line[4].endswith('x') for line in table[2:] if line[2] != models[0])
    png = tmp_path / 'bench.png'
    assert plot_bench(result, str(png)) == str(png) and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_resolution_memory_counts_what_a_forward_allocates_and_keeps():
    result = run_bench(suites=['resolution'], model_name='tiny_bench_gfnet', baselines=['tiny_bench_allocates'],
                       sizes=[64], batch_size=1, train_max_size=0, **TINY)
    row = next(r for r in result['rows'] if r.model == 'tiny_bench_allocates')
    assert row.state_bytes == (3 * 10 + 10) * 4 + (1 << 20)  # the weights and the cache the first call kept
    assert 6 << 20 <= row.peak_bytes - row.state_bytes < (6 << 20) + (64 << 10)


def test_backends_suite():
    result = run_bench(suites=['backends'], variants=['tiny_bench_gfnet'], variant_sizes=[64, 96], batch_size=1,
                       **TINY)
    assert [(r.run, r.model, r.size) for r in result['rows']] == [
        ('tiny_bench_gfnet', b, s) for s in (64, 96) for b in ('ours', 'reference fft', 'matmul')]
    table = _table(format_report(result), 'Every variant')
    assert table[0] == ['run', 'size', 'batch', 'model', 'img/s', '1st / this']
    assert [line[:2] + line[3:4] for line in table[2:5]] == [['tiny_bench_gfnet', '64', b]
                                                             for b in ('ours', 'reference fft', 'matmul')]
    assert table[3][5].endswith('x') and table[4][5].endswith('x')


def test_a_call_slower_than_max_call_s_is_timed_once():
    result = run_bench(suites=['backends'], variants=['tiny_bench_gfnet'], variant_sizes=[64], batch_size=1,
                       **dict(TINY, max_call_s=1e-9))
    assert all(len(r.infer) == 1 and r.note == 'infer: one call (over 1e-09 s)' for r in result['rows'])


def test_deit_suite():
    result = run_bench(suites=['deit'], model_name='tiny_bench_gfnet', baselines=['tiny_bench_vit'],
                       deit_sizes=[(64, 2), (96, 1)], **TINY)
    assert [(r.run, r.model, r.size, r.batch) for r in result['rows']] == [
        (run, m, s, b) for s, b in ((64, 2), (96, 1)) for run in ('bf16 autocast', 'bf16 weights')
        for m in ('tiny_bench_gfnet', 'tiny_bench_vit')]
    assert all(len(r.infer) == 2 and not r.train and not r.note for r in result['rows'])
    table = _table(format_report(result), 'GFNet and timm baselines in bf16')
    assert table[0] == ['run', 'size', 'batch', 'model', 'img/s', '1st / this']
    assert [line[5].endswith('x') for line in table[2:]] == [False, True] * 4


def test_runtimes_suite(tmp_path, monkeypatch):
    """Every path's row (dynamo's 'eager' backend for the compiled rows: the table, not inductor, is under test), the
    agreement columns, the flag on OpenVINO's own precision, the matrix shares; a runtime that is not installed is a
    skipped row that says how to install it."""
    pytest.importorskip('onnxruntime')
    pytest.importorskip('openvino')
    result = run_bench(suites=['runtimes'], model_name='tiny_bench_gfnet', runtime_size=64, runtime_batch=2,
                       compile_backend='eager', **TINY)
    rows = {r.label: r for r in result['rows']}
    pytorch = [f'{m} {d}: tiny_bench_gfnet ({w})' for m in ('eager', 'compiled') for d in ('fp32', 'bf16')
               for w in ('ours', 'reference fft')]
    exported = list(rows)[len(pytorch):]
    assert list(rows)[:len(pytorch)] == pytorch
    assert exported[:2] == ['onnxruntime fp32: tiny_bench_gfnet (ours)', 'openvino f32: tiny_bench_gfnet (ours)']
    assert len(exported) == 3 and exported[2].startswith('openvino default ')
    for label, r in rows.items():
        assert r.infer and bool(r.train) == (label in pytorch), label
        assert set(r.agreement) == {'max_abs_diff', 'rel_l2', 'top1'}
        assert (r.matrix_share is not None) == (label in pytorch and '(ours)' in label), label
    assert all(0 < r.matrix_share <= 1 for r in rows.values() if r.matrix_share is not None)
    assert rows['eager fp32: tiny_bench_gfnet (reference fft)'].agreement['max_abs_diff'] == 0  # the reference itself
    assert rows['onnxruntime fp32: tiny_bench_gfnet (ours)'].agreement['rel_l2'] < 1e-5
    assert rows['eager bf16: tiny_bench_gfnet (ours)'].agreement['rel_l2'] < 5e-2
    report = format_report(result)
    assert report.startswith('device: ') and 'threads' in report.splitlines()[0]
    table = _table(report, 'Every way to run it')
    assert table[0] == ['run', 'size', 'batch', 'model', 'img/s', '1st / this', 'train img/s', 'train 1st / this',
                        'linear+conv time', 'max |dlogit|', 'rel L2', 'top-1'] + ['note'] * ('bf16' in exported[2])
    assert [line[0] for line in table[2:]] == [label.split(':')[0] for label in rows]
    assert ('not f32' in table[-1][-1]) == (not exported[2].startswith('openvino default f32'))

    monkeypatch.setitem(sys.modules, 'openvino', None)  # not installed: a skipped row that says how to install it
    result = run_bench(suites=['runtimes'], model_name='tiny_bench_gfnet', runtime_size=64, runtime_batch=1,
                       runtimes=['onnxruntime', 'openvino'], **TINY)
    rows = {r.run: r for r in result['rows']}
    assert list(rows) == ['onnxruntime fp32', 'openvino f32'] and rows['onnxruntime fp32'].infer
    assert rows['openvino f32'].note == "skipped: not installed: pip install 'timm-gfnet[openvino]'"
    assert _table(format_report(result), 'Every way to run it')[-1][-1] == rows['openvino f32'].note


@pytest.mark.parametrize('kwargs,message', [
    (dict(model_name='gfnet_zz'), "Unknown model 'gfnet_zz'"),
    (dict(suites=['speed']), 'Unknown suite speed: pick from resolution, backends, runtimes, deit.'),
    (dict(runtimes=['tensorrt']), 'Unknown runtime tensorrt: pick from'),
    (dict(backends=['cufft']), 'Unknown filter backend cufft: pick from'),
    (dict(device='cuda'), 'no CUDA device'),
    (dict(deit_sizes=[(100, 1)]), 'Sizes must be multiples of 32'),
])
def test_bad_arguments(kwargs, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('.', r'\.')):
        run_bench(**dict(dict(sizes=[64], progress=False), **kwargs))

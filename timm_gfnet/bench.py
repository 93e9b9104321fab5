"""`timm-gfnet bench`: GFNet speed and memory, measured side by side in one run.

Rows come in groups; each round of a run times every row of every group, the rows of a group back to back (their
order alternating), so that a slow drift of a shared machine hits both sides alike. A ratio is the median of the
per-round ratios of a group's first row to each other row. Suites:

* resolution: our default filter backend (`auto`), the reference (`fft`, the authors' formulation) on the same
  weights (and other backends asked for), and timm baselines (deit_small) at the same input sizes: inference
  images/s, a training step, peak memory.
* backends: every variant and size, ours against the reference and `matmul`, eager (the no-regression check).
* runtimes: every way to run the model here: PyTorch eager and torch.compile in float32 and bf16 autocast (fp16
  too on CUDA), ours and the reference side by side, inference and training step; the exported ONNX in onnxruntime
  and OpenVINO (f32, and OpenVINO's own default precision); each path's agreement with float32 eager; the share of
  time in linear and conv kernels (the matrix work no filter removes). A runtime not installed is a skipped row.
* deit: GFNet against timm baselines (deit_small_patch16_224) in bf16, under autocast and with bf16 weights
  (`model.to(torch.bfloat16)`), at 224 batch 8 and 448 batch 2: the model a user would pick instead.

Peak memory is the model's parameters and buffers plus the highest amount allocated above them during its first
forward at a size (CUDA: the allocator's statistics; CPU: the allocation events of the PyTorch profiler's trace); the
state column adds to the weights what that forward leaves allocated (e.g. cached DFT matrices). The input batch is
not counted.
"""
import contextlib
import copy
import functools
import importlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import benchmark

from .global_filter import FILTER_BACKENDS, set_filter_backend

__all__ = ['run_bench', 'format_report', 'plot_bench', 'SUITES', 'RUNTIMES', 'QUICK', 'FULL']

SUITES = ('resolution', 'backends', 'runtimes', 'deit')
RUNTIMES = ('eager', 'compile', 'onnxruntime', 'openvino')
OURS, REF = 'auto', 'fft'  # our default backend, and the authors' formulation
LABELS = {OURS: 'ours', REF: 'reference fft'}  # how backends are named in the tables
DEIT_SIZES = ((224, 8), (448, 2))  # (size, batch) of the deit suite
QUICK = dict(sizes=(224, 448), batch_size=4, repeats=3, train_max_size=224, sample_s=0.3)
FULL = dict(sizes=(224, 384, 512, 768, 1024, 2048), batch_size=8, repeats=5, train_max_size=512, sample_s=1.0)
_INSTALL = {'onnxruntime': "pip install 'timm-gfnet[onnx]'", 'openvino': "pip install 'timm-gfnet[openvino]'"}
# /proc/cpuinfo flags that decide matrix speed, by the names vendors use
_MATRIX_FLAGS = {
    'avx2': 'AVX2', 'avx512f': 'AVX-512', 'avx512_vnni': 'AVX512-VNNI', 'avx512_bf16': 'AVX512-BF16',
    'avx512_fp16': 'AVX512-FP16', 'amx_bf16': 'AMX-BF16', 'amx_int8': 'AMX-INT8', 'amx_fp16': 'AMX-FP16',
    'asimd': 'NEON', 'sve': 'SVE', 'bf16': 'BF16', 'i8mm': 'I8MM',
}
# the kernels of nn.Linear (addmm: with a bias, unlike the filter's DFT products) and nn.Conv2d, eager or compiled
_MATRIX_OPS = ('addmm', 'linear_pointwise', 'mkl_linear', 'convolution')


@dataclass
class Row:
    suite: str
    run: str  # with `size`, the group: its rows are timed back to back and compared with its first row
    model: str
    size: int
    batch: int
    infer: List[float] = field(default_factory=list)  # images/s, one sample per round
    train: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None  # the model's state plus the activations' peak
    state_bytes: Optional[int] = None
    matrix_share: Optional[float] = None  # share of inference time in linear and conv kernels
    agreement: Dict[str, float] = field(default_factory=dict)  # logits against float32 eager (reference)
    note: str = ''

    @property
    def label(self) -> str:
        return f'{self.run}: {self.model}' if self.run else self.model


def _describe_device(device: torch.device) -> str:
    """The device and what decides its matrix speed: CPU model, matrix instructions, BLAS, threads; or the GPU."""
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        return f'{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})'
    info: Dict[str, str] = {}
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:  # Linux; elsewhere `platform` names the CPU
        for line in f:
            key, _, value = line.partition(':')
            info.setdefault(key.strip(), value.strip())
    flags = set((info.get('flags') or info.get('Features') or '').split())
    features = [name for flag, name in _MATRIX_FLAGS.items() if flag in flags] or ['matrix instructions unknown']
    blas = re.search(r'BLAS_INFO=(\w+)', torch.__config__.show())
    libs = [blas.group(1).upper() if blas else 'unknown BLAS'] + ['oneDNN'] * torch.backends.mkldnn.is_available()
    cpu = info.get('model name') or platform.processor() or platform.machine()
    return (f"{cpu} ({', '.join(features)}; torch kernels {torch.backends.cpu.get_cpu_capability()}), "
            f"{' + '.join(libs)}, {torch.get_num_threads()} threads")


def _progress(enabled: bool) -> Callable[[str], None]:
    """One line per step on stderr, with the elapsed time: the tables go to stdout."""
    start = time.perf_counter()

    def say(msg: str) -> None:
        if enabled:
            print(f'[{time.perf_counter() - start:6.1f}s] {msg}', file=sys.stderr, flush=True)
    return say


def _profiled(fn: Callable[[], Any], device: torch.device, **kwargs) -> Any:
    """`fn()` under the PyTorch profiler, with fd 2 muted: the profiler's C++ side logs there (start, stop)."""
    from torch.profiler import ProfilerActivity, profile
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
        activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == 'cuda')
        with profile(activities=activities, **kwargs) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return prof


def _memory_use(fn: Callable[[], Any], device: torch.device) -> Tuple[int, int]:
    """Peak and retained memory of one `fn()` call (its result dropped at once) above what was allocated before."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before
    with tempfile.TemporaryDirectory() as d:
        _profiled(fn, device, profile_memory=True).export_chrome_trace(os.path.join(d, 'trace.json'))
        with open(os.path.join(d, 'trace.json')) as f:
            events = [e for e in json.load(f)['traceEvents'] if e.get('name') == '[memory]']
    live = peak = 0
    for e in sorted(events, key=lambda e: (e['ts'], e['args'].get('Ev Idx', 0))):
        live += int(e['args']['Bytes']) if e['args'].get('Device Type') == 0 else 0  # 0: CPU
        peak = max(peak, live)
    return peak, live


def _matrix_share(fn: Callable[[], Any], device: torch.device) -> float:
    """Share of the kernel time of 3 calls (by the profiler's clock) spent in linear and conv kernels."""
    prof = _profiled(lambda: [fn() for _ in range(3)], device)
    times = {e.key: e.self_device_time_total if device.type == 'cuda' else e.self_cpu_time_total
             for e in prof.key_averages()}
    return sum(t for k, t in times.items() if any(op in k for op in _MATRIX_OPS)) / sum(times.values())


def _measure(
        title: str,
        rows: List[Row],
        infer: Dict[str, Callable[[], Any]],
        train: Dict[str, Callable[[], Any]],
        device: torch.device,
        repeats: int,
        sample_s: float,
        max_call_s: float,
        progress: Callable[[str], None],
        models: Optional[Dict[str, nn.Module]] = None,
        agree_with: Optional[str] = None,
) -> List[Row]:
    """Fill `rows` from the fns of their labels. First calls: its peak memory when `models` are given, else its logits
    (compared with those of `agree_with`), then a timed warm-up of each fn (a fn slower than `max_call_s` keeps that
    as its one sample). Then `repeats` rounds, one images/s sample per fn and round (torch.utils.benchmark's Timer
    over as many calls as fill about `sample_s`): each round starts with the next group, times its rows back to
    back, inference then training, and swaps their order, so that none always runs right after the same other one.
    A row that fails its first calls (out of memory, no C++ compiler for inductor) says why in its note; the others
    go on."""
    progress(title)
    by = {r.label: r for r in rows}
    outputs, timers = {}, {}
    for label in infer:
        progress(f'  first calls: {label}')
        try:
            if models:
                peak, retained = _memory_use(infer[label], device)
                weights = sum(t.nbytes for t in [*models[label].parameters(), *models[label].buffers()])
                by[label].state_bytes, by[label].peak_bytes = weights + retained, weights + peak
            else:
                outputs[label] = infer[label]()
            for kind, fns in (('infer', infer), ('train', train)):
                if label in fns:
                    timer = benchmark.Timer('fn()', globals={'fn': fns[label]}, num_threads=torch.get_num_threads())
                    timer.timeit(1)  # a warm-up: the first training step creates optimizer state, compiles
                    first = timer.timeit(1).mean
                    if first > max_call_s:
                        setattr(by[label], kind, [by[label].batch / first])
                        by[label].note = f'{kind}: one call (over {max_call_s:g} s)'
                    else:
                        timers[label, kind] = timer, max(1, int(sample_s / first))  # calls per sample
        except Exception as e:  # noqa: BLE001 - one path's failure is its row's note
            msg = f'{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ""}'
            by[label].note = 'out of memory' if 'OutOfMemory' in msg or 'out of memory' in msg else f'skipped: {msg}'
            timers = {k: t for k, t in timers.items() if k[0] != label}
            outputs.pop(label, None)
    if agree_with in outputs:
        ref = outputs[agree_with].float().cpu()
        for label, out in outputs.items():
            out = out.float().cpu()
            by[label].agreement = {'max_abs_diff': float((out - ref).abs().max()),
                                   'rel_l2': float((out - ref).norm() / ref.norm()),
                                   'top1': float((out.argmax(-1) == ref.argmax(-1)).float().mean())}
    groups = [[r.label for r in rows if (r.run, r.size) == g] for g in dict.fromkeys((r.run, r.size) for r in rows)]
    for i in range(repeats if timers else 0):
        progress(f'  round {i + 1}/{repeats}')
        for group in groups[i % len(groups):] + groups[:i % len(groups)]:
            for kind in ('infer', 'train'):
                for label in [lbl for lbl in (group[::-1] if i % 2 else group) if (lbl, kind) in timers]:
                    timer, number = timers[label, kind]
                    seconds = timer.timeit(number).mean
                    getattr(by[label], kind).append(by[label].batch / seconds)
    return rows


def _create(name: str, device: torch.device, **kwargs) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f'Unknown model {name!r}: pass a timm model name (see `timm-gfnet models`).')
    try:
        return timm.create_model(name, **kwargs).to(device).eval()
    except TypeError:
        if not kwargs:
            raise
        # not a ViT-like model (e.g. a CNN): it takes any input size as it is
        return timm.create_model(name).to(device).eval()


def _gfnets(name: str, backends: Sequence[str], device: torch.device, **kwargs) -> Dict[str, nn.Module]:
    """One model per filter backend, the same weights: ours and the reference first, then the others asked for."""
    base = _create(name, device, **kwargs)
    return {LABELS.get(b, b): set_filter_backend(copy.deepcopy(base), b) for b in dict.fromkeys([OURS, REF, *backends])}


def _infer_fn(model: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> Callable[[], Any]:
    def fn():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)
    return fn


def _train_fn(model: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> Callable[[], Any]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, model.num_classes, (x.shape[0],), device=x.device)

    def fn():
        model.train()
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()
    return fn


def _sweep(suite, name, baselines, sizes, batch_size, backends, train_max_size, device, measure):
    """`name` with each filter backend, and the baselines, at each size: one model each serves every size
    (dynamic_img_size: filters and position embeddings resampled), with about the same pixels per batch."""
    nets = _gfnets(name, backends, device, dynamic_img_size=True, dynamic_img_pad=suite == 'backends')
    # (run, model): in the backends suite each variant is a run of its own
    models = {(name, k) if suite == 'backends' else ('', f'{name} ({k})'): m for k, m in nets.items()}
    models.update({('', b): _create(b, device, dynamic_img_size=True) for b in baselines})
    rows = []
    for size in sizes:
        batch = max(1, round(batch_size * (224 / size) ** 2))
        x = torch.randn(batch, 3, size, size, device=device)
        size_rows = [Row(suite, run, model, size, batch) for run, model in models]
        by_label = {r.label: models[r.run, r.model] for r in size_rows}
        rows += measure(f'{suite}: {name} {size}x{size}, batch {batch}', size_rows,
                        {n: _infer_fn(m, x) for n, m in by_label.items()},
                        {n: _train_fn(m, x) for n, m in by_label.items()} if size <= train_max_size else {},
                        models=by_label if suite == 'resolution' else None)
    return rows


def _exported(model: nn.Module, x: torch.Tensor, runtimes: Sequence[str], workdir: str) -> Dict[str, Any]:
    """Inference fns of the exported ONNX model in onnxruntime and OpenVINO (f32, and OpenVINO's own default precision
    here) by path, or the reason a runtime is skipped."""
    wanted = {r: f'{r} {"fp32" if r == "onnxruntime" else "f32"}' for r in ('onnxruntime', 'openvino') if r in runtimes}
    if not wanted:
        return {}
    from .onnx_export import export_onnx
    try:
        onnx_file = str(export_onnx(model, os.path.join(workdir, 'model.onnx')))
    except ImportError as e:  # torch's exporter needs onnxscript
        return {path: f'exporting needs {e.name}: {_INSTALL["onnxruntime"]}' for path in wanted.values()}
    feed, threads, fns = x.cpu().numpy(), torch.get_num_threads(), {}
    for runtime, path in wanted.items():
        try:
            module = importlib.import_module(runtime)
        except ImportError:
            fns[path] = f'not installed: {_INSTALL[runtime]}'
            continue
        if runtime == 'onnxruntime':
            options = module.SessionOptions()
            options.intra_op_num_threads = threads
            session = module.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])
            fns[path] = lambda s=session: torch.from_numpy(s.run(None, {s.get_inputs()[0].name: feed})[0])
            continue
        for hint in ('f32', None):  # f32, then what OpenVINO picks by itself on this CPU
            config = {'INFERENCE_NUM_THREADS': threads, **({'INFERENCE_PRECISION_HINT': hint} if hint else {})}
            compiled = module.Core().compile_model(onnx_file, 'CPU', config)
            precision = compiled.get_property('INFERENCE_PRECISION_HINT').to_string()  # e.g. 'bf16', 'f32'
            fns[path if hint else f'openvino default {precision}'] = lambda c=compiled: torch.from_numpy(c(feed)[0])
    return fns


def _runtimes_suite(model_name, size, batch, runtimes, compile_backend, device, measure):
    nets = _gfnets(model_name, (), device)
    trainees = {who: copy.deepcopy(net) for who, net in nets.items()}  # their steps must not move the inference weights
    x = torch.randn(batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    dtypes = {'fp32': None, 'bf16': torch.bfloat16, **({'fp16': torch.float16} if device.type == 'cuda' else {})}
    rows, infer, train = [], {}, {}
    for mode in [m for m in ('eager', 'compiled') if m[:7] in runtimes]:  # 'compiled' is the runtime 'compile'
        for dname, dtype in dtypes.items():
            for who, net in nets.items():
                rows.append(Row('runtimes', f'{mode} {dname}', f'{model_name} ({who})', size, batch))
                n, t = (torch.compile(m, backend=compile_backend) if mode == 'compiled' else m
                        for m in (net, trainees[who]))
                infer[rows[-1].label], train[rows[-1].label] = _infer_fn(n, x, dtype), _train_fn(t, x, dtype)
    with tempfile.TemporaryDirectory() as workdir:
        for path, fn in _exported(nets['ours'], x, runtimes if device.type == 'cpu' else (), workdir).items():
            note = f'skipped: {fn}' if isinstance(fn, str) else 'not f32: the precision OpenVINO picks here' \
                if path.startswith('openvino default') and not path.endswith('f32') else ''
            rows.append(Row('runtimes', path, f'{model_name} (ours)', size, batch, note=note))
            if callable(fn):
                infer[rows[-1].label] = fn
        measure(f'runtimes: {size}x{size}, batch {batch}', rows, infer, train,
                agree_with=f'eager fp32: {model_name} ({LABELS[REF]})')
    for r in rows:
        if r.infer and r.model.endswith('(ours)') and r.run.startswith(('eager', 'compiled')):
            r.matrix_share = _matrix_share(infer[r.label], device)
    return rows


def _deit_suite(model_name, baselines, sizes, device, measure):
    rows = []
    for size, batch in sizes:
        x = torch.randn(batch, 3, size, size, device=device)
        nets = {n: _create(n, device, img_size=size) for n in (model_name, *baselines)}  # nothing resampled per call
        size_rows = [Row('deit', run, n, size, batch) for run in ('bf16 autocast', 'bf16 weights') for n in nets]
        rows += measure(f'deit: {size}x{size}, batch {batch}', size_rows, {
            r.label: _infer_fn(nets[r.model], x, torch.bfloat16) if r.run == 'bf16 autocast' else
            _infer_fn(copy.deepcopy(nets[r.model]).to(torch.bfloat16), x.to(torch.bfloat16)) for r in size_rows}, {})
    return rows


def run_bench(
        suites: Sequence[str] = ('resolution',),
        model_name: str = 'gfnet_s',
        baselines: Sequence[str] = ('deit_small_patch16_224',),
        sizes: Sequence[int] = FULL['sizes'],
        batch_size: int = FULL['batch_size'],
        repeats: int = FULL['repeats'],
        train_max_size: int = FULL['train_max_size'],
        variants: Optional[Sequence[str]] = None,
        variant_sizes: Sequence[int] = (224, 512, 1024),
        runtime_size: int = 224,
        runtime_batch: int = 8,
        runtimes: Sequence[str] = RUNTIMES,
        compile_backend: str = 'inductor',
        device: str = 'cpu',
        sample_s: float = FULL['sample_s'],
        max_call_s: float = 120.,
        progress: bool = True,
        backends: Sequence[str] = (),
        deit_sizes: Sequence[Tuple[int, int]] = DEIT_SIZES,
) -> Dict[str, Any]:
    """Run the suites; returns {'device', 'torch', 'timm', 'rows'} for `format_report` and `plot_bench`.

    `backends`: filter backends timed besides ours (`auto`) and the reference (`fft`) in the resolution suite; the
    backends suite always adds `matmul`. `runtimes`: which of RUNTIMES the runtimes suite runs. `deit_sizes`: the
    (size, batch) pairs of the deit suite, which compares `model_name` with `baselines`.
    """
    for what, given, known in (('suite', suites, SUITES), ('runtime', runtimes, RUNTIMES),
                               ('filter backend', backends, FILTER_BACKENDS)):
        unknown = [v for v in given if v not in known]
        if unknown:
            raise ValueError(f'Unknown {what} {", ".join(unknown)}: pick from {", ".join(known)}.')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda was asked for but no CUDA device is available: use --device cpu.')
    bad = [s for s in [*sizes, *variant_sizes, runtime_size, *(s for s, _ in deit_sizes)] if s < 32 or s % 32]
    if bad:
        raise ValueError(f'Sizes must be multiples of 32 (patch 16 and the hierarchical models\' stride 32): {bad}.')
    say = _progress(progress)
    measure = functools.partial(_measure, device=dev, repeats=repeats, sample_s=sample_s, max_call_s=max_call_s,
                                progress=say)
    rows: List[Row] = []
    if 'resolution' in suites:
        rows += _sweep('resolution', model_name, baselines, sizes, batch_size, backends, train_max_size, dev, measure)
    for v in (variants or timm.list_models('gfnet*')) if 'backends' in suites else ():
        rows += _sweep('backends', v, (), variant_sizes, batch_size, ('matmul', *backends), 0, dev, measure)
    if 'runtimes' in suites:
        rows += _runtimes_suite(model_name, runtime_size, runtime_batch, runtimes, compile_backend, dev, measure)
    if 'deit' in suites:
        rows += _deit_suite(model_name, baselines, deit_sizes, dev, measure)
    say('done')
    return {'device': _describe_device(dev), 'torch': torch.__version__, 'timm': timm.__version__, 'rows': rows}


_TITLES = {
    'resolution': "Resolution sweep (ours: the auto filter backend; reference fft: the authors' formulation)",
    'backends': 'Every variant, eager inference, each filter backend',
    'runtimes': 'Every way to run it (agreement: logits against eager fp32 with the reference backend)',
    'deit': 'GFNet and timm baselines in bf16: under autocast (eager), and with bf16 weights',
}


def _median(samples: List[float]) -> Optional[float]:
    return statistics.median(samples) if samples else None


def _ratio(a: List[float], b: List[float]) -> str:
    """a / b: the median of the per-round ratios when both were timed in the same rounds, else of the medians."""
    if len(a) == len(b) > 1:
        return f'{statistics.median(x / y for x, y in zip(a, b)):.2f}x'
    return f'{_median(a) / _median(b):.2f}x' if a and b else '-'


def _cells(r: Row, first: Row) -> Dict[str, str]:
    """A row's table cells by column; `first` is its group's first row (the one ratios compare with)."""
    def num(v: Optional[float], spec: str = '.3g') -> str:
        return '-' if v is None else format(v, spec)
    a = r.agreement or {}
    return {
        'run': r.run, 'size': str(r.size), 'batch': str(r.batch), 'model': r.model,
        'img/s': num(_median(r.infer)), '1st / this': '' if r is first else _ratio(first.infer, r.infer),
        'train img/s': num(_median(r.train)), 'train 1st / this': '' if r is first else _ratio(first.train, r.train),
        'peak MiB': num(r.peak_bytes and r.peak_bytes / 2 ** 20, '.0f'),
        'of it state': num(r.state_bytes and r.state_bytes / 2 ** 20, '.0f'),
        'linear+conv time': num(r.matrix_share, '.0%'), 'max |dlogit|': num(a.get('max_abs_diff'), '.1e'),
        'rel L2': num(a.get('rel_l2'), '.1e'), 'top-1': num(a.get('top1'), '.0%'), 'note': r.note,
    }


def _table(rows: List[Row]) -> str:
    """One line per row; columns with no value in any row are left out."""
    firsts: Dict[Tuple[str, int], Row] = {}
    cells = [_cells(r, firsts.setdefault((r.run, r.size), r)) for r in rows]
    header = [k for k in cells[0] if any(c[k] not in ('', '-') for c in cells)]
    lines = [header] + [[c[k] for k in header] for c in cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, ['-' * w for w in widths])
    return '\n'.join('  '.join(v.ljust(w) if k in ('run', 'model', 'note') else v.rjust(w)
                               for k, v, w in zip(header, line, widths)).rstrip() for line in lines)


def format_report(result: Dict[str, Any]) -> str:
    """Plain-text tables (Markdown-compatible enough to paste) of every suite that ran, under the device."""
    parts = [f"device: {result['device']}; torch {result['torch']}, timm {result['timm']}; images/s are medians over "
             "interleaved rounds; '1st / this' is the median of per-round ratios of the group's first row to this one"]
    for suite in SUITES:
        rows = [r for r in result['rows'] if r.suite == suite]
        if rows:
            parts.append(f'{_TITLES[suite]}:\n{_table(rows)}')
    return '\n\n'.join(parts)


def plot_bench(result: Dict[str, Any], path: str) -> Optional[str]:
    """A PNG of every suite that ran: inference and training images/s and peak memory of each row, one line per group
    (log scale); None when nothing was timed."""
    values = {'inference images/s': lambda r: _median(r.infer), 'training step images/s': lambda r: _median(r.train),
              'peak memory MiB': lambda r: r.peak_bytes and r.peak_bytes / 2 ** 20}
    panels = [(s, unit, [r for r in result['rows'] if r.suite == s and get(r)], get) for s in SUITES
              for unit, get in values.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    from .viz import pyplot, save_figure
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), squeeze=False, layout='constrained')
    for ax, (suite, unit, rows, get) in zip(axes[:, 0], panels):
        groups = list(dict.fromkeys((r.run, r.size) for r in rows))
        names = list(dict.fromkeys(r.model for r in rows))
        for k, name in enumerate(names):
            mine = [r for r in rows if r.model == name]
            ax.plot([get(r) for r in mine], [groups.index((r.run, r.size)) + 0.4 * (k + 0.5) / len(names) - 0.2
                                             for r in mine], 'os^vDP<>'[k % 8], linestyle='none', label=name)
        ax.set_yticks(range(len(groups)), [f'{run} {size}px'.strip() for run, size in groups])
        ax.invert_yaxis()
        ax.set_xscale('log')  # sizes 224 to 2048 span orders of magnitude; equal ratios, equal distances
        ax.set_xlabel(unit)
        ax.set_title(suite, fontsize=9)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(result['device'], fontsize=8)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path

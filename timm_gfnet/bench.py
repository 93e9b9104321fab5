"""`timm-gfnet bench`: GFNet speed and memory, measured side by side in one run.

Every comparison comes from interleaved repeats (each repeat, a round, times every contender once, in turn): a ratio
is the median of the two contenders' per-round ratios, so slow drifts of a shared machine hit both sides alike. Suites:

* resolution: our default filter backend (`auto`) vs the reference (`fft`) backend on the same weights (and any
  other backends asked for), and timm ViTs (deit_small / vit_small) at the same input sizes: inference images/s,
  peak memory, a training step.
* backends: ours vs the reference and `matmul`, eager, for every variant and size (the no-regression check).
* runtimes: every way to run the model on the machine at hand, in one interleaved run: PyTorch eager and
  torch.compile in float32 and bf16 autocast (fp16 too on CUDA), ours and the reference (the authors' formulation)
  side by side, inference and training step; the exported ONNX in onnxruntime and OpenVINO (f32, and OpenVINO's
  own default precision, flagged when it is not f32); each path's agreement with float32 eager; the share of time in
  the linear and conv kernels (the matrix work no filter can remove). A runtime that is not installed is a skipped
  row that says how to install it.

Peak memory is the model's own state (parameters and buffers, plus what a forward leaves allocated: the DFT
matrices the matmul backend caches) plus the highest amount of memory allocated above that during one inference
forward (CUDA: the caching allocator's statistics; CPU: the allocation events that the PyTorch profiler records
with `profile_memory=True`, read from its exported trace). The input batch is not counted. Public torch APIs only.
"""
import contextlib
import copy
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .global_filter import clear_filter_caches, set_filter_backend
from .hardware import describe_device

__all__ = ['run_bench', 'SUITES', 'RUNTIMES', 'QUICK', 'format_report', 'plot_resolution', 'plot_runtimes',
           'memory_use', 'peak_memory_bytes']

SUITES = ('resolution', 'backends', 'runtimes')
OURS, REF = 'auto', 'fft'  # our default backend, and the authors' formulation
# how each backend is named in the tables
LABELS = {OURS: 'ours', REF: 'reference fft', 'matmul': 'matmul'}
DEFAULT_BASELINES = ('deit_small_patch16_224',)
QUICK = dict(sizes=(224, 448), batch_size=4, repeats=3, train_max_size=224, sample_s=0.3)
FULL = dict(sizes=(224, 384, 512, 768, 1024, 2048), batch_size=8, repeats=5, train_max_size=512, sample_s=1.0)


class Progress:
    """One line per step on stderr, with the elapsed time: the table itself goes to stdout."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f'[{time.perf_counter() - self.start:6.1f}s] {msg}', file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Seconds per call, over `iters` back-to-back calls."""
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / iters


def interleaved_throughput(
        fns: Dict[str, Callable[[], Any]],
        batch: int,
        repeats: int,
        device: torch.device,
        sample_s: float = 1.0,
        max_call_s: float = 120.,
        progress: Optional[Progress] = None,
) -> Dict[str, List[float]]:
    """Images/s samples of each contender: a warm-up call each, then `repeats` rounds timing every one in turn.

    A contender whose warm-up call exceeds `max_call_s` keeps that single call as its only sample.
    """
    iters: Dict[str, int] = {}
    samples: Dict[str, List[float]] = {}
    for name, fn in fns.items():
        if progress:
            progress(f'  warm-up {name}')
        # first call: allocator, autotuning of the auto backend, lazy init; far too slow ones stop there
        t = _timed(fn, 1, device)
        if t > max_call_s:
            samples[name] = [batch / t]
            continue
        t = _timed(fn, 1, device)
        iters[name] = max(1, int(sample_s / max(t, 1e-6)))
    names = list(iters)
    for r in range(repeats):
        if progress and len(iters) > 1:
            progress(f'  round {r + 1}/{repeats}')
        # each round starts with the next contender: none always runs right after the same other one (whose freed
        # memory it would re-fault, whose caches it would find cold)
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples.setdefault(name, []).append(batch / _timed(fns[name], iters[name], device))
    return samples


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs start/stop lines to fd 2; keep the progress display readable."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


@dataclass
class MemoryUse:
    peak: int  # highest allocation above what was allocated before the call
    retained: int  # still allocated after it (caches the call filled; its result is dropped inside the call)


def _cpu_memory_events(fn: Callable[[], Any]) -> List[int]:
    """Sizes of the CPU allocations (positive) and frees (negative) during fn(), in order, from the trace the
    PyTorch profiler exports with profile_memory=True (its "[memory]" events)."""
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'trace.json')
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)['traceEvents']
    memory = [e for e in events if e.get('name') == '[memory]' and e['args'].get('Device Type') == 0]  # 0: CPU
    memory.sort(key=lambda e: (e['ts'], e['args'].get('Ev Idx', 0)))
    return [int(e['args']['Bytes']) for e in memory]


def memory_use(fn: Callable[[], Any], device: torch.device) -> MemoryUse:
    """Peak and retained memory of one `fn()` call (which should drop its result), above what was allocated
    before it. Frees of memory allocated before the call are not counted (the profiler does not see them)."""
    if device.type == 'cuda':
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return MemoryUse(torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before)
    live = peak = 0
    for size in _cpu_memory_events(fn):
        live += size
        peak = max(peak, live)
    return MemoryUse(peak, live)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Highest memory allocated during `fn()` above what was allocated before it."""
    return memory_use(fn, device).peak


def state_bytes(model: nn.Module) -> int:
    """Parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _batch_for(size: int, batch_224: int) -> int:
    # about the same number of pixels per batch at every size
    return max(1, round(batch_224 * (224 / size) ** 2))


def _create(name: str, device: torch.device, **kwargs) -> nn.Module:
    import timm
    if not timm.is_model(name):
        raise ValueError(f'Unknown model {name!r}: pass a timm model name (see `timm-gfnet models`).')
    try:
        return timm.create_model(name, **kwargs).to(device).eval()
    except TypeError:
        if 'dynamic_img_size' not in kwargs:
            raise
        # not a ViT-like model (e.g. a CNN): it takes any input size as it is
        return timm.create_model(name).to(device).eval()


def _label(model_name: str, backend: str) -> str:
    return f'{model_name} ({LABELS[backend]})'


def _unless_oom(fn: Callable[..., Any], *args) -> Any:
    """fn(*args), or None when it runs out of memory (the table says so; other sizes go on)."""
    try:
        return fn(*args)
    except RuntimeError as e:
        if isinstance(e, torch.OutOfMemoryError) or 'out of memory' in str(e).lower() or \
                'not enough memory' in str(e).lower():
            return None
        raise


@dataclass
class Row:
    suite: str
    model: str
    size: int
    batch: int
    infer: List[float] = field(default_factory=list)
    train: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None  # the model's state plus the activations' peak
    state_bytes: Optional[int] = None
    note: str = ''
    agreement: Dict[str, float] = field(default_factory=dict)  # runtimes: logits against float32 eager

    @property
    def infer_ips(self) -> Optional[float]:
        return statistics.median(self.infer) if self.infer else None

    @property
    def train_ips(self) -> Optional[float]:
        return statistics.median(self.train) if self.train else None


def _infer_fn(model: nn.Module, x: torch.Tensor, backend: Optional[str] = None) -> Callable[[], Any]:
    def fn():
        if backend is not None:
            set_filter_backend(model, backend)
        with torch.inference_mode():
            return model(x)
    return fn


def _train_fn(model: nn.Module, x: torch.Tensor, backend: Optional[str] = None) -> Callable[[], Any]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, model.num_classes, (x.shape[0],), device=x.device)

    def fn():
        if backend is not None:
            set_filter_backend(model, backend)
        model.train()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()
    return fn


def resolution_suite(
        model_name: str,
        baselines: Sequence[str],
        sizes: Sequence[int],
        batch_size: int,
        repeats: int,
        train_max_size: int,
        device: torch.device,
        sample_s: float,
        max_call_s: float,
        progress: Progress,
        backends: Sequence[str] = (),
) -> List[Row]:
    # one model per architecture serves every size (dynamic_img_size): filters and position embeddings are
    # resampled from the 224 ones, as a user of pretrained weights would run them
    gf = _create(model_name, device, dynamic_img_size=True)
    others = {b: _create(b, device, dynamic_img_size=True) for b in baselines}
    rows = []
    for size in sizes:
        batch = _batch_for(size, batch_size)
        x = torch.randn(batch, 3, size, size, device=device)
        contenders = {_label(model_name, b): (gf, b) for b in _backends(backends)}
        contenders.update({b: (m, None) for b, m in others.items()})
        size_rows = {name: Row('resolution', name, size, batch) for name in contenders}
        args = (batch, repeats, device, sample_s, max_call_s, progress)
        progress(f'{size}x{size}, batch {batch}: inference')
        infer = _unless_oom(interleaved_throughput, {n: _infer_fn(m, x, b) for n, (m, b) in contenders.items()}, *args)
        for n, s in (infer or {}).items():
            size_rows[n].infer = s
            if len(s) == 1 and repeats > 1:
                size_rows[n].note = 'one run (slow)'
        progress(f'{size}x{size}: peak memory')
        for n, (m, b) in contenders.items():
            # memory at this size as if it were the only one run: what the first call caches counts as state
            clear_filter_caches()
            first = _unless_oom(memory_use, _infer_fn(m, x, b), device)
            steady = _unless_oom(memory_use, _infer_fn(m, x, b), device)
            size_rows[n].state_bytes = state_bytes(m) + (first.retained if first else 0)
            size_rows[n].peak_bytes = None if steady is None else size_rows[n].state_bytes + steady.peak
        if size <= train_max_size:
            progress(f'{size}x{size}: training step')
            train = _unless_oom(interleaved_throughput, {n: _train_fn(m, x, b) for n, (m, b) in contenders.items()},
                                *args)
            for n, s in (train or {}).items():
                size_rows[n].train = s
        for r in size_rows.values():
            if not r.infer:
                r.note = 'out of memory'
        rows.extend(size_rows.values())
    return rows


def _backends(extra: Sequence[str]) -> List[str]:
    """Ours and the reference first, then the other backends asked for (each once)."""
    return list(dict.fromkeys([OURS, REF, *extra]))


def backends_suite(
        variants: Sequence[str],
        sizes: Sequence[int],
        batch_size: int,
        repeats: int,
        device: torch.device,
        sample_s: float,
        max_call_s: float,
        progress: Progress,
        backends: Sequence[str] = ('matmul',),
) -> List[Row]:
    rows = []
    names = _backends(backends)
    for v in variants:
        model = _create(v, device, dynamic_img_size=True, dynamic_img_pad=True)
        for size in sizes:
            batch = _batch_for(size, batch_size)
            x = torch.randn(batch, 3, size, size, device=device)
            progress(f'{v} {size}x{size}, batch {batch}')
            samples = interleaved_throughput(
                {b: _infer_fn(model, x, b) for b in names}, batch, repeats, device, sample_s, max_call_s, progress)
            rows += [Row('backends', _label(v, b), size, batch, infer=samples[b]) for b in names]
    return rows


# the kernels of nn.Linear (addmm: with a bias, unlike the DFT matmuls of the filter) and nn.Conv2d, eager or
# compiled by inductor (which calls them as extern kernels)
_MATRIX_OPS = ('addmm', 'linear_pointwise', 'mkl_linear', 'convolution')


def matrix_share(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Share of one call's wall time spent in linear and conv kernels (profiler; median of `repeats` calls)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    shares = []
    for _ in range(repeats):
        with _quiet_stderr(), profile(activities=activities) as prof:
            wall = _timed(fn, 1, device)
        events = [e for e in prof.key_averages() if any(k in e.key for k in _MATRIX_OPS)]
        busy = sum(e.self_device_time_total if device.type == 'cuda' else e.self_cpu_time_total for e in events)
        shares.append(busy / 1e6 / wall)
    return statistics.median(shares)


def _amp(fn: Callable[[], Any], device: torch.device, dtype: Optional[torch.dtype]) -> Callable[[], Any]:
    if dtype is None:
        return fn

    def run():
        with torch.autocast(device.type, dtype=dtype):
            return fn()
    return run


RUNTIMES = ('eager', 'compile', 'onnxruntime', 'openvino')
_INSTALL = {'onnxruntime': "pip install 'timm-gfnet[onnx]'", 'openvino': "pip install 'timm-gfnet[openvino]'"}


def _runtime(name: str) -> Any:
    """The module of an optional runtime (ImportError when it is not installed)."""
    return importlib.import_module(name)


def _skipped(suite: str, label: str, size: int, batch: int, why: str) -> Row:
    return Row(suite, label, size, batch, note=f'skipped: {why}')


def _exported_runtimes(
        model: nn.Module,
        x: torch.Tensor,
        runtimes: Sequence[str],
        progress: Progress,
        workdir: str,
) -> Tuple[Dict[str, Callable[[], Any]], List[Tuple[str, str]]]:
    """Inference callables of the exported ONNX model in onnxruntime and OpenVINO (f32, and OpenVINO's default
    precision on this machine), with (label, reason) for each runtime that is not installed or fails."""
    fns: Dict[str, Callable[[], Any]] = {}
    skipped: List[Tuple[str, str]] = []
    wanted = [r for r in ('onnxruntime', 'openvino') if r in runtimes]
    if not wanted:
        return fns, skipped
    try:
        _runtime('onnxscript')  # what torch's exporter needs
    except ImportError:
        return fns, [(f'{r} {"fp32" if r == "onnxruntime" else "f32"} (ours)',
                      f'exporting needs onnxscript: {_INSTALL["onnxruntime"]}') for r in wanted]
    from .onnx_export import export_onnx
    progress('exporting to ONNX (the matmul filter)')
    path = export_onnx(model, os.path.join(workdir, 'model.onnx'))
    threads = torch.get_num_threads()
    feed = x.cpu().numpy()
    if 'onnxruntime' in wanted:
        try:
            ort = _runtime('onnxruntime')
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
            name = session.get_inputs()[0].name
            fns['onnxruntime fp32 (ours)'] = lambda: torch.from_numpy(session.run(None, {name: feed})[0])
        except ImportError:
            skipped.append(('onnxruntime fp32 (ours)', f'not installed: {_INSTALL["onnxruntime"]}'))
    if 'openvino' in wanted:
        try:
            ov = _runtime('openvino')
        except ImportError:
            skipped.append(('openvino f32 (ours)', f'not installed: {_INSTALL["openvino"]}'))
        else:
            core = ov.Core()
            for hint in ('f32', None):  # f32, then what OpenVINO picks by itself on this CPU
                config = {'INFERENCE_NUM_THREADS': threads, **({'INFERENCE_PRECISION_HINT': hint} if hint else {})}
                compiled = core.compile_model(str(path), 'CPU', config)
                precision = compiled.get_property('INFERENCE_PRECISION_HINT').to_string()  # e.g. 'bf16', 'f32'
                label = 'openvino f32 (ours)' if hint else f'openvino default {precision} (ours)'
                fns[label] = (lambda c: lambda: torch.from_numpy(c(feed)[0]))(compiled)
    return fns, skipped


def _agreement(out: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    """How far logits are from the float32 eager reference: max |difference|, relative L2, top-1 agreement."""
    out, ref = out.float().cpu(), ref.float().cpu()
    return {'max_abs_diff': float((out - ref).abs().max()), 'rel_l2': float((out - ref).norm() / ref.norm()),
            'top1': float((out.argmax(-1) == ref.argmax(-1)).float().mean())}


def runtimes_suite(
        model_name: str,
        size: int,
        batch: int,
        repeats: int,
        device: torch.device,
        sample_s: float,
        max_call_s: float,
        progress: Progress,
        runtimes: Sequence[str] = RUNTIMES,
        train: bool = True,
        compile_backend: str = 'inductor',
) -> Tuple[List[Row], Dict[str, float]]:
    """Every way to run the model here, in one interleaved run: PyTorch eager and torch.compile in float32 and
    bf16 autocast (fp16 too on CUDA), each with our default backend and the reference one (the authors' code), the
    exported ONNX in onnxruntime and OpenVINO; inference, and the training step for the PyTorch paths; every path's
    agreement with float32 eager (reference). Returns the rows and the share of time in linear and conv kernels of
    our PyTorch paths."""
    suite = 'runtimes'
    base = _create(model_name, device)
    nets = {'ours': set_filter_backend(base, OURS), 'reference': set_filter_backend(copy.deepcopy(base), REF)}
    trainees = {who: copy.deepcopy(m) for who, m in nets.items()}  # their steps must not move the inference weights
    x = torch.randn(batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    dtypes: List[Tuple[str, Optional[torch.dtype]]] = [('fp32', None), ('bf16', torch.bfloat16)]
    if device.type == 'cuda':
        dtypes.append(('fp16', torch.float16))
    rows: Dict[str, Row] = {}
    infer: Dict[str, Callable[[], Any]] = {}
    steps: Dict[str, Callable[[], Any]] = {}
    modes = [m for m in ('eager', 'compiled') if (m == 'eager' and 'eager' in runtimes) or
             (m == 'compiled' and 'compile' in runtimes)]
    for mode in modes:
        compiled = {who: (torch.compile(nets[who], backend=compile_backend),
                          torch.compile(trainees[who], backend=compile_backend)) for who in nets} \
            if mode == 'compiled' else {}
        for dname, dtype in dtypes:
            for who in nets:  # ours and the reference of one path back to back in every round
                net, trainee = compiled[who] if mode == 'compiled' else (nets[who], trainees[who])
                label = f'{mode} {dname} ({who})'
                rows[label] = Row(suite, label, size, batch)
                infer[label] = _amp(_infer_fn(net, x), device, dtype)
                if train:
                    steps[label] = _amp(_train_fn(trainee, x), device, dtype)
    with tempfile.TemporaryDirectory() as workdir:
        exported, skipped = _exported_runtimes(base, x, runtimes if device.type == 'cpu' else (), progress, workdir)
        for label, fn in exported.items():
            rows[label] = Row(suite, label, size, batch)
            infer[label] = fn
        # warm-up first: compiling takes minutes on a small CPU and must not count as a (too slow) sample
        outputs = {}
        for label in list(infer):
            progress(f'  first call: {label}' + (' (compiling)' if label.startswith('compiled') else ''))
            try:
                outputs[label] = infer[label]()
                if label in steps:
                    steps[label]()
            except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for inductor: that path only
                rows[label].note = f'skipped: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ""}'
                infer.pop(label)
                steps.pop(label, None)
        reference = outputs.get('eager fp32 (reference)')
        for label, out in outputs.items():
            if reference is not None and label in infer:
                rows[label].agreement = _agreement(out, reference)
        progress(f'{size}x{size}, batch {batch}: inference, every path')
        for label, s in interleaved_throughput(infer, batch, repeats, device, sample_s, max_call_s, progress).items():
            rows[label].infer = s
    if steps:
        progress(f'{size}x{size}, batch {batch}: training step, every PyTorch path')
        for label, s in interleaved_throughput(steps, batch, repeats, device, sample_s, max_call_s, progress).items():
            rows[label].train = s
    for label, why in skipped:
        rows[label] = _skipped(suite, label, size, batch, why)
    shares = {}
    for label in [lbl for lbl in infer if lbl.endswith('(ours)') and lbl.startswith(('eager', 'compiled'))]:
        progress(f'  time in linear and conv kernels: {label}')
        shares[label.rsplit(' (', 1)[0]] = matrix_share(infer[label], device)
    return list(rows.values()), shares


def run_bench(
        suites: Sequence[str] = ('resolution',),
        model_name: str = 'gfnet_s',
        baselines: Sequence[str] = DEFAULT_BASELINES,
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
) -> Dict[str, Any]:
    """Run the suites; returns {'device', 'torch', 'rows', 'matrix_shares'} for the report.

    `backends`: filter backends timed besides ours (`auto`) and the reference (`fft`) in the resolution suite; the
    backends suite always adds `matmul`. `runtimes`: which of RUNTIMES the runtimes suite runs.
    """
    import timm
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f'Unknown suite {", ".join(unknown)}: pick from {", ".join(SUITES)}.')
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f'Unknown runtime {", ".join(unknown)}: pick from {", ".join(RUNTIMES)}.')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda was asked for but no CUDA device is available: use --device cpu.')
    bad = [s for s in [*sizes, *variant_sizes, runtime_size] if s < 32 or s % 32]
    if bad:
        raise ValueError(f'Sizes must be multiples of 32 (patch 16 and the hierarchical models\' stride 32): {bad}.')
    p = Progress(progress)
    out: Dict[str, Any] = {'device': describe_device(dev), 'rows': [], 'torch': torch.__version__}
    unknown = [b for b in backends if b not in LABELS]
    if unknown:
        raise ValueError(f'Unknown filter backend {", ".join(unknown)}: pick from {", ".join(LABELS)}.')
    if 'resolution' in suites:
        out['rows'] += resolution_suite(model_name, baselines, sizes, batch_size, repeats, train_max_size, dev,
                                        sample_s, max_call_s, p, backends)
    if 'backends' in suites:
        out['rows'] += backends_suite(variants or timm.list_models('gfnet*'), variant_sizes, batch_size, repeats,
                                      dev, sample_s, max_call_s, p, ('matmul', *backends))
    if 'runtimes' in suites:
        rows, out['matrix_shares'] = runtimes_suite(model_name, runtime_size, runtime_batch, repeats, dev, sample_s,
                                                    max_call_s, p, runtimes, compile_backend=compile_backend)
        out['rows'] += rows
    p('done')
    return out


def _fmt(v: Optional[float], spec: str = '.3g') -> str:
    return '-' if v is None else format(v, spec)


def _mib(n: Optional[int]) -> str:
    return '-' if n is None else f'{n / 2 ** 20:.0f}'


def _ratio(a: List[float], b: List[float]) -> str:
    """a / b from two contenders' samples: the median of their per-round ratios when both were timed in the same
    rounds (each round times them back to back: a drift of the machine cancels), else the ratio of medians."""
    if not a or not b:
        return '-'
    if len(a) == len(b) > 1:
        return f'{statistics.median(x / y for x, y in zip(a, b)):.2f}x'
    return f'{statistics.median(a) / statistics.median(b):.2f}x'


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ['  '.join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(line.rstrip() for line in lines)


def _backend_of(model_label: str) -> Optional[str]:
    """'gfnet_s (reference fft)' -> 'reference fft'; None for a baseline model."""
    return next((b for b in LABELS.values() if model_label.endswith(f' ({b})')), None)


def _short(label: str) -> str:
    return 'ref' if label == LABELS[REF] else label


def _split(label: str) -> Tuple[str, str]:
    """'compiled bf16 (ours)' -> ('compiled bf16', 'ours')."""
    path, who = label.rsplit(' (', 1)
    return path, who[:-1]


def _runtimes_report(rt: List['Row'], shares: Dict[str, float]) -> str:
    by = {_split(r.model): r for r in rt}
    paths = list(dict.fromkeys(_split(r.model)[0] for r in rt))
    table = []
    for path in paths:
        o, f = by.get((path, 'ours')), by.get((path, 'reference'))
        a = o.agreement if o is not None else {}
        table.append((
            path, _fmt(o.infer_ips if o else None), _fmt(f.infer_ips if f else None),
            _ratio(o.infer, f.infer) if o and f else '', _fmt(o.train_ips if o else None),
            _fmt(f.train_ips if f else None), _ratio(o.train, f.train) if o and f else '',
            f"{a['max_abs_diff']:.1e}" if a else '-', f"{a['rel_l2']:.1e}" if a else '-',
            f"{a['top1']:.0%}" if a else '-',
            '; '.join(n for n in (o.note if o else '', f.note if f else '',
                                  'not f32: the precision OpenVINO picks here' if path.startswith('openvino default')
                                  and not path.endswith('f32') else '') if n)))
    r0 = rt[0]
    text = (f'Every way to run it, {r0.size}x{r0.size}, batch {r0.batch} ("ref" is the reference fft backend, the '
            f"authors' formulation: the stand-in for their code; agreement is ours against float32 eager ref):\n"
            + _table(('path', 'ours img/s', 'ref img/s', 'ours / ref', 'train ours', 'train ref', 'ours / ref',
                      'max |dlogit|', 'rel L2', 'top-1', 'note'), table))
    if shares:
        text += '\n  share of time in linear + conv kernels (ours): ' + ', '.join(
            f'{k} {v:.0%}' for k, v in shares.items())
    return text


def format_report(result: Dict[str, Any]) -> str:
    """Plain-text tables (Markdown-compatible enough to paste) of every suite that ran."""
    rows: List[Row] = result['rows']
    parts = [f"device: {result['device']}, torch {result['torch']}; images/s are medians of interleaved repeats"]
    res = [r for r in rows if r.suite == 'resolution']
    if res:
        sizes = sorted({r.size for r in res})
        ours_name = next(r.model for r in res if r.model.endswith(f'({LABELS[OURS]})'))
        baseline_names = [n for n in dict.fromkeys(r.model for r in res) if _backend_of(n) is None]
        table = []
        for s in sizes:
            by = {r.model: r for r in res if r.size == s}
            ours = by[ours_name]
            for name, r in by.items():
                table.append((
                    f'{s}', f'{r.batch}', name, _fmt(r.infer_ips),
                    _ratio(ours.infer, r.infer) if r is not ours else '', _fmt(r.train_ips),
                    _ratio(ours.train, r.train) if r is not ours else '',
                    _mib(r.peak_bytes), _mib(r.state_bytes), r.note))
        parts.append('Resolution sweep (ours = default filter backend; "ours vs" = ours / that row):\n' + _table(
            ('size', 'batch', 'model', 'infer img/s', 'ours vs', 'train img/s', 'ours vs', 'peak MiB', 'of it state',
             'note'),
            table))
        if baseline_names:
            lines = []
            for b in baseline_names:
                for s in sizes:
                    by = {r.model: r for r in res if r.size == s}
                    o, d = by[ours_name], by[b]
                    mem = '-' if o.peak_bytes is None or d.peak_bytes is None else \
                        f'{o.peak_bytes / d.peak_bytes:.2f}x the memory'
                    lines.append(f'  {s}: {ours_name} {_ratio(o.infer, d.infer)} the throughput of {b}, '
                                 f'{mem}')
            parts.append('GFNet vs ViT at the same input size:\n' + '\n'.join(lines))
    bk = [r for r in rows if r.suite == 'backends']
    if bk:
        table = []
        keys = dict.fromkeys((r.model.rsplit(' (', 1)[0], r.size) for r in bk)
        labels = list(dict.fromkeys(_backend_of(r.model) for r in bk))
        others = [b for b in labels if b != LABELS[REF]]
        for v, s in keys:
            by = {_backend_of(r.model): r for r in bk if r.model.startswith(v + ' (') and r.size == s}
            f = by[LABELS[REF]]
            table.append((v, f'{s}', f'{f.batch}', *(_fmt(by[b].infer_ips) for b in labels),
                          *(_ratio(by[b].infer, f.infer) for b in others)))
        parts.append('Every variant, eager inference, each backend vs the reference:\n' + _table(
            ('variant', 'size', 'batch', *(f'{_short(b)} img/s' for b in labels),
             *(f'{_short(b)} / ref' for b in others)), table))
    rt = [r for r in rows if r.suite == 'runtimes']
    if rt:
        parts.append(_runtimes_report(rt, result.get('matrix_shares', {})))
    return '\n\n'.join(parts)


def plot_resolution(result: Dict[str, Any], path: str) -> Optional[str]:
    """Throughput and peak memory against resolution (log scales) as a PNG; None when no sweep ran."""
    res = [r for r in result['rows'] if r.suite == 'resolution']
    if not res:
        return None
    from .viz import pyplot, save_figure
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r.model for r in res):
        mine = [r for r in res if r.model == name]
        style = '-' if '(ours)' in name else '--' if 'reference' in name else ':'
        pts = [(r.size, r.infer_ips) for r in mine if r.infer_ips]
        if pts:
            line, = ax1.plot(*zip(*pts), style, marker='o', label=f'{name} inference')
            tr = [(r.size, r.train_ips) for r in mine if r.train_ips]
            if tr:
                ax1.plot(*zip(*tr), style, marker='x', color=line.get_color(), alpha=0.5, label=f'{name} train step')
        mem = [(r.size, r.peak_bytes / 2 ** 20) for r in mine if r.peak_bytes]
        if mem:
            ax2.plot(*zip(*mem), style, marker='o', label=name)
    for ax, title, unit in ((ax1, 'throughput', 'images / s'), (ax2, 'peak memory (inference)', 'MiB')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('input resolution (pixels per side)')
        ax.set_ylabel(unit)
        ax.set_title(title)
        sizes = sorted({r.size for r in res})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_locator(plt.NullLocator())  # only the measured sizes (y keeps its minor labels)
        ax.grid(True, which='major', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['device']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_runtimes(result: Dict[str, Any], path: str) -> Optional[str]:
    """Inference and training images/s of every runtime path, ours beside the reference, as a PNG; None when the
    runtimes suite did not run."""
    rt = [r for r in result['rows'] if r.suite == 'runtimes' and (r.infer or r.train)]
    if not rt:
        return None
    from .viz import pyplot, save_figure
    plt = pyplot()
    by = {_split(r.model): r for r in rt}
    paths = list(dict.fromkeys(_split(r.model)[0] for r in rt))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(paths) + 1.5), sharey=True)
    for ax, what, title in ((axes[0], 'infer_ips', 'inference'), (axes[1], 'train_ips', 'training step')):
        for k, who in enumerate(('ours', 'reference')):
            ys = [i + (0.2 if k else -0.2) for i in range(len(paths))]
            vals = [getattr(by[(p, who)], what) or 0 if (p, who) in by else 0 for p in paths]
            ax.barh(ys, vals, height=0.4, label=who if who == 'ours' else "reference fft (authors' formulation)")
        ax.set_yticks(range(len(paths)), paths)
        ax.invert_yaxis()
        ax.set_xlabel('images / s')
        ax.set_title(title)
        ax.grid(True, axis='x', alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(result['device'], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path

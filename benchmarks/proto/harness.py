"""Interleaved timing: every candidate once per round, in turn; the median over rounds of each one's time divided by
the baseline's in the same round (other jobs share the cores: only same-round ratios mean anything).

CLOCK=cpu times with the process's CPU time instead of the wall clock: with one thread (THREADS=1) torch runs every op
on the calling thread, so time spent descheduled by other jobs on the shared cores is not counted."""
import os
import statistics
import time
from typing import Callable, Dict

CLOCK = time.process_time if os.environ.get('CLOCK') == 'cpu' else time.perf_counter


def interleaved(fns: Dict[str, Callable], baseline: str, rounds: int = 15, inner: int = 3, warmup: int = 2):
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = CLOCK()
            for _ in range(inner):
                f()
            times[k].append((CLOCK() - t) / inner)
    base = times[baseline]
    # speed ratio = baseline time / candidate time (> 1: faster than the baseline)
    # also min(baseline) / min(candidate): the least-disturbed run of each, a second view under heavy sharing
    return {k: (statistics.median(b / t for b, t in zip(base, v)), min(base) / min(v), statistics.median(v))
            for k, v in times.items()}


def table(res, title: str, unit_ms: bool = True) -> str:
    lines = [f'| {title} | speed vs baseline: median of per-round ratios | ratio of best times | median ms |',
             '|---|---|---|---|']
    for k, (r, rm, t) in res.items():
        lines.append(f'| {k} | {r:.2f}x | {rm:.2f}x | {t * 1e3:.1f} |')
    return '\n'.join(lines)

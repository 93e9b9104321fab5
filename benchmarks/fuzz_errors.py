"""Largest errors of the global filter over the fuzz tests' cases, per backend and dtype: what the tolerances of
tests/test_global_filter.py (TOL) are set from. `python benchmarks/fuzz_errors.py [examples]` (default: the CI's
150)."""
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Tuple

import torch
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from test_global_filter import BACKENDS, CIRCULAR_CASES, DTYPES, SETTINGS, TOL, circular_errors  # noqa: E402


def main(examples: int = 150) -> None:
    torch.set_num_threads(1)
    worst: Dict[Tuple[str, torch.dtype], float] = defaultdict(float)

    @settings(max_examples=examples, **SETTINGS)
    @given(**CIRCULAR_CASES)
    def record(dtype, **case):
        for k, v in circular_errors(dtype=dtype, **case).items():
            worst[k, dtype] = max(worst[k, dtype], v)

    record()
    what = [*BACKENDS, 'agree']
    print(f'{examples} cases; largest relative error against the float64 reference (agree: between the backends), '
          f'and the tests\' tolerance')
    print(f'{"dtype":10} ' + ' '.join(f'{w:>20}' for w in what))
    for dtype in DTYPES:
        print(f'{str(dtype).split(".")[-1]:10} ' + ' '.join(
            f'{worst[w, dtype]:9.2e} ({TOL[w][dtype]:7.1e})' for w in what))


if __name__ == '__main__':
    main(*map(int, sys.argv[1:]))

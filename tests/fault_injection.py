"""Fault injection: proof that the suite bites. Each fault is one deliberate source mutation (an exact string
replacement; a pattern that is no longer in the source is an error, so drift shows); the named tests must fail
with it, and pass without it.

    python tests/fault_injection.py                 # every fault: its catchers pass clean, fail mutated
    python tests/fault_injection.py conjugated-filter
    python tests/fault_injection.py --survey        # run the candidate files too, list every test that fails

Each run copies the repository (without .git and .venv) to a temporary directory, mutates the copy and runs pytest
there with the copy first on PYTHONPATH (checked: `timm_gfnet` is imported from the copy). `-m slow` runs it from
pytest (tests/test_fault_injection.py). The README's "Fault injection" table is the survey's result.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Fault:
    name: str
    what: str
    path: str  # relative to the repository
    old: str
    new: str
    count: int  # exact number of occurrences of `old`: all are replaced
    catchers: List[str]  # test node ids that must fail with the fault (and pass without it)
    candidates: List[str] = field(default_factory=list)  # files to survey for other catchers


FAULTS: List[Fault] = [
    Fault(
        'filter-align-corners', "resampled filters with align_corners=False instead of the authors' True",
        'timm_gfnet/global_filter.py',
        'w = F.interpolate(w, size=new_spec, mode=mode, align_corners=True)',
        'w = F.interpolate(w, size=new_spec, mode=mode, align_corners=False)', 1,
        ['tests/test_gfnet.py::test_pretrained_at_another_size',
         'tests/test_gfnet.py::test_dynamic_size_is_the_authors_dense_recipe',
         'tests/test_global_filter.py::test_resample_filter_follows_the_authors_recipe',
         'tests/test_global_filter.py::test_global_filter_is_the_circular_convolution'],
        ['tests/test_gfnet.py', 'tests/test_global_filter.py']),
    Fault(
        'dynamic-filter-bicubic', 'dynamic sizes resample the filter bicubically instead of bilinearly',
        'timm_gfnet/global_filter.py',
        "mode = 'linear' if rank == 1 else 'bilinear' if rank == 2 else 'trilinear'",
        "mode = 'linear' if rank == 1 else 'bicubic' if rank == 2 else 'trilinear'", 1,
        ['tests/test_gfnet.py::test_dynamic_size_is_the_authors_dense_recipe',
         'tests/test_global_filter.py::test_global_filter_is_the_circular_convolution',
         'tests/test_global_filter.py::test_dynamic_sizes_resample_the_filter_linearly'],
        ['tests/test_gfnet.py', 'tests/test_global_filter.py']),
    Fault(
        'checkpoint-cuts-gradient', 'gradient checkpointing detaches each block input (no gradient flows back)',
        'timm_gfnet/gfnet.py',
        'x = checkpoint_seq(self.blocks, x)',
        'x = checkpoint_seq(self.blocks, x.detach())', 2,
        ['tests/test_gfnet.py::test_grad_checkpointing_gives_the_same_gradients'],
        ['tests/test_gfnet.py', 'tests/test_distributed.py']),
    Fault(
        'checkpoint-cuts-gradient-intermediates', "forward_intermediates' checkpointing detaches each block input",
        'timm_gfnet/gfnet.py',
        'x = checkpoint(blk, x)',
        'x = checkpoint(blk, x.detach())', 1,
        ['tests/test_gfnet.py::test_grad_checkpointing_gives_the_same_gradients'],
        ['tests/test_gfnet.py', 'tests/test_distributed.py']),
    Fault(
        'conjugated-filter', 'the fft backend multiplies by the conjugate of the learned filter',
        'timm_gfnet/filter_backends.py',
        'w = torch.view_as_complex(weight.to(dtype).contiguous())',
        'w = torch.view_as_complex(weight.to(dtype).contiguous()).conj()', 1,
        ['tests/test_gfnet.py::test_parity_with_authors',
         'tests/test_global_filter.py::test_every_layout_is_the_float64_definition',
         'tests/test_global_filter.py::test_global_filter_is_the_circular_convolution'],
        ['tests/test_gfnet.py', 'tests/test_global_filter.py']),
    Fault(
        'matmul-conjugated-product', "the matmul backend's complex product uses the conjugate filter",
        'timm_gfnet/filter_backends.py',
        'zr * wr - zi * wi, zr * wi + zi * wr',
        'zr * wr + zi * wi, zi * wr - zr * wi', 1,
        ['tests/test_global_filter.py::test_backends_agree_on_every_variant',
         'tests/test_global_filter.py::test_every_layout_is_the_float64_definition',
         'tests/test_global_filter.py::test_global_filter_is_the_circular_convolution'],
        ['tests/test_global_filter.py']),
    Fault(
        'dropped-fine-tuned-head', "a checkpoint's fine-tuned classifier is reset to the cfg's 1000 classes",
        'timm_gfnet/checkpoint.py',
        'num_classes=head.shape[0] if head is not None else 0)',
        'num_classes=1000)', 1,
        ['tests/test_checkpoint.py::test_fine_tuned_classifier_is_kept',
         'tests/test_checkpoint.py::test_load_model_keeps_the_fine_tuned_head'],
        ['tests/test_checkpoint.py', 'tests/test_cli.py']),
    Fault(
        'layernorm-eps', "LayerNorm eps 1e-5 (torch's default) instead of the authors' 1e-6",
        'timm_gfnet/gfnet.py',
        'partial(nn.LayerNorm, eps=1e-6)',
        'partial(nn.LayerNorm, eps=1e-5)', 2,
        ['tests/test_gfnet.py::test_layer_norms_are_the_authors',
         'tests/test_gfnet.py::test_parity_with_authors'],
        ['tests/test_gfnet.py']),
]


def _copy(dst: Path) -> Path:
    ignore = shutil.ignore_patterns('.git', '.venv', '__pycache__', '.pytest_cache', '.hypothesis', '*.egg-info',
                                    'build', 'dist', '*.png', '*.onnx')
    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


def mutate(repo: Path, fault: Fault) -> None:
    path = repo / fault.path
    text = path.read_text()
    found = text.count(fault.old)
    if found != fault.count:
        raise RuntimeError(f'fault {fault.name}: expected {fault.count} occurrence(s) of {fault.old!r} in '
                           f'{fault.path}, found {found}: the source changed, update the fault')
    path.write_text(text.replace(fault.old, fault.new))


def _env(repo: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONPATH'] = str(repo)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run_tests(repo: Path, targets: List[str], xdist: int = 0) -> Set[str]:
    """Run pytest on `targets` in `repo`; the node ids (parametrisation stripped) of the tests that failed."""
    probe = subprocess.run([sys.executable, '-c', 'import timm_gfnet; print(timm_gfnet.__file__)'], cwd=repo,
                           env=_env(repo), capture_output=True, text=True)
    if not probe.stdout.strip().startswith(str(repo)):
        raise RuntimeError(f'timm_gfnet is not imported from the copy {repo}: {probe.stdout or probe.stderr}')
    report = repo / 'report.xml'
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-o', 'addopts=', '-m', 'not slow',
           f'--junitxml={report}', *(['-n', str(xdist)] if xdist else []), *targets]
    proc = subprocess.run(cmd, cwd=repo, env=_env(repo), capture_output=True, text=True)
    if not report.exists():
        raise RuntimeError(f'pytest did not run: {proc.stdout[-2000:]}{proc.stderr[-2000:]}')
    failed = set()
    for case in ET.parse(report).getroot().iter('testcase'):
        if case.find('failure') is not None or case.find('error') is not None:
            module = case.get('classname', '').replace('.', '/') + '.py'
            failed.add(f'{module}::{case.get("name", "").split("[")[0]}')
    report.unlink()
    return failed


def check(faults: List[Fault], survey: bool = False, xdist: int = 0) -> Dict[str, Set[str]]:
    """{fault: failing tests}. Raises AssertionError when a catcher passes with its fault (or fails without)."""
    results: Dict[str, Set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clean = _copy(Path(tmp) / 'clean')
        catchers = sorted({c for f in faults for c in f.catchers})
        broken = run_tests(clean, catchers, xdist)
        assert not broken, f'catchers fail without any fault (they prove nothing): {sorted(broken)}'
        for fault in faults:
            repo = _copy(Path(tmp) / fault.name)
            mutate(repo, fault)
            targets = sorted(set(fault.catchers) | (set(fault.candidates) if survey else set()))
            failed = run_tests(repo, targets, xdist)
            results[fault.name] = failed
            print(f'{fault.name}: {fault.what}\n  failing: {", ".join(sorted(failed)) or "NOTHING"}', flush=True)
            missed = [c for c in fault.catchers if c not in failed]
            assert not missed, f'fault {fault.name} is not caught by {missed}'
            shutil.rmtree(repo)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('faults', nargs='*', help=f'fault names (default: all): {", ".join(f.name for f in FAULTS)}')
    parser.add_argument('--survey', action='store_true', help='also run the candidate test files of each fault')
    parser.add_argument('-n', type=int, default=0, help='pytest-xdist workers (default: none)')
    args = parser.parse_args(argv)
    unknown = set(args.faults) - {f.name for f in FAULTS}
    if unknown:
        parser.error(f'unknown fault(s): {", ".join(sorted(unknown))}')
    faults = [f for f in FAULTS if not args.faults or f.name in args.faults]
    check(faults, survey=args.survey, xdist=args.n)
    print(f'all {len(faults)} faults caught')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Bad input of every kind gives a clear error that names the problem and the fix, never a silent wrong answer.

The layer's tensors, and the command line through the installed `timm-gfnet` script. The models' input checks are in
test_gfnet.py, files and downloads in test_checkpoint.py.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timm_gfnet import GlobalFilter
from timm_gfnet.checkpoint import CheckpointError

GLOBAL_FILTER_CASES = [
    ('tokens do not match spatial_size', dict(spatial_size=(6, 10)), (2, 59, 16),
     'GlobalFilter got 59 tokens but spatial_size 6x10 holds 60: pass the grid the tokens come from.'),
    ('spatial_size of another rank', dict(spatial_size=(12,)), (2, 12, 16),
     'GlobalFilter takes spatial_size=(H, W): 2 positive sizes, got (12,).'),
    ('negative spatial_size', dict(spatial_size=(-6, -10)), (2, 60, 16),
     'GlobalFilter takes spatial_size=(H, W): 2 positive sizes, got (-6, -10).'),
    ('tokens not a square, no spatial_size', {}, (2, 60, 16),
     'GlobalFilter got 60 tokens, which is not a square grid: pass spatial_size=(H, W).'),
    ('rank 2', {}, (60, 16),
     'GlobalFilter expects (B, H, W, C) or (B, N, C) input, got a tensor of shape [60, 16].'),
    ('rank 5', {}, (1, 2, 6, 10, 16),
     'GlobalFilter expects (B, H, W, C) or (B, N, C) input, got a tensor of shape [1, 2, 6, 10, 16].'),
    ('channels first', {}, (2, 16, 6, 10),
     'GlobalFilter has 16 channels, got input with 10 (channels last).'),
    ('other grid, fixed size', {}, (2, 7, 10, 16),
     'GlobalFilter was built for a 6x10 token grid and got 7x10: create the layer with dynamic_size=True to '
     'resample its filter to other sizes.'),
]


@pytest.mark.parametrize('case,kwargs,shape,message', GLOBAL_FILTER_CASES, ids=[c[0] for c in GLOBAL_FILTER_CASES])
def test_global_filter_bad_input(case, kwargs, shape, message):
    layer = GlobalFilter(16, grid_size=(6, 10))
    with pytest.raises(ValueError) as e:
        layer(torch.randn(*shape), **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize('dtype', [torch.int64, torch.uint8, torch.bool])
def test_global_filter_refuses_integer_input(dtype):
    with pytest.raises(ValueError, match='^GlobalFilter ') as e:
        GlobalFilter(16, grid_size=(6, 10))(torch.ones(2, 6, 10, 16, dtype=dtype))
    assert 'got ' + str(dtype) in str(e.value) and 'x.float()' in str(e.value)


# ---- command line

def _script(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name('timm-gfnet')
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_arguments_exit_2_with_usage():
    """The installed console script: an argparse error is a usage line and one error line, exit status 2."""
    proc = _script('nonsense')
    assert proc.returncode == 2 and proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith('usage: timm-gfnet') and 'Traceback' not in proc.stderr
    assert lines[-1].startswith("timm-gfnet: error: argument COMMAND: invalid choice: 'nonsense'"), proc.stderr


def test_cli_every_command_rejects_unknown_flags(capsys):
    from timm_gfnet.cli import build_parser, main
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert 'models' in commands
    for cmd in [[]] + [[c, '--no-such-flag'] for c in commands]:
        with pytest.raises(SystemExit) as e:
            main(cmd)
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'Traceback' not in err
        assert err.strip().splitlines()[-1].startswith('timm-gfnet'), (cmd, err)
        assert ': error: ' in err.strip().splitlines()[-1]


@pytest.mark.parametrize('exc', [ValueError, FileNotFoundError, RuntimeError, OSError, CheckpointError])
def test_cli_runtime_errors_are_one_line(monkeypatch, capsys, exc):
    import timm_gfnet.cli as cli

    def fail(args):
        raise exc('it went wrong: here is how to fix it')

    monkeypatch.setattr(cli, '_models', fail)
    assert cli.main(['models']) == 1
    captured = capsys.readouterr()
    assert captured.err == 'timm-gfnet models: error: it went wrong: here is how to fix it\n'

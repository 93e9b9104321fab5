"""Bad input of every kind gives a clear error that names the problem and the fix, never a silent wrong answer.

Tensors go through both model families (tiny configurations), files through the real `pretrained=True` path,
the command line through the installed `timm-gfnet` script. Network faults are in test_download.py.
"""
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from reference import authors_state_dict, write_authors_checkpoint
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


# ---- files, through timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))

def _load(path: Path, name: str = 'gfnet_ti', **kwargs) -> torch.nn.Module:
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


@pytest.fixture(scope='module')
def authors_file(tmp_path_factory) -> Path:
    return write_authors_checkpoint('gfnet_ti', tmp_path_factory.mktemp('authors') / 'gfnet_ti.pth')


@pytest.fixture(scope='module')
def weights() -> dict:
    return authors_state_dict('gfnet_ti')


def _unreadable(path: Path, reason: str) -> str:
    return f'{path} is not a readable PyTorch checkpoint: truncated, or another kind of file ({reason}).'


def test_truncated_checkpoint(tmp_path, authors_file):
    data = authors_file.read_bytes()
    for name, cut in (('half.pth', data[:len(data) // 2]), ('head.pth', data[:100])):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(CheckpointError) as e:
            _load(tmp_path / name)
        assert str(e.value) == _unreadable(
            tmp_path / name, 'PytorchStreamReader failed reading zip archive: failed finding central directory')
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError) as e:
        _load(tmp_path / 'empty.pth')
    assert str(e.value) == _unreadable(tmp_path / 'empty.pth', 'EOFError')


def test_not_a_checkpoint(tmp_path):
    (tmp_path / 'notes.txt').write_text('hello, not a checkpoint\n')
    with pytest.raises(CheckpointError) as e:
        _load(tmp_path / 'notes.txt')
    assert str(e.value) == _unreadable(tmp_path / 'notes.txt', 'KeyError')

    (tmp_path / 'image.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(200)))
    with pytest.raises(CheckpointError) as e:
        _load(tmp_path / 'image.png')
    assert str(e.value) == f'{tmp_path / "image.png"} is not a PyTorch checkpoint (Unsupported operand 80).'

    torch.save([torch.ones(2)], tmp_path / 'list.pth')
    with pytest.raises(CheckpointError, match=r'^Expected a state_dict \(a dict of tensors\), got list\.$'):
        _load(tmp_path / 'list.pth')
    torch.save({'epoch': 3, 'args': 'x'}, tmp_path / 'state.pth')
    with pytest.raises(CheckpointError, match=r'^No tensors found: this is not a model checkpoint '
                                              r'\(top-level keys: epoch, args\)\.$'):
        _load(tmp_path / 'state.pth')
    with pytest.raises(FileNotFoundError, match=f'^No checkpoint file at {tmp_path / "nowhere.pth"}.$'):
        _load(tmp_path / 'nowhere.pth')
    with pytest.raises(FileNotFoundError, match=f'^{tmp_path} holds no weights file'):
        _load(tmp_path)


def test_broken_safetensors(tmp_path, weights):
    save_file(weights, str(tmp_path / 'ok.safetensors'))
    data = (tmp_path / 'ok.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
    (tmp_path / 'header.safetensors').write_bytes(data[:8] + b'{garbage' + data[16:])
    for name in ('cut', 'header'):
        with pytest.raises(CheckpointError) as e:
            _load(tmp_path / f'{name}.safetensors')
        # the reason is safetensors' own (its wording changes between releases)
        assert re.fullmatch(rf'{re.escape(str(tmp_path / name))}\.safetensors is not a valid safetensors file '
                            rf'\(Error while deserializing header: \w[^\n]*\)\.', str(e.value)), str(e.value)


@pytest.mark.parametrize('change,message', [
    (lambda sd: sd.update({'blocks.0.mlp.fc1.weight': torch.zeros(10, 10)}),
     'Checkpoint does not fit the model. Wrong shapes: blocks.0.mlp.fc1.weight (10, 10) (model (1024, 256)).'),
    (lambda sd: sd.update({'blocks.0.norm1.weight': sd['blocks.0.norm1.weight'].to(torch.int32)}),
     'Checkpoint weights are unusable. Not floating point: blocks.0.norm1.weight torch.int32.'),
    (lambda sd: sd['blocks.1.filter.complex_weight'].view(-1)[7].fill_(float('nan')),
     'Checkpoint weights are unusable. Non-finite values (NaN/inf) in: blocks.1.filter.complex_weight.'),
    (lambda sd: (sd.pop('blocks.3.mlp.fc2.bias'), sd.pop('pos_embed')),
     'Checkpoint does not fit the model. Missing keys: pos_embed, blocks.3.mlp.fc2.bias.'),
    (lambda sd: sd.update({'blocks.3.extra.weight': torch.zeros(3), 'dist_head.weight': torch.zeros(2)}),
     'Checkpoint does not fit the model. Unexpected keys: blocks.3.extra.weight, dist_head.weight.'),
    (lambda sd: (sd.pop('norm.bias'), sd.update({'norm.bais': torch.zeros(256)})),
     'Checkpoint does not fit the model. Missing keys: norm.bias. Unexpected keys: norm.bais.'),
], ids=['shape', 'dtype', 'nan', 'missing', 'unexpected', 'renamed'])
def test_checkpoint_that_does_not_fit(tmp_path, weights, change, message):
    sd = {k: v.clone() for k, v in weights.items()}
    change(sd)
    save_file(sd, str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError) as e:
        _load(tmp_path / 'w.safetensors')
    assert str(e.value) == message


def test_other_float_precision_loads(tmp_path, weights):
    """Documented: half-precision weights load into a float32 model (cast on copy)."""
    save_file({k: v.half() for k, v in weights.items()}, str(tmp_path / 'half.safetensors'))
    model = _load(tmp_path / 'half.safetensors')
    assert model.blocks[0].norm1.weight.dtype == torch.float32
    torch.testing.assert_close(model.blocks[0].norm1.weight, weights['blocks.0.norm1.weight'].half().float())


def test_checkpoint_of_another_variant(tmp_path):
    path = write_authors_checkpoint('gfnet_h_ti', tmp_path / 'h_ti.pth')
    with pytest.raises(ValueError) as e:
        _load(path, 'gfnet_ti')
    assert str(e.value) == (
        'This checkpoint is gfnet_h_ti (stages of 3, 3, 10, 3 blocks, widths 64, 128, 256, 512); '
        "gfnet_ti has 12 blocks of width 256. Create the model that matches the checkpoint "
        "(timm.create_model('gfnet_h_ti')).")


def test_fine_tuned_classifier_is_kept(tmp_path, weights):
    """A 10-class checkpoint keeps its head exactly through timm's own `pretrained=True` (the cfg's 1000 classes do
    not reset it); another num_classes asked for resets it, as timm does for any classifier mismatch."""
    sd = dict(weights, **{'head.weight': torch.randn(10, 256), 'head.bias': torch.randn(10)})
    save_file(sd, str(tmp_path / 'ft.safetensors'))
    for kwargs in ({}, {'num_classes': 10}):
        model = _load(tmp_path / 'ft.safetensors', **kwargs)
        assert torch.equal(model.head.weight, sd['head.weight']) and torch.equal(model.head.bias, sd['head.bias'])
    assert model.pretrained_cfg['num_classes'] == 10
    assert _load(tmp_path / 'ft.safetensors', num_classes=1000).head.weight.shape == (1000, 256)


class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('fmt', ['zip', 'legacy', 'plain-pickle'])
def test_pickle_that_would_run_code_does_not(tmp_path, weights, fmt):
    marker = tmp_path / 'pwned'
    payload = {'model': weights, 'args': _RunsCode(marker)}
    path = tmp_path / 'evil.pth'
    if fmt == 'plain-pickle':
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=fmt == 'zip')
    # the payload works: unpickling it for real would create the marker
    assert not marker.exists()
    with pytest.raises(CheckpointError) as e:
        _load(path)
    assert not marker.exists()
    if fmt == 'plain-pickle':  # not even torch's framing: refused before any object is built
        assert str(e.value) == f'{path} is not a PyTorch checkpoint (Unsupported operand 149).'
    else:
        assert str(e.value) == (
            f'{path} was not loaded: it holds objects other than tensors and plain training state, and unpickling '
            f'them could run code (Trying to load unsupported GLOBAL posix.system whose module posix is blocked). '
            f'Re-save its weights with torch.save(model.state_dict()) or as safetensors.')
    pickle.loads(pickle.dumps(_RunsCode(marker)))  # proof that the payload is live
    assert marker.exists()


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

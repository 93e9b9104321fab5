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
from timm_gfnet.checkpoint import CheckpointError

TINY = {
    'iso': ('gfnet_ti', dict(depth=2, embed_dim=32)),  # patch 16, one stride
    'pyr': ('gfnet_h_ti', dict(depth=(1, 1, 1, 1), embed_dim=(8, 16, 24, 32))),  # patch 4, strides 4 to 32
}


def _tiny(kind: str, **kwargs) -> torch.nn.Module:
    name, args = TINY[kind]
    return timm.create_model(name, **dict(args, **kwargs)).eval()


def _img(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape).to(dtype)


# (case, model kwargs, input, exact message); every case runs on both families unless the message differs
TENSOR_CASES = [
    ('one image without batch', {}, _img(3, 224, 224),
     'GFNet takes a (B, C, H, W) batch of images, got shape [3, 224, 224]: use x.unsqueeze(0) for one image.'),
    ('rank 5', {}, _img(1, 1, 3, 224, 224),
     'GFNet takes a (B, C, H, W) batch of images, got shape [1, 1, 3, 224, 224]: use x.unsqueeze(0) for one image.'),
    ('rank 2', {}, _img(224, 224),
     'GFNet takes a (B, C, H, W) batch of images, got shape [224, 224]: use x.unsqueeze(0) for one image.'),
    ('grey image to an RGB model', {}, _img(2, 1, 224, 224),
     'GFNet was created with in_chans=3 and got 1 channels (shape [2, 1, 224, 224]): '
     'for 1-channel images create the model with in_chans=1.'),
    ('RGBA image', {}, _img(1, 4, 224, 224),
     'GFNet was created with in_chans=3 and got 4 channels (shape [1, 4, 224, 224]): '
     'for 4-channel images create the model with in_chans=4.'),
    ('channels-last image', {}, _img(1, 224, 224, 3),
     'GFNet was created with in_chans=3 and got 224 channels (shape [1, 224, 224, 3]): '
     'it looks channels-last: use x.permute(0, 3, 1, 2).'),
    ('RGB image to a grey model', dict(in_chans=1), _img(1, 3, 224, 224),
     'GFNet was created with in_chans=1 and got 3 channels (shape [1, 3, 224, 224]): '
     'for 3-channel images create the model with in_chans=3.'),
    ('uint8 image', {}, _img(1, 3, 224, 224, dtype=torch.uint8),
     'GFNet takes floating-point images, not integer or bool tensors: convert with x.float() and normalise '
     '(the transforms of timm.data.create_transform do both).'),
    ('int64 image', {}, _img(1, 3, 224, 224, dtype=torch.int64),
     'GFNet takes floating-point images, not integer or bool tensors: convert with x.float() and normalise '
     '(the transforms of timm.data.create_transform do both).'),
    ('bool image', {}, _img(1, 3, 224, 224, dtype=torch.bool),
     'GFNet takes floating-point images, not integer or bool tensors: convert with x.float() and normalise '
     '(the transforms of timm.data.create_transform do both).'),
    ('empty batch', {}, _img(0, 3, 224, 224),
     'GFNet got an empty batch (batch size 0): skip the call for empty batches.'),
    ('other size, fixed-size model', {}, _img(1, 3, 200, 256),
     'GFNet was created for 224x224 images and got 200x256: resize the input, '
     'or create the model with img_size=(200, 256) or dynamic_img_size=True.'),
    ('smaller than the patch', dict(dynamic_img_size=True), _img(1, 3, 3, 3), None),
    ('not a multiple of the patch', dict(dynamic_img_size=True), _img(1, 3, 230, 224), None),
    ('empty image, dynamic padding', dict(dynamic_img_size=True, dynamic_img_pad=True), _img(1, 3, 0, 224),
     'GFNet got an image of size 0x224.'),
]
SIZE_MESSAGE = {
    'iso': 'GFNet without dynamic_img_pad takes sizes that are multiples of the patch size 16 and at least 16 '
           '(its largest stride), got {}: crop or resize the input, or create the model with dynamic_img_pad=True.',
    'pyr': 'GFNet without dynamic_img_pad takes sizes that are multiples of the patch size 4 and at least 32 '
           '(its largest stride), got {}: crop or resize the input, or create the model with dynamic_img_pad=True.',
}


@pytest.mark.parametrize('kind', list(TINY))
@pytest.mark.parametrize('case,kwargs,x,message', TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_bad_tensor(kind, case, kwargs, x, message):
    model = _tiny(kind, **kwargs)
    message = message or SIZE_MESSAGE[kind].format('x'.join(map(str, x.shape[-2:])))
    with torch.no_grad():
        with pytest.raises(ValueError) as e:
            model(x)
        assert str(e.value) == message
        # forward_intermediates (features_only backbones) checks the same way
        with pytest.raises(ValueError) as e:
            model.forward_intermediates(x)
        assert str(e.value) == message


def test_smaller_than_stride_32_stage():
    """Hierarchical models downsample to stride 32: 16x16 passes the patch (4) and would crash in stage 4."""
    model = _tiny('pyr', dynamic_img_size=True)
    with pytest.raises(ValueError, match=r'at least 32 \(its largest stride\), got 16x16'):
        model(_img(1, 3, 16, 16))
    assert model(_img(1, 3, 32, 32)).shape == (1, 1000)
    # prune to stride 16: smaller inputs become fine
    backbone = timm.create_model('gfnet_h_ti', features_only=True, out_indices=(2,), dynamic_img_pad=False,
                                 **TINY['pyr'][1]).eval()
    assert backbone(_img(1, 3, 16, 16))[0].shape == (1, 24, 1, 1)
    with pytest.raises(ValueError, match=r'at least 16 \(its largest stride\), got 8x8'):
        backbone(_img(1, 3, 8, 8))


@pytest.mark.parametrize('kind', list(TINY))
def test_dynamic_padding_takes_any_size(kind):
    """Documented: with dynamic_img_pad, images smaller than the patch or stride work (padded)."""
    model = _tiny(kind, dynamic_img_size=True, dynamic_img_pad=True)
    with torch.no_grad():
        for size in ((1, 1), (3, 5), (17, 33), (230, 224)):
            out = model(_img(2, 3, *size))
            assert out.shape == (2, 1000) and torch.isfinite(out).all(), size


@pytest.mark.parametrize('kind', list(TINY))
def test_floating_dtypes(kind):
    """Documented: float64/float16 input to a float32 model is torch's own clear error; autocast and a model in
    that dtype both work."""
    model = _tiny(kind)
    with pytest.raises(RuntimeError, match=r'Input type \(double\) and bias type \(float\) should be the same'):
        model(_img(1, 3, 224, 224, dtype=torch.float64))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(_img(1, 3, 224, 224))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    x = _img(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x.float())
        out = model.double()(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kind', list(TINY))
def test_non_finite_input_stays_in_its_image(kind):
    """Documented: NaN/inf pixels are not checked (that would cost a sync per call); they make that image's output
    NaN and leave the rest of the batch exactly as without them."""
    model = _tiny(kind)
    x = _img(3, 3, 224, 224)
    with torch.no_grad():
        clean = model(x)
        bad = x.clone()
        bad[0, 1, 10, 20] = float('nan')
        bad[2, 0, 100, 5] = float('inf')
        out = model(bad)
    assert torch.isnan(out[0]).all() and torch.isnan(out[2]).all()
    torch.testing.assert_close(out[1], clean[1], rtol=0, atol=1e-6)


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

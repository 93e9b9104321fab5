"""Checkpoints and the one loader (`timm_gfnet.checkpoint`): reading safely, recognising the variant, keeping a
checkpoint's own size, head and channels (`load_model`), timm's rule for `pretrained=True`, convert, the authors'
download links (through timm's download machinery, against a local HTTP server), and a name being a name."""
import json
import logging
import os
import pickle
import re
from pathlib import Path

import onnx
import pytest
import timm
import torch
import torch.nn.functional as F
from http_server import FileServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from reference import authors_state_dict, expected, input_batch, write_authors_checkpoint, write_fine_tuned_checkpoint
from timm_gfnet import load_model
from timm_gfnet.checkpoint import CheckpointError, PretrainedUnavailableError, weights_digest
from timm_gfnet.cli import main
from timm_gfnet.convert import convert_checkpoint


@pytest.fixture(scope='module')
def authors_file(tmp_path_factory) -> Path:
    return write_authors_checkpoint('gfnet_ti', tmp_path_factory.mktemp('authors') / 'gfnet_ti.pth')


@pytest.fixture(scope='module')
def weights() -> dict:
    return authors_state_dict('gfnet_ti')


@pytest.fixture(scope='module')
def fine_tuned(tmp_path_factory):
    """A 10-class gfnet_ti in the authors' format, its head, and its converted folder."""
    d = tmp_path_factory.mktemp('ft')
    ckpt, head = write_fine_tuned_checkpoint('gfnet_ti', d / 'ft10.pth', num_classes=10)
    result = convert_checkpoint(ckpt, d / 'ft10')
    assert result['model'] == 'gfnet_ti' and result['num_classes'] == 10 and result['max_abs_diff'] == 0
    return ckpt, head, d / 'ft10'


def _assert_head(model: torch.nn.Module, head: dict) -> None:
    assert model.num_classes == 10
    assert torch.equal(model.head.weight, head['head.weight']) and torch.equal(model.head.bias, head['head.bias'])


# ---- load_model keeps a checkpoint's own size, head and channels

def test_load_model_keeps_the_fine_tuned_head(fine_tuned):
    ckpt, head, folder = fine_tuned
    for source in (ckpt, str(ckpt), folder, f'local-dir:{folder}', folder / 'model.safetensors'):
        _assert_head(load_model(source), head)
    model = load_model(ckpt)
    reference = authors_state_dict('gfnet_ti')  # isotropic models keep the authors' key names
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items() if not k.startswith('head.'))
    for source in (ckpt, folder):  # another size only when asked: a new head, as timm does
        assert load_model(source, num_classes=5).head.weight.shape == (5, 256)
    assert isinstance(load_model(ckpt, num_classes=0).head, torch.nn.Identity)


def test_load_model_keeps_size_and_channels(tmp_path, weights):
    """A 1-channel checkpoint at 96x160 is a 1-channel 96x160 model (and timm's data config says so)."""
    sd = dict(weights, **{'patch_embed.proj.weight': weights['patch_embed.proj.weight'][:, :1]})
    source = timm.create_model('gfnet_ti', img_size=(96, 160), in_chans=1)
    source.load_state_dict({k: v for k, v in sd.items() if k not in ('pos_embed',) and 'filter' not in k},
                           strict=False)
    save_file(source.state_dict(), str(tmp_path / 'grey.safetensors'))
    model = load_model(tmp_path / 'grey.safetensors')
    assert model.in_chans == 1 and model.patch_embed.img_size == (96, 160)
    assert timm.data.resolve_model_data_config(model)['input_size'] == (1, 96, 160)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_convert_writes_the_exact_head_and_a_config_every_client_reads(fine_tuned):
    _, head, folder = fine_tuned
    weights = load_file(str(folder / 'model.safetensors'))
    assert all(torch.equal(weights[k], v) for k, v in head.items())
    config = json.loads((folder / 'config.json').read_text())
    assert config['num_classes'] == 10 and 'model_args' not in config and 'label_names' not in config


def test_set_input_size_equals_loading_at_that_size(fine_tuned, tmp_path):
    """`set_input_size` (as ViT has it) resamples like `img_size=` at load, and the model saves and reloads at its
    new size."""
    from timm_gfnet.hub import save_for_hub

    ckpt, _, _ = fine_tuned
    model = load_model(ckpt).eval()
    model.set_input_size((256, 192))
    at_load = load_model(ckpt, img_size=(256, 192)).eval()
    assert all(torch.equal(v, at_load.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, 256, 192)
    save_for_hub(model, tmp_path / 'resized')
    config = json.loads((tmp_path / 'resized' / 'config.json').read_text())
    assert config['model_args'] == {'img_size': [256, 192]} and config['pretrained_cfg']['input_size'] == [3, 256, 192]
    reloaded = timm.create_model(f'local-dir:{tmp_path / "resized"}', pretrained=True).eval()
    assert tuple(timm.data.resolve_model_data_config(reloaded)['input_size']) == (3, 256, 192)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    # the hierarchical family: every stage's filters follow its own (halved) grid
    pyramid = timm.create_model('gfnet_h_ti', depth=(1, 1, 2, 1)).eval()
    sd = pyramid.state_dict()
    pyramid.set_input_size(288)
    at_load = timm.create_model('gfnet_h_ti', depth=(1, 1, 2, 1), img_size=288, pretrained=True,
                                pretrained_cfg_overlay=dict(state_dict=sd)).eval()
    assert [f.grid_size for f in (pyramid.stages[i].blocks[0].filter for i in range(4))] == [
        (72, 72), (36, 36), (18, 18), (9, 9)]
    assert all(torch.equal(v, at_load.state_dict()[k]) for k, v in pyramid.state_dict().items())


# ---- timm's own pretrained=True: the requested architecture, weights adapted, a log line for each change

def test_pretrained_follows_timms_rule(tmp_path, caplog):
    """`create_model(name, pretrained=True)` with a file overlay builds what was asked for (224, 1000 classes by
    default), as ViT does: a 384 10-class checkpoint is resampled and its head replaced, each said in a log line;
    the stem is summed over input channels for in_chans=1 (timm's adapt_input_conv)."""
    path, head = write_fine_tuned_checkpoint('gfnet_ti', tmp_path / 'ft.pth')
    at_384 = load_model(path, img_size=384)
    save_file(at_384.state_dict(), str(tmp_path / 'ft384.safetensors'))
    source = authors_state_dict('gfnet_ti')
    for custom_load in (False, True):  # timm's reader (safetensors) and ours
        with caplog.at_level(logging.INFO):
            model = timm.create_model('gfnet_ti', pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(
                file=str(tmp_path / 'ft384.safetensors'), custom_load=custom_load))
        assert model.patch_embed.img_size == (224, 224) and model.num_classes == 1000
        assert 'Resampled pos_embed and the filters from a (24, 24) to a (14, 14) token grid.' in caplog.text
        assert "The checkpoint's 10-class head was replaced by a new one (num_classes=1000)." in caplog.text
        torch.testing.assert_close(model.patch_embed.proj.weight, source['patch_embed.proj.weight'].sum(1, True))
        assert model(torch.randn(1, 1, 224, 224)).shape == (1, 1000)
        caplog.clear()
    kept = timm.create_model('gfnet_ti', pretrained=True, num_classes=10, img_size=384,
                             pretrained_cfg_overlay=dict(file=str(path), custom_load=True))
    _assert_head(kept, head)
    assert all(torch.equal(v, at_384.state_dict()[k]) for k, v in kept.state_dict().items())


def test_other_variant_is_refused_by_name(tmp_path):
    path = write_authors_checkpoint('gfnet_h_ti', tmp_path / 'h_ti.pth')
    message = ('This checkpoint is gfnet_h_ti (stages of 3, 3, 10, 3 blocks, widths 64, 128, 256, 512); gfnet_ti '
               "has 12 blocks of width 256. Create the model that matches the checkpoint "
               "(timm.create_model('gfnet_h_ti')).")
    for load in (lambda: load_model(path, model_name='gfnet_ti'),
                 lambda: timm.create_model('gfnet_ti', pretrained=True,
                                           pretrained_cfg_overlay=dict(file=str(path), custom_load=True))):
        with pytest.raises(CheckpointError) as e:
            load()
        assert str(e.value) == message
    with pytest.raises(ValueError, match="'resnet18' is not a GFNet model"):
        load_model(path, model_name='resnet18')
    save_file({'conv1.weight': torch.zeros(8, 3, 3, 3)}, str(tmp_path / 'other.safetensors'))
    with pytest.raises(CheckpointError, match='matches no GFNet variant .* pass the model name'):
        load_model(tmp_path / 'other.safetensors')


def test_features_only_with_pretrained(tmp_path):
    path = write_authors_checkpoint('gfnet_h_ti', tmp_path / 'h_ti.pth')
    overlay = dict(file=str(path), custom_load=True)
    backbone = timm.create_model('gfnet_h_ti', pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=overlay).eval()
    full = load_model(path).eval()
    x = input_batch()[:1]
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[-1], full.forward_intermediates(x, intermediates_only=True)[-1])


# ---- reading safely, one-line errors

def _unreadable(path: Path, reason: str) -> str:
    return f'{path} is not a readable PyTorch checkpoint: truncated, or another kind of file ({reason}).'


def test_truncated_checkpoint(tmp_path, authors_file):
    data = authors_file.read_bytes()
    for name, cut in (('half.pth', data[:len(data) // 2]), ('head.pth', data[:100])):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(CheckpointError) as e:
            load_model(tmp_path / name)
        assert str(e.value) == _unreadable(
            tmp_path / name, 'PytorchStreamReader failed reading zip archive: failed finding central directory')
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / 'empty.pth')
    assert str(e.value) == _unreadable(tmp_path / 'empty.pth', 'EOFError')


def test_not_a_checkpoint(tmp_path):
    (tmp_path / 'notes.txt').write_text('hello, not a checkpoint\n')
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / 'notes.txt')
    assert str(e.value) == _unreadable(tmp_path / 'notes.txt', 'KeyError')

    (tmp_path / 'image.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(200)))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / 'image.png')
    assert str(e.value) == f'{tmp_path / "image.png"} is not a PyTorch checkpoint (Unsupported operand 80).'

    torch.save([torch.ones(2)], tmp_path / 'list.pth')
    with pytest.raises(CheckpointError, match=r'^Expected a state_dict \(a dict of tensors\), got list\.$'):
        load_model(tmp_path / 'list.pth')
    torch.save({'epoch': 3, 'args': 'x'}, tmp_path / 'state.pth')
    with pytest.raises(CheckpointError, match=r'^No tensors found: this is not a model checkpoint '
                                              r'\(top-level keys: epoch, args\)\.$'):
        load_model(tmp_path / 'state.pth')
    with pytest.raises(FileNotFoundError, match=f'^No checkpoint file or folder at {tmp_path / "nowhere.pth"} '):
        load_model(tmp_path / 'nowhere.pth')
    with pytest.raises(ValueError, match=f'^{tmp_path} has no config.json: pass a folder written by'):
        load_model(tmp_path)


def test_broken_safetensors(tmp_path, weights):
    save_file(weights, str(tmp_path / 'ok.safetensors'))
    data = (tmp_path / 'ok.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
    (tmp_path / 'header.safetensors').write_bytes(data[:8] + b'{garbage' + data[16:])
    for name in ('cut', 'header'):
        with pytest.raises(CheckpointError) as e:
            load_model(tmp_path / f'{name}.safetensors')
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
        load_model(tmp_path / 'w.safetensors')
    assert str(e.value) == message


def test_other_float_precision_loads(tmp_path, weights):
    """Documented: half-precision weights load into a float32 model (cast on copy)."""
    save_file({k: v.half() for k, v in weights.items()}, str(tmp_path / 'half.safetensors'))
    model = load_model(tmp_path / 'half.safetensors')
    assert model.blocks[0].norm1.weight.dtype == torch.float32
    torch.testing.assert_close(model.blocks[0].norm1.weight, weights['blocks.0.norm1.weight'].half().float())


def test_checkpoint_of_another_variant(tmp_path):
    path = write_authors_checkpoint('gfnet_h_ti', tmp_path / 'h_ti.pth')
    with pytest.raises(ValueError) as e:
        load_model(path, model_name='gfnet_ti')
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
        model = load_model(tmp_path / 'ft.safetensors', **kwargs)
        assert torch.equal(model.head.weight, sd['head.weight']) and torch.equal(model.head.bias, sd['head.bias'])
    assert model.pretrained_cfg['num_classes'] == 10
    assert load_model(tmp_path / 'ft.safetensors', num_classes=1000).head.weight.shape == (1000, 256)


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
        load_model(path)
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




# ---- the authors' download links: timm's download machinery into timm's cache, checked when read

LINK = '/f/abc/'  # the authors' links look like https://cloud.tsinghua.edu.cn/f/<id>/?dl=1


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """Points gfnet_ti.in1k's registered link at a local server (a fresh timm cache in $TORCH_HOME, online); returns
    where timm caches the download."""
    import dataclasses

    import huggingface_hub.constants
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    cfgs = timm.models._registry._model_pretrained_cfgs

    def point_at(url: str) -> Path:
        name = cfgs['gfnet_ti.in1k'].url[1]
        for key in ('gfnet_ti', 'gfnet_ti.in1k'):  # the default tag is registered under both
            monkeypatch.setitem(cfgs, key, dataclasses.replace(cfgs[key], url=(url, name)))
        return tmp_path / 'torch' / 'hub' / 'checkpoints' / name
    return point_at


def _assert_authors_outputs(model: torch.nn.Module) -> None:
    with torch.no_grad():
        logits = model.eval()(input_batch())
    torch.testing.assert_close(logits, expected()['gfnet_ti.logits'], rtol=0, atol=2e-6)


def test_registered_download_once_then_cached_with_its_digest(registered, authors_file, tmp_path):
    """`pretrained=True` fetches the authors' file once into timm's cache (named: their link has no file name), and
    records the digest of their tensors: kept through save_for_hf and loading the folder back, and no longer the
    digest of a model whose head was replaced."""
    from timm_gfnet.checkpoint import recorded_digest
    with FileServer({LINK: (200, authors_file.read_bytes())}) as server:
        cached = registered(server.url(LINK + '?dl=1'))
        model = timm.create_model('gfnet_ti', pretrained=True)
        by_name = load_model('gfnet_ti')  # as `convert gfnet_ti` and `--model gfnet_ti` load it
        ten = timm.create_model('gfnet_ti', pretrained=True, num_classes=10)
        assert server.requests == [LINK + '?dl=1']
    assert cached.read_bytes() == authors_file.read_bytes() and os.listdir(cached.parent) == [cached.name]
    _assert_authors_outputs(model)
    digest = recorded_digest(model)
    assert digest == weights_digest(model.state_dict()) == recorded_digest(by_name)
    assert recorded_digest(ten) == digest != weights_digest(ten.state_dict())
    overlay = dict(file=str(authors_file), custom_load=True)  # the same tensors, not from the registered link
    assert recorded_digest(timm.create_model('gfnet_ti', pretrained=True, pretrained_cfg_overlay=overlay)) is None
    timm.models.save_for_hf(model, str(tmp_path / 'saved'), safe_serialization=True)
    assert recorded_digest(timm.create_model(f'local-dir:{tmp_path / "saved"}', pretrained=True)) == digest
    assert recorded_digest(load_model(tmp_path / 'saved')) == digest


def test_offline_or_refused_is_one_line(registered, authors_file, monkeypatch):
    """load_model (and every command) says in one line what to do, offline (HF_HUB_OFFLINE, asking nobody) and when
    the server refuses."""
    import huggingface_hub.constants
    with FileServer({LINK: (200, authors_file.read_bytes()), '/f/gone/': (404, b'gone')}) as server:
        cached = registered(server.url(LINK + '?dl=1'))
        monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
        with pytest.raises(PretrainedUnavailableError) as e:
            load_model('gfnet_ti')
        assert server.requests == []
        assert str(e.value) == ("Offline mode is on (HF_HUB_OFFLINE) and the weights of gfnet_ti are not cached: put "
                                f"the authors' file at {cached}, or load a local copy with load_model(PATH) (or "
                                "--checkpoint PATH).")
        monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
        registered(server.url('/f/gone/?dl=1'))
        with pytest.raises(PretrainedUnavailableError) as e:
            load_model('gfnet_ti')
    assert str(e.value).startswith(f'Could not download the weights of gfnet_ti from {server.url("/f/gone/?dl=1")} '
                                   f'(404 Not Found): put the authors')
    assert e.value.__cause__ is None and '\n' not in str(e.value)


@pytest.mark.parametrize('served,says', [
    (b'<!DOCTYPE html><html>Link expired</html>', "is an HTML page, not a checkpoint (starting b'<!DOCTYPE html><')."),
    ('half', 'is not a readable PyTorch checkpoint: truncated'),
    ('nan', 'Checkpoint weights are unusable. Non-finite values (NaN/inf) in: blocks.2.mlp.fc1.weight.'),
], ids=['html', 'cut', 'nan'])
def test_bad_download_names_the_cached_file(registered, authors_file, tmp_path, served, says):
    """An expired link's HTML page, a download cut halfway (the server closes early), NaN weights: one line naming
    the cached file and how to clear it; once deleted, the next call fetches it again."""
    body, cut = served, ()
    if served == 'half':
        body, cut = authors_file.read_bytes(), (LINK,)
    elif served == 'nan':
        sd = authors_state_dict('gfnet_ti')
        sd['blocks.2.mlp.fc1.weight'][0, 0] = float('nan')
        torch.save({'model': sd}, tmp_path / 'nan.pth')
        body = (tmp_path / 'nan.pth').read_bytes()
    with FileServer({LINK: (200, body)}, cut=cut) as server:
        cached = registered(server.url(LINK + '?dl=1'))
        with pytest.raises(CheckpointError) as e:
            load_model('gfnet_ti')
    assert says in str(e.value) and '\n' not in str(e.value)
    assert str(e.value).endswith(f'It came from the download cached at {cached}: delete that file to fetch it again.')
    cached.unlink()
    with FileServer({LINK: (200, authors_file.read_bytes())}) as server:
        registered(server.url(LINK + '?dl=1'))
        _assert_authors_outputs(load_model('gfnet_ti'))


def test_a_name_is_a_name_and_a_path_a_path(registered, tmp_path, monkeypatch, fine_tuned, capsys):
    """A folder named gfnet_ti in the working directory (here a fine-tuned 10-class model) is not what the name
    `gfnet_ti` loads: offline and not cached, the name gives the usual one-line error, in Python and on the command
    line; './gfnet_ti' and the absolute path load the folder."""
    import huggingface_hub.constants

    from timm_gfnet.cli import main
    _, head, folder = fine_tuned
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'gfnet_ti').mkdir()
    for f in folder.iterdir():
        (tmp_path / 'gfnet_ti' / f.name).write_bytes(f.read_bytes())
    registered('http://127.0.0.1:9/unused')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(PretrainedUnavailableError, match='^Offline mode is on'):
        load_model('gfnet_ti')
    assert main(['viz', '--model', 'gfnet_ti', '--pretrained', '--out', str(tmp_path / 'f.png')]) == 1
    assert 'Offline mode is on (HF_HUB_OFFLINE) and the weights of gfnet_ti are not cached' in capsys.readouterr().err
    for path in ('./gfnet_ti', tmp_path / 'gfnet_ti', str(tmp_path / 'gfnet_ti')):
        _assert_head(load_model(path), head)


# ---- every checkpoint at its own size through every command; every source gets the same checks; all-or-nothing convert


def _resampled_authors(variant: str, grids, num_classes: int) -> dict:
    """The authors' recipe weights as their fine-tuning script leaves them at another size: pos_embed and every
    filter interpolated to `grids` (one per stage) with plain F.interpolate here, not with our code, and a new head."""
    sd = authors_state_dict(variant)
    out = {}
    for k, v in sd.items():
        if k == 'pos_embed':
            c, g = v.shape[-1], int(v.shape[1] ** 0.5)
            v = F.interpolate(v.reshape(1, g, g, c).permute(0, 3, 1, 2), size=grids[0], mode='bicubic',
                              align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, c)
        elif k.endswith('filter.complex_weight'):
            stage = int(k.split('.')[1]) if variant.startswith('gfnet_h') else 0
            h, w = grids[stage]
            x = v.reshape(*v.shape[:2], -1).permute(2, 0, 1)[None]
            v = F.interpolate(x, size=(h, w // 2 + 1), mode='bicubic', align_corners=True)[0].permute(1, 2, 0) \
                .reshape(h, w // 2 + 1, *v.shape[2:])
        out[k] = v.contiguous()
    g = torch.Generator().manual_seed(num_classes)
    out['head.weight'] = torch.randn(num_classes, sd['head.weight'].shape[1], generator=g)
    out['head.bias'] = torch.randn(num_classes, generator=g)
    return out


@pytest.fixture(scope='module')
def ft384(tmp_path_factory) -> Path:
    """gfnet_ti fine-tuned at 384 with 10 classes, in the authors' format (their args carry input_size)."""
    import argparse
    path = tmp_path_factory.mktemp('ft384') / 'ti384.pth'
    sd = _resampled_authors('gfnet_ti', [(24, 24)], 10)
    torch.save({'model': sd, 'epoch': 29, 'args': argparse.Namespace(input_size=384, nb_classes=10)}, path)
    return path


def _equal(model: torch.nn.Module, sd: dict) -> bool:
    from timm_gfnet.checkpoint import _authors_to_timm_key
    sd = {_authors_to_timm_key(k): v for k, v in sd.items()}
    state = model.state_dict()
    return sorted(state) == sorted(sd) and all(torch.equal(state[k], v) for k, v in sd.items())


def test_fine_tuned_at_384_stays_384_everywhere(ft384, tmp_path, capsys):
    weights = torch.load(ft384, weights_only=False)['model']
    model = load_model(ft384).eval()
    assert model.patch_embed.img_size == (384, 384) and model.num_classes == 10 and _equal(model, weights)
    assert timm.data.resolve_model_data_config(model)['input_size'] == (3, 384, 384)
    # timm's own pretrained=True builds what is asked for (timm's rule): asked for the file's size and classes
    same = timm.create_model('gfnet_ti', pretrained=True, img_size=384, num_classes=10,
                             pretrained_cfg_overlay=dict(file=str(ft384), custom_load=True))
    assert _equal(same, weights)

    assert main(['convert', str(ft384), '--out', str(tmp_path / 'conv')]) == 0
    out = capsys.readouterr().out
    assert '10-class head, 384x384 images of 3 channels (its own)' in out
    assert _equal(load_model(tmp_path / 'conv'), weights)
    assert json.loads((tmp_path / 'conv' / 'config.json').read_text())['model_args'] == {'img_size': [384, 384]}
    assert all(torch.equal(v, weights[k]) for k, v in load_file(str(tmp_path / 'conv' / 'model.safetensors')).items())

    assert main(['export-onnx', '--checkpoint', str(ft384), '--out', str(tmp_path / 'm.onnx'), '--no-check']) == 0
    dims = onnx.load(str(tmp_path / 'm.onnx')).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 384, 384]
    assert 'resampled' not in capsys.readouterr().out
    # another size only when asked, and then said in one line
    assert main(['export-onnx', '--checkpoint', str(ft384), '--out', str(tmp_path / 'm224.onnx'), '--no-check',
                 '--img-size', '224']) == 0
    assert "resampled pos_embed and the filters from the weights' own 384x384 to 224x224 (--img-size)" in \
        capsys.readouterr().out


def test_non_square_hierarchical_checkpoint_keeps_its_grids(tmp_path):
    """A gfnet_h_ti at 256x320 (stem grid 64x80): the old grid of pos_embed comes from the stem's filter, not from
    whichever filter comes first in the file (here the last stage's, 8x10)."""
    sd = _resampled_authors('gfnet_h_ti', [(64, 80), (32, 40), (16, 20), (8, 10)], 7)
    shuffled = dict(reversed(list(sd.items())))
    save_file(shuffled, str(tmp_path / 'h.safetensors'))
    model = load_model(tmp_path / 'h.safetensors')
    assert model.patch_embed.img_size == (256, 320) and model.num_classes == 7 and _equal(model, sd)
    assert [s.blocks[0].filter.grid_size for s in model.stages] == [(64, 80), (32, 40), (16, 20), (8, 10)]
    # another size on request: resampled from the right old grid (64x80), equal to set_input_size from its own
    at_224 = load_model(tmp_path / 'h.safetensors', img_size=224)
    model.set_input_size(224)
    assert all(torch.equal(v, at_224.state_dict()[k]) for k, v in model.state_dict().items())


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(variant=st.sampled_from(['gfnet_ti', 'gfnet_h_ti']), side=st.integers(3, 9), aspect=st.integers(0, 2),
       num_classes=st.sampled_from([0, 1, 10, 1000]), writer=st.sampled_from(['save_for_hf', 'convert', 'state']))
def test_any_checkpoint_of_ours_loads_back_bit_exact(variant, side, aspect, num_classes, writer, tmp_path_factory):
    """A model at a random size and class count, written by timm's save_for_hf, by `convert` or as a bare
    state_dict, loads back bit-exact, at its size and with its head, through load_model (folder and weights file),
    timm's local-dir: and a second convert."""
    d = tmp_path_factory.mktemp('prop')
    stride = 16 if variant == 'gfnet_ti' else 32
    size = (side * stride, (side + aspect) * stride)
    torch.manual_seed(side)
    source = timm.create_model(variant, img_size=size, num_classes=num_classes).eval()
    if writer == 'save_for_hf':
        timm.models.save_for_hf(source, str(d / 'src'), safe_serialization=True)
        path = d / 'src'
    elif writer == 'convert':
        save_file(source.state_dict(), str(d / 'raw.safetensors'))
        assert main(['convert', str(d / 'raw.safetensors'), '--out', str(d / 'src')]) == 0
        path = d / 'src'
    else:
        torch.save(source.state_dict(), d / 'state.pth')
        path = d / 'state.pth'
    weights = source.state_dict()
    # timm < 1.0.31's save_for_hf records no input size (model_args): its own local-dir: then builds the default
    # size, while load_model reads the size from the weights
    direct = path.is_dir() and (writer != 'save_for_hf' or hasattr(timm.models, 'get_model_args'))
    for loaded in (load_model(path), timm.create_model(f'local-dir:{path}', pretrained=True) if direct
                   else load_model(path, model_name=variant) if not path.is_dir() else load_model(path)):
        assert loaded.patch_embed.img_size == size and loaded.num_classes == num_classes
        assert _equal(loaded, weights)
    assert main(['convert', str(path / 'model.safetensors' if path.is_dir() else path), '--out', str(d / 'again')]) == 0
    assert _equal(load_model(d / 'again'), weights)


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp('folder')
    save_file(authors_state_dict('gfnet_ti'), str(d / 'w.safetensors'))
    assert main(['convert', str(d / 'w.safetensors'), '--out', str(d / 'ti')]) == 0
    return d / 'ti'


@pytest.mark.parametrize('change,message', [
    (lambda sd: sd['blocks.1.filter.complex_weight'].view(-1)[3].fill_(float('inf')),
     'Checkpoint weights are unusable. Non-finite values (NaN/inf) in: blocks.1.filter.complex_weight.'),
    (lambda sd: sd.update({'norm.weight': sd['norm.weight'].to(torch.int64)}),
     'Checkpoint weights are unusable. Not floating point: norm.weight torch.int64.'),
    (lambda sd: (sd.pop('blocks.2.norm2.bias'), sd.update({'extra.weight': torch.zeros(2)})),
     'Checkpoint does not fit the model. Missing keys: blocks.2.norm2.bias. Unexpected keys: extra.weight.'),
], ids=['inf', 'integer', 'keys'])
def test_folders_and_hub_get_the_checks_files_get(folder, tmp_path, change, message):
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'config.json').write_bytes((folder / 'config.json').read_bytes())
    sd = load_file(str(folder / 'model.safetensors'))
    change(sd)
    save_file(sd, str(bad / 'model.safetensors'))
    for load in (lambda: load_model(bad), lambda: load_model(f'local-dir:{bad}'),
                 lambda: timm.create_model(f'local-dir:{bad}', pretrained=True)):
        with pytest.raises(CheckpointError) as e:
            load()
        assert str(e.value) == message
    # the Hub's cache layout, offline: the same check, and where the file is
    snap = tmp_path / 'hub' / 'models--org--ti' / 'snapshots' / ('0' * 40)
    snap.mkdir(parents=True)
    for f in ('config.json', 'model.safetensors'):
        (snap / f).write_bytes((bad / f).read_bytes())
    (snap.parents[1] / 'refs').mkdir()
    (snap.parents[1] / 'refs' / 'main').write_text('0' * 40)
    with pytest.raises(CheckpointError) as e:
        timm.create_model('hf-hub:org/ti', pretrained=True, cache_dir=str(tmp_path / 'hub'))
    assert str(e.value).startswith(message + ' It came from Hub repository org/ti ')


def test_interrupted_convert_keeps_the_earlier_one(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    assert main(['convert', str(folder / 'model.safetensors'), '--out', str(out)]) == 0
    wrote = [line.split('wrote ')[1] for line in capsys.readouterr().out.splitlines() if 'wrote ' in line]
    assert sorted(wrote) == [str(out / 'config.json'), str(out / 'model.safetensors')]  # not notes.txt
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / 'xs.safetensors'
    save_file(authors_state_dict('gfnet_xs'), str(other))

    import safetensors.torch
    real = safetensors.torch.save_file

    def save_then_ctrl_c(*args, **kwargs):  # Ctrl-C between the weights and config.json of the new conversion
        real(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, 'save_file', save_then_ctrl_c)
    assert main(['convert', str(other), '--out', str(out)]) == 130
    assert capsys.readouterr().err == 'timm-gfnet convert: interrupted; no output was left half-written.\n'
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out', 'xs.safetensors']  # no staging folder left

"""What a user gives is what they keep: a checkpoint's size, head and values survive every command (or the command
says in one line what it changed); every source gets the same checks; writes are all or nothing; images of any bit
depth; arguments checked where they enter."""
import json
from pathlib import Path

import onnx
import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from reference import authors_state_dict
from timm_gfnet import load_model
from timm_gfnet.checkpoint import CheckpointError
from timm_gfnet.cli import main


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
    from timm_gfnet.gfnet import _authors_to_timm_key
    sd = {_authors_to_timm_key(k): v for k, v in sd.items()}
    state = model.state_dict()
    return sorted(state) == sorted(sd) and all(torch.equal(state[k], v) for k, v in sd.items())


# ---- every checkpoint at its own size

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
    for loaded in (load_model(path), timm.create_model(f'local-dir:{path}', pretrained=True) if path.is_dir()
                   else load_model(path, model_name=variant)):
        assert loaded.patch_embed.img_size == size and loaded.num_classes == num_classes
        assert _equal(loaded, weights)
    assert main(['convert', str(path / 'model.safetensors' if path.is_dir() else path), '--out', str(d / 'again')]) == 0
    assert _equal(load_model(d / 'again'), weights)


# ---- every source gets the same checks

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


# ---- writes are all or nothing, and keep what they did not write

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

"""The one loader (`timm_gfnet.load_model`) and every command that loads weights: a fine-tuned head is kept."""
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from reference import authors_state_dict, expected, input_batch, write_authors_checkpoint, write_fine_tuned_checkpoint
from timm_gfnet import load_model
from timm_gfnet.checkpoint import CheckpointError
from timm_gfnet.pretrained_sources import authors_cache_name


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'timm_gfnet.cli', *args], capture_output=True, text=True)


@pytest.fixture(scope='module')
def fine_tuned(tmp_path_factory):
    """A 10-class gfnet_ti in the authors' format, its head, and its converted folder (`timm-gfnet convert`)."""
    d = tmp_path_factory.mktemp('ft')
    ckpt, head = write_fine_tuned_checkpoint('gfnet_ti', d / 'ft10.pth', num_classes=10)
    proc = _cli('convert', str(ckpt), '--out', str(d / 'ft10'))
    assert proc.returncode == 0, proc.stderr
    assert 'gfnet_ti (recognised from its shapes)' in proc.stdout and '10-class head' in proc.stdout
    return ckpt, head, d / 'ft10'


def _assert_head(model: torch.nn.Module, head: dict) -> None:
    assert model.num_classes == 10
    assert torch.equal(model.head.weight, head['head.weight']) and torch.equal(model.head.bias, head['head.bias'])


def test_python_api_keeps_the_fine_tuned_head(fine_tuned):
    ckpt, head, folder = fine_tuned
    for source in (ckpt, str(ckpt), folder, f'local-dir:{folder}', folder / 'model.safetensors'):
        _assert_head(load_model(source), head)
    # the same weights through timm itself: equal to the authors' recipe everywhere but the head
    model = load_model(ckpt)
    reference = authors_state_dict('gfnet_ti')  # isotropic models keep the authors' key names
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items() if not k.startswith('head.'))


def test_another_num_classes_gets_a_new_head(fine_tuned):
    ckpt, head, folder = fine_tuned
    for source in (ckpt, folder):
        model = load_model(source, num_classes=5)
        assert model.head.weight.shape == (5, 256)
        assert torch.equal(model.blocks[11].filter.complex_weight, authors_state_dict('gfnet_ti')[
            'blocks.11.filter.complex_weight'])
    assert isinstance(load_model(ckpt, num_classes=0).head, torch.nn.Identity)


def test_convert_writes_the_exact_head_and_a_config_every_client_reads(fine_tuned):
    _, head, folder = fine_tuned
    weights = load_file(str(folder / 'model.safetensors'))
    assert all(torch.equal(weights[k], v) for k, v in head.items())
    config = json.loads((folder / 'config.json').read_text())
    assert config['num_classes'] == 10 and 'model_args' not in config and 'label_names' not in config


def test_transformers_loads_a_converted_folder(tmp_path):
    """transformers' TimmWrapper reads what `convert` writes: the authors' logits (reference data), and the
    image-classification pipeline names ImageNet classes."""
    from transformers import AutoModelForImageClassification, pipeline

    ckpt = write_authors_checkpoint('gfnet_ti', tmp_path / 'ti.pth')
    assert _cli('convert', str(ckpt), '--out', str(tmp_path / 'ti')).returncode == 0
    model = AutoModelForImageClassification.from_pretrained(str(tmp_path / 'ti')).eval()
    with torch.no_grad():
        logits = model(pixel_values=input_batch()).logits
    assert (logits - expected()['gfnet_ti.logits']).abs().max() < 1e-4
    result = pipeline('image-classification', model=str(tmp_path / 'ti'))(Image.new('RGB', (256, 240)), top_k=2)
    names = set(timm.data.ImageNetInfo().label_descriptions())
    assert len(result) == 2 and all(r['label'] in names for r in result)


def test_transformers_keeps_a_fine_tuned_head_and_another_size(tmp_path):
    from transformers import AutoModelForImageClassification

    from timm_gfnet.hub import save_for_hub

    ckpt, head = write_fine_tuned_checkpoint('gfnet_ti', tmp_path / 'ft.pth', num_classes=10)
    source = load_model(ckpt, img_size=256).eval()
    save_for_hub(source, tmp_path / 'ft256')
    config = json.loads((tmp_path / 'ft256' / 'config.json').read_text())
    assert config['model_args'] == {'img_size': [256, 256]} and config['num_classes'] == 10
    model = AutoModelForImageClassification.from_pretrained(str(tmp_path / 'ft256')).eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, source(x), rtol=0, atol=1e-5)
    assert torch.equal(model.timm_model.head.weight, head['head.weight'])


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
    with torch.no_grad():
        assert torch.equal(model(x), at_load(x))
    save_for_hub(model, tmp_path / 'resized')
    config = json.loads((tmp_path / 'resized' / 'config.json').read_text())
    assert config['model_args'] == {'img_size': [256, 192]} and config['pretrained_cfg']['input_size'] == [3, 256, 192]
    reloaded = timm.create_model(f'local-dir:{tmp_path / "resized"}', pretrained=True).eval()
    assert timm.data.resolve_model_data_config(reloaded)['input_size'] == (3, 256, 192)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    # the hierarchical family: every stage's filters follow its own (halved) grid
    pyramid = timm.create_model('gfnet_h_ti', depth=(1, 1, 2, 1)).eval()
    weights = pyramid.state_dict()
    pyramid.set_input_size(288)
    at_load = timm.create_model('gfnet_h_ti', depth=(1, 1, 2, 1), img_size=288, pretrained=True,
                                pretrained_cfg_overlay=dict(state_dict=weights)).eval()
    assert [f.grid_size for f in (pyramid.stages[i].blocks[0].filter for i in range(4))] == [
        (72, 72), (36, 36), (18, 18), (9, 9)]
    assert all(torch.equal(v, at_load.state_dict()[k]) for k, v in pyramid.state_dict().items())


def test_predict_on_a_fine_tuned_pth_and_an_authors_pth(fine_tuned, tmp_path):
    ckpt, head, _ = fine_tuned
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(tmp_path / 'a.png')
    proc = _cli('predict', str(tmp_path / 'a.png'), '--checkpoint', str(ckpt), '--topk', '3')
    assert proc.returncode == 0, proc.stderr
    model = load_model(ckpt).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        top = model(transform(Image.open(tmp_path / 'a.png').convert('RGB'))[None]).softmax(-1)[0].topk(3)
    assert proc.stdout.splitlines()[1:] == [f'  {p.item():7.2%}  class {i}' for p, i in zip(*top)]
    authors = write_authors_checkpoint('gfnet_ti', tmp_path / 'ti.pth')
    proc = _cli('predict', str(tmp_path / 'a.png'), '--checkpoint', str(authors), '--topk', '2')
    assert proc.returncode == 0, proc.stderr
    names = set(timm.data.ImageNetInfo().label_descriptions())
    assert all(line.split('%', 1)[1].strip() in names for line in proc.stdout.splitlines()[1:])


def test_export_onnx_keeps_the_fine_tuned_head(fine_tuned, tmp_path):
    ckpt, head, _ = fine_tuned
    out = tmp_path / 'ft.onnx'
    proc = _cli('export-onnx', '--checkpoint', str(ckpt), '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    model = load_model(ckpt).eval()
    x = input_batch()
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    got = session.run(None, {'input': x.numpy()})[0]
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, (features @ head['head.weight'].T + head['head.bias']).numpy(), atol=1e-4)


def test_viz_takes_a_fine_tuned_checkpoint(fine_tuned, tmp_path):
    ckpt, _, folder = fine_tuned
    for source in (ckpt, folder):
        out = tmp_path / f'{source.name}.png'
        proc = _cli('viz', '--checkpoint', str(source), '--out', str(out))
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_loader_errors(tmp_path):
    ckpt = write_authors_checkpoint('gfnet_ti', tmp_path / 'ti.pth')
    with pytest.raises(CheckpointError, match=r"This checkpoint is gfnet_ti \(12 blocks of width 256\); gfnet_xs has "
                                              r"12 blocks of width 384.*timm.create_model\('gfnet_ti'\)"):
        load_model(ckpt, model_name='gfnet_xs')
    with pytest.raises(ValueError, match="'resnet18' is not a GFNet model"):
        load_model(ckpt, model_name='resnet18')
    save_file({'conv1.weight': torch.zeros(8, 3, 3, 3)}, str(tmp_path / 'other.safetensors'))
    with pytest.raises(CheckpointError, match='matches no GFNet variant .* pass the model name'):
        load_model(tmp_path / 'other.safetensors')
    with pytest.raises(FileNotFoundError, match='No checkpoint file or folder at .*not a GFNet name'):
        load_model(tmp_path / 'missing.pth')
    sd = authors_state_dict('gfnet_ti')
    sd['blocks.0.mlp.fc1.weight'] = sd['blocks.0.mlp.fc1.weight'].to(torch.int32)
    with pytest.raises(CheckpointError, match=r'Not floating point: blocks.0.mlp.fc1.weight torch.int32'):
        load_model(sd_file(tmp_path, sd))


def sd_file(tmp_path, sd: dict):
    path = tmp_path / 'sd.pth'
    torch.save(sd, path)
    return path


def test_a_registered_name_loads_its_pretrained_weights(tmp_path, monkeypatch):
    """`load_model('gfnet_ti')` is `pretrained=True`: here from timm's cache (the authors' file already downloaded
    there under its cache name, so no network), at another size on request."""
    for var in ('HF_HUB_OFFLINE', 'TIMM_OFFLINE', 'TIMM_GFNET_HF_HUB_ORG'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    url = timm.models.get_pretrained_cfg('gfnet_ti.in1k').url
    ckpt = write_authors_checkpoint('gfnet_ti', cache / authors_cache_name(url, 'gfnet_ti', 'in1k'))
    for name in ('gfnet_ti', 'gfnet_ti.in1k'):
        with torch.no_grad():
            logits = load_model(name).eval()(input_batch())
        assert (logits - expected()['gfnet_ti.logits']).abs().max() < 1e-4
    resized, from_file = load_model('gfnet_ti', img_size=256), load_model(ckpt, img_size=256)
    assert resized.patch_embed.img_size == (256, 256)
    assert all(torch.equal(v, from_file.state_dict()[k]) for k, v in resized.state_dict().items())

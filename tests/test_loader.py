"""Every command and client that loads weights keeps a fine-tuned head (the loader itself: test_checkpoint.py)."""
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image

from reference import expected, input_batch, write_authors_checkpoint, write_fine_tuned_checkpoint
from timm_gfnet import load_model


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



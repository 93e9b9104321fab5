"""`timm-gfnet convert / predict`, run as users run them (`models`: test_models_table.py)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from reference import write_authors_checkpoint


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'timm_gfnet.cli', *args], capture_output=True, text=True)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp('convert')
    ckpt = write_authors_checkpoint('gfnet_h_ti', d / 'gfnet-h-ti.pth', ddp=True)
    proc = _cli('convert', str(ckpt), '--out', str(d / 'out'))
    assert proc.returncode == 0, proc.stderr
    return ckpt, d / 'out', proc.stdout


def test_convert_recognises_variant_and_round_trips(converted):
    ckpt, out, stdout = converted
    assert 'gfnet_h_ti (recognised from its shapes)' in stdout and "reproduces the source's outputs" in stdout
    assert sorted(p.name for p in out.iterdir()) == ['config.json', 'model.safetensors']  # no pickle files
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'gfnet_h_ti' and config['num_classes'] == 1000
    source = timm.create_model('gfnet_h_ti', pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_convert_refuses_other_variant(tmp_path):
    ckpt = write_authors_checkpoint('gfnet_ti', tmp_path / 'ti.pth')
    proc = _cli('convert', str(ckpt), '--model', 'gfnet_xs', '--out', str(tmp_path / 'out'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'This checkpoint is gfnet_ti (12 blocks of width 256); gfnet_xs has 12 blocks of width 384' in proc.stderr


def test_convert_names_missing_and_unexpected_keys(tmp_path):
    from reference import authors_state_dict
    sd = authors_state_dict('gfnet_ti')
    del sd['blocks.3.norm2.bias']
    sd['blocks.3.extra.weight'] = torch.zeros(3)
    torch.save({'model': sd}, tmp_path / 'broken.pth')
    proc = _cli('convert', str(tmp_path / 'broken.pth'), '--model', 'gfnet_ti', '--out', str(tmp_path / 'out'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert 'Missing keys: blocks.3.norm2.bias.' in proc.stderr
    assert 'Unexpected keys: blocks.3.extra.weight.' in proc.stderr


def test_predict(converted, tmp_path):
    _, out, _ = converted
    rng = np.random.default_rng(0)
    for i, size in enumerate([(300, 400), (224, 224)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f'{i}.png')
    proc = _cli('predict', str(tmp_path / '0.png'), str(tmp_path / '1.png'), '--checkpoint', str(out), '--topk', '3')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith('0.png') and lines[4].endswith('1.png') and len(lines) == 8

    # the same answer as the model itself on the authors' eval transform
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    with torch.no_grad():
        probs = model(transform(Image.open(tmp_path / '0.png').convert('RGB'))[None]).softmax(-1)[0]
    top = probs.topk(3)
    info = timm.data.ImageNetInfo()
    for line, p, i in zip(lines[1:4], top.values, top.indices):
        assert line.split(maxsplit=1) == [f'{p.item():.2%}', info.index_to_description(int(i))]

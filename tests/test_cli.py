"""The `timm-gfnet` command line, run as users run it: the installed script or `timm_gfnet.cli.main([...])`.
Here: parsing and its errors, convert, predict, push's load command, all-or-nothing outputs. Each command's own
behaviour is also tested beside its module: test_predict, test_onnx_export, test_viz, test_hub, test_cards,
test_recipes, test_bench; and `models` against the README table and the cards."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image

from reference import input_batch, write_authors_checkpoint, write_fine_tuned_checkpoint
from timm_gfnet import cli, load_model
from timm_gfnet.checkpoint import CheckpointError
from timm_gfnet.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`timm-gfnet ARGS` in this process (a fresh interpreter per call would double the time)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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


# ---- parsing: argparse's own one-line errors, before any work starts

def test_bad_arguments_exit_2_with_usage():
    """The installed console script: an argparse error is a usage line and one error line, exit status 2."""
    proc = subprocess.run([str(Path(sys.executable).with_name('timm-gfnet')), 'nonsense'], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith('usage: timm-gfnet') and 'Traceback' not in proc.stderr
    assert lines[-1].startswith("timm-gfnet: error: argument COMMAND: invalid choice: 'nonsense'"), proc.stderr


def test_every_command_rejects_unknown_flags(capsys):
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert len(commands) == 9
    for cmd in [[]] + [[c, '--no-such-flag'] for c in commands]:
        with pytest.raises(SystemExit) as e:
            main(cmd)
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'Traceback' not in err
        assert err.strip().splitlines()[-1].startswith('timm-gfnet'), (cmd, err)
        assert ': error: ' in err.strip().splitlines()[-1]


@pytest.mark.parametrize('argv,says', [
    (['predict', 'a.png', '--topk', '-1'], 'argument --topk: -1 is not a positive number'),
    (['predict', 'a.png', '--topk', 'five'], "argument --topk: invalid int value: 'five'"),
    (['predict', 'a.png', '--batch-size', '0'], 'argument --batch-size: 0 is not a positive number'),
    (['export-onnx', '--model', 'gfnet_ti', '--out', 'm.onnx', '--img-size', '0'],
     'argument --img-size: 0 is not a positive number'),
    (['export-onnx', '--model', 'gfnet_ti', '--out', 'm.onnx', '--tolerance', 'tiny'],
     "argument --tolerance: invalid float value: 'tiny'"),
    (['export-onnx', '--model', 'gfnet_ti'], 'the following arguments are required: --out'),
    (['bench', '--batch-size', '0'], 'argument --batch-size: 0 is not a positive number'),
    (['bench', '--repeats', '2.5'], "argument --repeats: invalid int value: '2.5'"),
    (['bench', '--sizes', '0'], 'argument --sizes: 0 is not a positive multiple of 32 (the largest stride of the '
                                'models)'),
    (['bench', '--sizes', '100'], 'argument --sizes: 100 is not a positive multiple of 32 (the largest stride of the '
                                  'models)'),
    (['bench', '--train-max-size', '-1'], 'argument --train-max-size: -1 is not a whole number >= 0'),
    (['bench', '--max-call-seconds', '-1'], 'argument --max-call-seconds: -1 is not a number >= 0'),
    (['viz', '--model', 'gfnet_ti', '--out', 'x.png', '--channels', '0'],
     'argument --channels: 0 is not a positive number'),
])
def test_numbers_are_checked_at_parse_time(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(says)


@pytest.mark.parametrize('exc', [ValueError, FileNotFoundError, RuntimeError, OSError, CheckpointError])
def test_runtime_errors_are_one_line(monkeypatch, capsys, exc):
    def fail(args):
        raise exc('it went wrong: here is how to fix it')

    monkeypatch.setattr(cli, '_models', fail)
    assert main(['models']) == 1
    assert capsys.readouterr().err == 'timm-gfnet models: error: it went wrong: here is how to fix it\n'


# ---- outputs: exactly where they say, folders and files not mistaken for each other

def test_every_file_output_is_exactly_where_it_says(tmp_path, capsys):
    assert main(['viz', '--model', 'gfnet_ti', '--out', str(tmp_path / 'noext')]) == 0
    assert f'wrote {tmp_path / "noext"}:' in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['noext']
    assert (tmp_path / 'noext').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert main(['recipe', 'gfnet_ti', '--out', str(tmp_path / 'r.yaml')]) == 0
    assert main(['cards', 'gfnet_ti.in1k', '--out', str(tmp_path / 'cards')]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cards', 'noext', 'r.yaml']
    assert [p.name for p in (tmp_path / 'cards').iterdir()] == ['gfnet_ti.in1k.md']


def test_a_folder_where_a_file_goes(tmp_path, capsys):
    """`recipe --out DIR`: the folder is named, not the temporary file written beside it."""
    (tmp_path / 'recipes').mkdir()
    assert main(['recipe', 'gfnet_ti', '--out', str(tmp_path / 'recipes')]) == 1
    assert capsys.readouterr().err == (
        f'timm-gfnet recipe: error: {tmp_path / "recipes"} is a folder; pass the path of a file to write (e.g. '
        f'{tmp_path / "recipes" / "NAME"}).\n')
    assert [p.name for p in tmp_path.iterdir()] == ['recipes'] and not any((tmp_path / 'recipes').iterdir())


# ---- push: the printed load command loads what was pushed

def test_push_to_a_branch_prints_the_command_that_loads_it(tmp_path):
    """`push --revision dev` to a new repository (main gets no weights): the printed line names `@dev`, and running
    it in plain timm loads the pushed weights."""
    from hub_server import HubServer

    model = timm.create_model('gfnet_ti', depth=1, embed_dim=32, img_size=64, num_classes=3).eval()
    timm.models.save_for_hf(model, tmp_path / 'tiny')
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING', 'TIMM_'))}
    with HubServer({'hf_alice': 'alice'}) as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / 'hf'), HF_HUB_DISABLE_XET='1')
        proc = subprocess.run([sys.executable, '-m', 'timm_gfnet.cli', 'push', str(tmp_path / 'tiny'),
                               'alice/tiny', '--revision', 'dev', '--token', 'hf_alice'],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        line = proc.stdout.splitlines()[-1]
        assert line == "load it with timm.create_model('hf-hub:alice/tiny@dev', pretrained=True)"
        assert 'model.safetensors' not in hub.files('alice/tiny', 'main')
        code = (f"import timm, torch\nm = {line.split(' with ', 1)[1]}\n"
                f"print(float(m.eval()(torch.ones(1, 3, 64, 64)).sum()))")
        loaded = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    with torch.no_grad():
        assert float(loaded.stdout) == pytest.approx(float(model(torch.ones(1, 3, 64, 64)).sum()), abs=1e-5)


# ---- a fine-tuned head through predict, export-onnx and viz


@pytest.fixture(scope='module')
def fine_tuned(tmp_path_factory):
    """A 10-class gfnet_ti in the authors' format, its head, and its converted folder (`timm-gfnet convert`)."""
    d = tmp_path_factory.mktemp('ft')
    ckpt, head = write_fine_tuned_checkpoint('gfnet_ti', d / 'ft10.pth', num_classes=10)
    proc = _cli('convert', str(ckpt), '--out', str(d / 'ft10'))
    assert proc.returncode == 0, proc.stderr
    assert 'gfnet_ti (recognised from its shapes)' in proc.stdout and '10-class head' in proc.stdout
    return ckpt, head, d / 'ft10'


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


# ---- `timm-gfnet models`: what the README table and the model cards say, row by row (parsed, not hard-coded)


def _rows(text: str) -> Dict[str, List[str]]:
    """{model: cells} of a table printed by `timm-gfnet models` (header and rule skipped)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines[0].split()[:2] == ['model', 'params'] and set(lines[1].replace(' ', '')) == {'-'}, lines[:2]
    return {line.split()[0]: line.split() for line in lines[2:]}


def _readme_table() -> Dict[str, List[str]]:
    readme = (ROOT / 'README.md').read_text()
    m = re.search(r'```text\n\$ timm-gfnet models\n(.*?)```', readme, re.S)
    assert m, 'README.md has no `$ timm-gfnet models` block'
    return _rows(m.group(1))


def _card(tag: str) -> Dict[str, str]:
    text = (ROOT / 'model_cards' / f'{tag}.md').read_text()
    fields = {}
    for key in ('Params (M)', 'GMACs', 'Channels', 'Strides'):
        m = re.search(rf'^\s*- \*?\*?{re.escape(key)}:?\*?\*?:? (.+)$', text, re.M)
        assert m, f'{tag}.md has no "{key}" line'
        fields[key] = m.group(1).strip()
    return fields


@pytest.fixture(scope='module')
def printed() -> str:
    proc = subprocess.run([sys.executable, '-m', 'timm_gfnet.cli', 'models'], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_row_equals_the_readme(printed):
    rows, readme = _rows(printed), _readme_table()
    assert sorted(rows) == sorted(timm.list_models('gfnet*')) == sorted(readme)
    for name, cells in rows.items():
        assert cells == readme[name], f'{name}: printed {cells}, README {readme[name]}'


def test_every_row_equals_its_model_card(printed):
    rows = _rows(printed)
    for name, (_, params, gmacs, channels, strides, *tags) in rows.items():
        for tag in tags:
            card = _card(f'{name}.{tag}')
            assert card['Params (M)'] == params and card['GMACs'] == gmacs, (name, tag, card)
            # the card names every feature map (four of them); the table one per stage
            assert set(card['Channels'].split(', ')) == set(channels.split(',')), (name, card)
            assert set(card['Strides'].split(', ')) == set(strides.split(',')), (name, card)

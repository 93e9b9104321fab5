"""timm_gfnet.hub: `timm-gfnet push` with the real huggingface_hub client against a Hub look-alike on 127.0.0.1
(hub_server.py), then loading back with plain timm and transformers in a fresh interpreter; the push errors; and what
`export_for_hub` / `save_for_hub` write (config.json, the card's claims)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load as load_safetensors
from timm.data import ImageNetInfo
from timm.models import save_for_hf

from reference import authors_state_dict, expected, input_batch, write_authors_checkpoint, write_fine_tuned_checkpoint
from timm_gfnet import load_model
from timm_gfnet.cards import generate_card
from timm_gfnet.checkpoint import _DIGEST, weights_digest
from timm_gfnet.cli import main
from timm_gfnet.hub import export_for_hub, save_for_hub
from timm_gfnet.published import PUBLISHED

TOKEN = 'hf_alice_write'
ORG = 'gfnet-org'
REPO = f'{ORG}/gfnet_ti.in1k'


@pytest.fixture(scope='module')
def hub():
    # alice may write to her namespace and the org; bob has a valid token but is not in the org
    with HubServer({TOKEN: 'alice', 'hf_bob_write': 'bob'}, orgs={ORG: {'alice'}}) as server:
        yield server


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return write_authors_checkpoint('gfnet_ti', tmp_path_factory.mktemp('ckpt') / 'gfnet-ti.pth')


@pytest.fixture
def in_process(hub, monkeypatch, tmp_path):
    """huggingface_hub's settings in this process pointed at the server, uploads over LFS (the server speaks no Xet),
    online, and no token of the machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'ENDPOINT', hub.endpoint)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_XET', True, raising=False)  # huggingface_hub < 0.32: no Xet
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'token'))
    for key in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN'):
        monkeypatch.delenv(key, raising=False)
    return constants


def _env(tmp: Path, endpoint: str, **extra: str) -> dict:
    """A clean environment: no Hub settings or tokens of the machine, fresh caches, the given endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING', 'TIMM_'))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / 'hf'), TORCH_HOME=str(tmp / 'torch'), **extra)
    return env


def _push(*args: str, endpoint: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    # uploads go through LFS: the test server does not speak Xet (hf_xet is installed, so say so)
    return subprocess.run(
        [sys.executable, '-m', 'timm_gfnet.cli', 'push', *args],
        env=_env(tmp, endpoint, HF_HUB_DISABLE_XET='1', **env), capture_output=True, text=True, timeout=300)


def test_push_then_plain_timm_and_transformers_load_it(hub, checkpoint, tmp_path):
    """The round trip in one test (one push, whichever xdist worker runs it): what is uploaded, then loading."""
    pushed = _push(str(checkpoint), REPO, endpoint=hub.endpoint, tmp=tmp_path / 'push', HF_TOKEN=TOKEN)
    assert pushed.returncode == 0, pushed.stderr
    files = hub.files(REPO)
    assert sorted(files) == ['.gitattributes', 'README.md', 'config.json', 'model.safetensors']  # no pickle files
    assert hub.lfs_paths(REPO) == {'model.safetensors'}  # the weights went through the LFS upload protocol
    assert not hub.unhandled and not hub.repos[REPO].private

    config = json.loads(files['config.json'])
    assert (config['architecture'], config['num_classes'], config['num_features']) == ('gfnet_ti', 1000, 256)
    # the registered architecture as it is: nothing in model_args (transformers passes num_classes itself), and no
    # stored synsets (both clients infer ImageNet-1k from the 1000 classes)
    assert 'model_args' not in config and 'label_names' not in config
    cfg = config['pretrained_cfg']
    assert (cfg['tag'], cfg['custom_load'], cfg['input_size'], cfg['license']) == ('in1k', False, [3, 224, 224], 'mit')

    # the authors' weights, exactly (isotropic models keep the authors' key names)
    weights = load_safetensors(files['model.safetensors'])
    source = authors_state_dict('gfnet_ti')
    assert sorted(weights) == sorted(source) and all(torch.equal(weights[k], v) for k, v in source.items())

    # weights in the authors' format, but not their released tensors: no published results claimed
    card = files['README.md'].decode()
    assert card == str(generate_card('gfnet_ti.in1k', repo_id=REPO, model_args={'num_classes': 1000}))
    assert f"timm.create_model('hf-hub:{REPO}', pretrained=True)" in card and 'model-index' not in card

    # huggingface_hub's upload progress bar, then where the model is and how to load it
    assert 'model.safetensors: 100%' in pushed.stderr
    assert f"load it with timm.create_model('hf-hub:{REPO}', pretrained=True)" in pushed.stdout

    _check_clients_load(hub, tmp_path / 'load')


LOAD = r'''
import os
import sys
import timm
import torch
from huggingface_hub import snapshot_download
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

repo_id, x_file, out_file, local_dir = sys.argv[1:]
x = torch.load(x_file)
hub_model = timm.create_model(f'hf-hub:{repo_id}', pretrained=True).eval()
local = snapshot_download(repo_id, local_dir=local_dir)
local_model = timm.create_model(f'local-dir:{local}', pretrained=True).eval()
hf_model = AutoModelForImageClassification.from_pretrained(repo_id).eval()
out = {'files': sorted(os.listdir(local))}
with torch.no_grad():
    out['hf-hub'], out['local-dir'] = hub_model(x), local_model(x)
    out['transformers'] = hf_model(pixel_values=x).logits
# an image through transformers' pipeline (its own preprocessing), and through timm's transform
image = Image.fromarray((x[0].permute(1, 2, 0).clamp(-2, 2) * 60 + 128).to(torch.uint8).numpy())
out['pipeline'] = pipeline('image-classification', model=repo_id)(image, top_k=3)
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(hub_model))
with torch.no_grad():
    out['timm top3'] = hub_model(transform(image).unsqueeze(0))[0].topk(3).indices.tolist()
torch.save(out, out_file)
'''


def _check_clients_load(hub: HubServer, tmp_path: Path) -> None:
    """A fresh interpreter that never imports timm_gfnet itself: timm through `hf-hub:` (downloaded from the server)
    and `local-dir:` (a snapshot of the repo), and transformers' `from_pretrained` and image-classification pipeline,
    all give the authors' outputs (reference data) and ImageNet class names."""
    tmp_path.mkdir()
    x = input_batch()
    torch.save(x, tmp_path / 'x.pt')
    proc = subprocess.run(
        [sys.executable, '-c', LOAD, REPO, str(tmp_path / 'x.pt'), str(tmp_path / 'out.pt'), str(tmp_path / 'snap')],
        env=_env(tmp_path, hub.endpoint), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = torch.load(tmp_path / 'out.pt', weights_only=False)
    reference = expected()['gfnet_ti.logits']
    for key in ('hf-hub', 'local-dir', 'transformers'):
        assert (out[key] - reference).abs().max() < 1e-4, key  # an exact port agrees to about 1e-5
    info = ImageNetInfo()
    assert [r['label'] for r in out['pipeline']] == [info.index_to_description(i) for i in out['timm top3']]
    assert {'config.json', 'model.safetensors', 'README.md'} <= set(out['files'])
    # the weights were downloaded from the server, through the redirect to its storage origin
    assert ('HEAD', f'/{REPO}/resolve/main/model.safetensors') in hub.requests
    oid = [e.lfs_oid for p, e in hub.repos[REPO].trees[hub.repos[REPO].branches['main']].items() if e.lfs_oid][0]
    assert ('GET', f'cdn:/{oid}') in hub.requests


LABELS = r'''
import sys
import timm  # first: the plugin autoload misses GFNet when transformers' find_spec('timm') runs before (reported)
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

repo_id, token, out_file = sys.argv[1:]
model = AutoModelForImageClassification.from_pretrained(repo_id, revision='dev', token=token)
image = Image.new('RGB', (240, 180), (200, 120, 40))
top = pipeline('image-classification', model=repo_id, revision='dev', token=token)(image, top_k=3)
torch.save({'id2label': model.config.id2label, 'pipeline': [r['label'] for r in top]}, out_file)
'''


def test_push_own_head_and_labels_to_a_private_branch_with_own_card(hub, in_process, tmp_path):
    """A 3-class cat/dog/bird model saved by timm's own `save_for_hf`, pushed to a new private repo's `dev` branch
    with a given card: the head exactly as trained, and its labels where transformers shows them."""
    model = timm.create_model('gfnet_ti', num_classes=3)
    folder = tmp_path / 'pets'
    save_for_hf(model, str(folder), model_config={'label_names': ['cat', 'dog', 'bird']}, safe_serialization=True)
    card = tmp_path / 'card.md'
    card.write_text('---\nlicense: mit\nlibrary_name: timm\n---\n# My GFNet\n')
    repo = 'alice/gfnet_ti.pets'
    pushed = main(['push', str(folder), repo, '--private', '--revision', 'dev', '--card', str(card), '--token', TOKEN])
    assert pushed == 0
    assert hub.repos[repo].private and sorted(hub.files(repo, 'main')) == ['.gitattributes']
    files = hub.files(repo, 'dev')
    assert sorted(files) == ['.gitattributes', 'README.md', 'config.json', 'model.safetensors']
    assert files['README.md'].decode() == card.read_text()
    config = json.loads(files['config.json'])
    assert config['num_classes'] == 3 and config['label_names'] == ['cat', 'dog', 'bird']
    weights = load_safetensors(files['model.safetensors'])
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())

    proc = subprocess.run([sys.executable, '-c', LABELS, repo, TOKEN, str(tmp_path / 'out.pt')],
                          env=_env(tmp_path / 'load', hub.endpoint), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = torch.load(tmp_path / 'out.pt')
    assert out['id2label'] == {0: 'cat', 1: 'dog', 2: 'bird'} and sorted(out['pipeline']) == ['bird', 'cat', 'dog']


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# what the Hub said, and the fix
ERRORS = {
    'wrong token': (['--token', 'hf_not_a_token'], '(401: Invalid credentials in Authorization header); pass a '
                    'token with write access (--token or HF_TOKEN, or `hf auth login`).'),
    'no token': ([], '(401: You must be authenticated to create a repository); pass a token with write access'),
    'missing repo': (['--token', TOKEN, '--no-create'], f'refused the push to {ORG}/gfnet_ti.errors (404: '),
    'missing branch': (['--token', TOKEN, '--no-create', '--revision', 'nope'], '(404: Invalid rev id: nope)'),
    'not your namespace': (['--token', 'hf_bob_write'], f'(403: You do not have the rights to create a model under '
                           f"the namespace {ORG}); use a token with write access to '{ORG}', or push to a namespace "
                           'you own.'),
    'no network': (['--token', TOKEN], 'cannot reach the Hub at http://127.0.0.1:'),
    'offline mode': (['--token', TOKEN], 'HF_HUB_OFFLINE is set, so nothing can be pushed; unset HF_HUB_OFFLINE.'),
}


@pytest.mark.parametrize('case', list(ERRORS))
def test_push_errors_are_one_clear_line(case, hub, in_process, checkpoint, monkeypatch, capsys):
    args, message = ERRORS[case]
    if case == 'no network':
        monkeypatch.setattr(in_process, 'ENDPOINT', f'http://127.0.0.1:{_closed_port()}')
    monkeypatch.setattr(in_process, 'HF_HUB_OFFLINE', case == 'offline mode')
    repo = 'alice/gfnet_ti.errors' if case == 'missing branch' else f'{ORG}/gfnet_ti.errors'
    if case == 'missing branch':
        HfApi(token=TOKEN).create_repo(repo)
    repos_before = set(hub.repos)
    assert main(['push', str(checkpoint), repo, *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('timm-gfnet push: error: '), lines
    assert message in lines[0]
    assert set(hub.repos) == repos_before  # nothing was created
    if case.startswith('missing'):
        assert 'leave out --no-create to create them' in lines[0]


def test_push_refuses_bad_input_before_contacting_the_hub(tmp_path, capsys):
    """Local problems are reported (one line, what to do) before any request: no endpoint is even needed."""
    from safetensors.torch import save_file

    (tmp_path / 'empty').mkdir()
    (tmp_path / 'resnet').mkdir()
    (tmp_path / 'resnet' / 'config.json').write_text(json.dumps({'architecture': 'resnet18'}))
    save_file({'conv1.weight': torch.zeros(8, 3, 3, 3)}, str(tmp_path / 'other.safetensors'))
    cases = {
        str(tmp_path / 'missing.pth'): 'No checkpoint file or folder at',
        str(tmp_path / 'empty'): 'has no config.json: pass a folder written by `timm-gfnet convert CKPT --out DIR`',
        str(tmp_path / 'resnet'): "describes 'resnet18', not a GFNet",
        str(tmp_path / 'other.safetensors'): 'matches no GFNet variant',
    }
    for source, message in cases.items():
        assert main(['push', source, f'{ORG}/never', '--token', TOKEN]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('timm-gfnet push: error: ') and message in lines[0], lines
    assert main(['push', str(tmp_path / 'empty'), f'{ORG}/never', '--card', str(tmp_path / 'nope.md')]) == 1
    assert 'No model card file at' in capsys.readouterr().err


def _results(folder: Path):
    return ModelCard.load(folder / 'README.md').data.eval_results  # huggingface_hub's model-index reader


def test_card_claims_published_results_only_for_the_authors_tensors(tmp_path):
    """The authors' top-1 / top-5 go into the card only when the weights digest recorded at loading (the authors'
    release: `recorded_digest`) is that of the tensors exported; never for random or changed ones."""
    model = timm.create_model('gfnet_ti')  # gfnet_ti.in1k's 1000 classes at 224, random weights
    assert _results(export_for_hub(model, tmp_path / 'random')) is None

    model.pretrained_cfg['notes'] = (f'{_DIGEST}{weights_digest(model.state_dict())}',)  # as load_pretrained does
    published = {'accuracy': PUBLISHED['gfnet_ti.in1k']['top1'],
                 'top_5_accuracy': PUBLISHED['gfnet_ti.in1k']['top5']}
    results = _results(export_for_hub(model, tmp_path / 'authors'))
    assert {r.metric_type: r.metric_value for r in results} == published
    # the folder keeps the record (save_for_hf writes `notes`, timm loaders read it back): the same tensors
    reloaded = timm.create_model(f'local-dir:{tmp_path / "authors"}', pretrained=True)
    assert {r.metric_type: r.metric_value for r in _results(export_for_hub(reloaded, tmp_path / 'again'))} == published

    with torch.no_grad():
        model.head.bias[0] += 1e-3  # one weight fine-tuned
    assert _results(export_for_hub(model, tmp_path / 'changed')) is None


@pytest.mark.parametrize('labels,stored', [
    (['cat', 'dog', 'bird'], True),
    ([f'part {i}' for i in range(1000)], True),  # a 1000-class head of its own
    (ImageNetInfo().label_names(), False),  # ImageNet's synsets: both clients infer them from the class count
])
def test_config_keeps_the_models_own_labels(labels, stored, tmp_path):
    model = timm.create_model('gfnet_ti', num_classes=len(labels), img_size=32, depth=1)
    model.pretrained_cfg['label_names'] = labels
    config = json.loads((save_for_hub(model, tmp_path) / 'config.json').read_text())
    assert config.get('label_names') == (labels if stored else None)


def test_the_filter_backend_is_not_architecture(tmp_path):
    """A backend is a run-time choice: config.json does not record it, and the folder loads with the default."""
    model = timm.create_model('gfnet_ti', filter_backend='matmul', img_size=96, depth=2)
    save_for_hub(model, tmp_path / 'm')
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config['model_args'] == {'img_size': [96, 96], 'depth': 2}
    loaded = load_model(tmp_path / 'm')
    assert {m.filter_backend for m in loaded.modules() if hasattr(m, 'filter_backend')} == {'auto'}


# ---- transformers keeps a fine-tuned head at another size


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

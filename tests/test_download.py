"""`pretrained=True` through the real download path, against HTTP servers on 127.0.0.1 started by the tests."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from http_server import FileServer
from hub_server import HubServer
from safetensors.torch import save_file

from reference import authors_state_dict, expected, input_batch, write_authors_checkpoint
from timm_gfnet.checkpoint import CheckpointError
from timm_gfnet.pretrained_sources import HUB_ORG_ENV, PretrainedUnavailableError, authors_cache_name

LINK = '/f/abc/'  # the authors' links look like https://cloud.tsinghua.edu.cn/f/<id>/?dl=1


@pytest.fixture(scope='module')
def authors_file(tmp_path_factory) -> bytes:
    return write_authors_checkpoint('gfnet_ti', tmp_path_factory.mktemp('authors') / 'gfnet_ti.pth').read_bytes()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """A fresh timm cache: timm's get_cache_dir() is $TORCH_HOME/hub/checkpoints."""
    for var in ('HF_HUB_OFFLINE', 'TIMM_OFFLINE', HUB_ORG_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def _cached(url: str) -> str:
    return authors_cache_name(url, 'gfnet_ti', 'in1k')


def _create(url: str, **kwargs) -> torch.nn.Module:
    return timm.create_model('gfnet_ti', pretrained=True, pretrained_cfg_overlay=dict(url=url), **kwargs).eval()


def _assert_authors_outputs(model: torch.nn.Module) -> None:
    with torch.no_grad():
        logits = model(input_batch())
    torch.testing.assert_close(logits, expected()['gfnet_ti.logits'], rtol=0, atol=1e-4)


def _assert_one_clear_error(e: pytest.ExceptionInfo, *parts: str) -> None:
    """One line that says what happened and how to proceed, with no urllib exception chained to it."""
    msg = str(e.value)
    assert '\n' not in msg and e.value.__cause__ is None
    assert e.value.__context__ is None or e.value.__suppress_context__
    for part in (*parts, 'pretrained_cfg_overlay=dict(file=PATH)', "timm.create_model('hf-hub:"):
        assert part in msg, (part, msg)


def test_download_once_into_cache_then_from_cache(torch_home, authors_file, capfd):
    with FileServer({LINK: (200, authors_file)}) as server:
        url = server.url(LINK + '?dl=1')
        model = _create(url)
        assert server.requests == [LINK + '?dl=1']
        # a proper file name (the link itself has none) keyed by the link, nothing half-written beside it
        name = _cached(url)
        assert re.fullmatch(r'gfnet_ti\.in1k-[0-9a-f]{12}\.pth', name)
        assert sorted(p.name for p in torch_home.iterdir()) == [name]
        assert (torch_home / name).read_bytes() == authors_file
        progress = capfd.readouterr().err
        assert name in progress and '100%' in progress
        _assert_authors_outputs(model)

        again = _create(url)
        assert len(server.requests) == 1, 'the second call must come from the cache'
        _assert_authors_outputs(again)


def test_cache_dir_argument(tmp_path, torch_home, authors_file):
    with FileServer({LINK: (200, authors_file)}) as server:
        _assert_authors_outputs(_create(server.url(LINK + '?dl=1'), cache_dir=tmp_path / 'models'))
        assert [p.name for p in (tmp_path / 'models').iterdir()] == [_cached(server.url(LINK + '?dl=1'))]
    assert not torch_home.exists() or not any(torch_home.iterdir())


def test_other_classes_and_channels_from_the_cache(torch_home, authors_file, monkeypatch):
    """A file put in the cache by hand (as the error message suggests) is used offline; timm resets the classifier
    and sums the stem over input channels."""
    torch_home.mkdir(parents=True)
    (torch_home / _cached('http://127.0.0.1:9/unused')).write_bytes(authors_file)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    model = _create('http://127.0.0.1:9/unused', num_classes=10, in_chans=1)
    source = authors_state_dict('gfnet_ti')
    assert model.head.weight.shape == (10, 256)
    assert not torch.equal(model.head.weight[:10], source['head.weight'][:10])
    torch.testing.assert_close(model.patch_embed.proj.weight, source['patch_embed.proj.weight'].sum(1, keepdim=True))
    torch.testing.assert_close(model.blocks[5].filter.complex_weight, source['blocks.5.filter.complex_weight'])
    with torch.no_grad():
        assert model(torch.randn(2, 1, 224, 224)).shape == (2, 10)


def test_offline_and_not_cached(torch_home, authors_file, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with FileServer({LINK: (200, authors_file)}) as server:
        with pytest.raises(PretrainedUnavailableError) as e:
            _create(server.url(LINK + '?dl=1'))
        assert server.requests == []
        name = _cached(server.url(LINK + '?dl=1'))
    _assert_one_clear_error(e, 'Offline mode is on', f'{name} is not cached', f'put the file at {torch_home / name}')


def test_unreachable(torch_home):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(PretrainedUnavailableError) as e:
        _create(f'http://127.0.0.1:{port}{LINK}?dl=1')
    name = _cached(f'http://127.0.0.1:{port}{LINK}?dl=1')
    _assert_one_clear_error(e, f'Could not download {name} from http://127.0.0.1:{port}', 'refused')
    assert not torch_home.exists() or not any(torch_home.iterdir())


@pytest.mark.parametrize('status,says', [
    (404, 'the server answered 404 Not Found'),
    (401, 'the server answered 401 Unauthorized (access refused: the link may have expired)'),
    (403, 'the server answered 403 Forbidden (access refused'),
])
def test_refused(torch_home, status, says):
    with FileServer({LINK: (status, b'<html>no</html>')}) as server:
        with pytest.raises(PretrainedUnavailableError) as e:
            _create(server.url(LINK + '?dl=1'))
    _assert_one_clear_error(e, says)
    assert not any(torch_home.iterdir())


def test_cut_download_keeps_no_half_file(torch_home, authors_file):
    """The server promises the whole file and closes halfway: nothing is cached, and a retry works."""
    with FileServer({LINK: (200, authors_file)}, cut=(LINK,)) as server:
        with pytest.raises(PretrainedUnavailableError) as e:
            _create(server.url(LINK + '?dl=1'))
    _assert_one_clear_error(e, f'the connection closed after {len(authors_file) // 2} of {len(authors_file)} bytes')
    assert not any(torch_home.iterdir())
    with FileServer({LINK: (200, authors_file)}) as server:
        _assert_authors_outputs(_create(server.url(LINK + '?dl=1')))


def test_error_page_is_not_cached(torch_home):
    """Expired share links answer 200 with an HTML page: it must not be cached as the checkpoint."""
    with FileServer({LINK: (200, b'<!DOCTYPE html><html>Link expired</html>')}) as server:
        with pytest.raises(PretrainedUnavailableError) as e:
            _create(server.url(LINK + '?dl=1'))
    _assert_one_clear_error(e, "the server sent something that is not a checkpoint (starting b'<!DOCTYPE html><')")
    assert not any(torch_home.iterdir())


def test_cache_is_keyed_by_the_link(torch_home, authors_file):
    """Another url (a pretrained_cfg_overlay, a mirror) is another download, never the file cached for the first."""
    other = write_authors_checkpoint('gfnet_ti', torch_home.parents[2] / 'other.pth')
    sd = torch.load(other, weights_only=False)
    sd['model']['head.bias'] = sd['model']['head.bias'] + 1  # the same variant, other weights
    torch.save(sd, other)
    with FileServer({LINK: (200, authors_file), '/f/other/': (200, other.read_bytes())}) as server:
        first = _create(server.url(LINK + '?dl=1'))
        second = _create(server.url('/f/other/?dl=1'))
        assert server.requests == [LINK + '?dl=1', '/f/other/?dl=1']
    _assert_authors_outputs(first)
    assert torch.equal(second.head.bias, first.head.bias + 1)
    assert len([p for p in torch_home.iterdir() if p.suffix == '.pth']) == 2


def test_bad_cached_file_is_named_with_how_to_clear_it(torch_home, authors_file):
    """A cached download that fails the checks (here: NaN weights) names the file and how to clear it; once it is
    deleted, the next call fetches it again."""
    url = 'http://127.0.0.1:9/f/bad/?dl=1'
    torch_home.mkdir(parents=True)
    bad = torch_home / _cached(url)
    sd = authors_state_dict('gfnet_ti')
    sd['blocks.2.mlp.fc1.weight'][0, 0] = float('nan')
    torch.save({'model': sd}, bad)
    with pytest.raises(CheckpointError) as e:
        _create(url)
    assert str(e.value) == ('Checkpoint weights are unusable. Non-finite values (NaN/inf) in: blocks.2.mlp.fc1.weight. '
                            f'It came from the download cached at {bad}: delete that file to fetch it again.')
    bad.unlink()
    with FileServer({'/f/bad/': (200, authors_file)}) as server:
        _assert_authors_outputs(_create(server.url('/f/bad/?dl=1')))


def _hub_cache(cache_dir: Path, repo_id: str) -> None:
    """Converted weights (our layout, safetensors) where the Hub cache keeps a downloaded repository. gfnet_ti's
    keys are the authors' own, so the recipe weights are written as they are (not through our converter)."""
    repo = cache_dir / f'models--{repo_id.replace("/", "--")}'
    commit = 'a' * 40
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    (repo / 'snapshots' / commit).mkdir(parents=True)
    save_file(authors_state_dict('gfnet_ti'), str(repo / 'snapshots' / commit / 'model.safetensors'))


@pytest.mark.parametrize('how', ['env', 'cfg'])
def test_hub_takes_precedence(tmp_path, torch_home, authors_file, monkeypatch, how):
    """Once converted weights are on the Hub (here: already in the Hub cache, offline), they are used and the
    authors' link is not touched: via TIMM_GFNET_HF_HUB_ORG or the cfg's hf_hub_id."""
    _hub_cache(tmp_path / 'hf', 'someorg/gfnet_ti.in1k')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    overlay = {}
    if how == 'env':
        monkeypatch.setenv(HUB_ORG_ENV, 'someorg')
    else:
        overlay['hf_hub_id'] = 'someorg/gfnet_ti.in1k'
    with FileServer({LINK: (200, authors_file)}) as server:
        model = timm.create_model('gfnet_ti', pretrained=True, cache_dir=tmp_path / 'hf',
                                  pretrained_cfg_overlay=dict(overlay, url=server.url(LINK + '?dl=1'))).eval()
        assert server.requests == []
    _assert_authors_outputs(model)


def test_hub_offline_falls_back_to_authors_link(torch_home, authors_file, monkeypatch, caplog):
    monkeypatch.setenv(HUB_ORG_ENV, 'someorg')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # the Hub is out of reach, the link not
    with FileServer({LINK: (200, authors_file)}) as server, caplog.at_level(logging.WARNING):
        model = _create(server.url(LINK + '?dl=1'))
        assert len(server.requests) == 1
    assert "someorg/gfnet_ti.in1k" in caplog.text and "Using the authors' release instead." in caplog.text
    _assert_authors_outputs(model)


def test_hub_404_falls_back_to_authors_link(tmp_path, authors_file):
    """Documented: a Hub repository that does not exist (yet) falls back to the authors' link with a warning. A
    Hub look-alike answers 404 (RepoNotFound) as the Hub does; the real client runs in a fresh interpreter (it reads
    HF_ENDPOINT when imported) and the model it builds gives the authors' reference outputs."""
    code = textwrap.dedent("""
        import json, sys, timm, torch
        from reference import expected, input_batch
        model = timm.create_model('gfnet_ti', pretrained=True,
                                  pretrained_cfg_overlay=dict(url=sys.argv[1])).eval()
        with torch.no_grad():
            diff = (model(input_batch()) - expected()['gfnet_ti.logits']).abs().max().item()
        print(json.dumps(diff))
    """)
    with HubServer({}) as hub, FileServer({LINK: (200, authors_file)}) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'TIMM_'))}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'),
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get('PYTHONPATH', '')]),
                   **{HUB_ORG_ENV: 'someorg'})
        proc = subprocess.run([sys.executable, '-c', code, server.url(LINK + '?dl=1')], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        asked = [path for _, path in hub.requests]
        assert len(server.requests) == 1
    assert '/someorg/gfnet_ti.in1k/resolve/main/model.safetensors' in asked, asked  # asked the Hub first
    warning = [line for line in proc.stderr.splitlines() if "Using the authors' release instead." in line]
    assert len(warning) == 1 and 'someorg/gfnet_ti.in1k' in warning[0] and '404' in warning[0], proc.stderr
    assert json.loads(proc.stdout) < 1e-4  # the authors' outputs (test_pretrained's tolerance)

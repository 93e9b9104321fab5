"""timm_gfnet.cards: one card per pretrained tag in model_cards/, equal to what the generator writes now, valid Hub
metadata, numbers that are the model's own, published results only for the authors' weights, and code snippets that
run (with random weights and a generated image)."""
import io
import re
import urllib.request
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image
from timm.models import get_pretrained_cfg

from reference import VARIANTS
from timm_gfnet.cards import check_cards, generate_card
from timm_gfnet.cli import main
from timm_gfnet.flops import profile_model
from timm_gfnet.global_filter import set_filter_backend
from timm_gfnet.published import PUBLISHED

CARDS = Path(__file__).resolve().parent.parent / 'model_cards'
NAMES = timm.list_pretrained('gfnet*')
SIZE = re.compile(r'torch\.Size\(\[[\d, ]+\]\)')


def _snippets(text: str) -> list:
    return re.findall(r'```python\n(.*?)```', text, flags=re.S)


def test_published_table_and_download_links_are_the_reference_data():
    for k, v in VARIANTS.items():
        name = f"{k.replace('-', '_')}.in1k"
        published = dict(v['published'])
        assert get_pretrained_cfg(name).url[0] == published.pop('url')
        assert PUBLISHED[name] == published
    assert len(PUBLISHED) == len(VARIANTS)


def test_one_card_per_pretrained_tag():
    assert len(NAMES) == 7 and set(NAMES) == set(PUBLISHED)
    assert sorted(p.name for p in CARDS.iterdir()) == sorted(f'{n}.md' for n in NAMES)


def test_committed_cards_are_what_the_generator_writes():
    """The drift check: regenerate every card and compare byte for byte (and report no stale files)."""
    assert check_cards(CARDS) == []


@pytest.mark.parametrize('name', NAMES)
def test_card_metadata(name):
    card = ModelCard.load(CARDS / f'{name}.md')  # huggingface_hub's own parser and model-index reader
    data = card.data
    assert (data.library_name, data.license, data.pipeline_tag) == ('timm', 'mit', 'image-classification')
    assert data.datasets == ['imagenet-1k'] and {'timm', 'gfnet', 'image-classification'} <= set(data.tags)
    assert data.model_name == name
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {'accuracy': PUBLISHED[name]['top1'], 'top_5_accuracy': PUBLISHED[name]['top5']}
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in data.eval_results} == {
        ('image-classification', 'imagenet-1k', 'validation')}
    text = card.text
    cfg = get_pretrained_cfg(name)
    assert f'# Model card for {name}' in text and '```bibtex\n@inproceedings{rao2021global,' in text
    assert cfg.origin_url in text and cfg.url[0] in text and PUBLISHED[name]['gdrive'] in text
    assert f"arxiv.org/abs/{cfg.paper_ids.split(':')[1]}" in text
    assert f"| {name} | {PUBLISHED[name]['top1']} | {PUBLISHED[name]['top5']} |" in text
    assert [s.split('\n')[-1] for s in re.findall(r'### .*?\n```python', text)] == ['```python'] * 3
    for code in _snippets(text):
        compile(code, name, 'exec')
        assert f"'{name}'" in code and 'pretrained=True' in code


@pytest.mark.parametrize('name', ['gfnet_ti.in1k', 'gfnet_h_ti.in1k'])
def test_card_numbers_are_measured_on_the_model(name):
    """Stats from a real CPU model (the generator measures on the meta device) and its feature_info."""
    model = set_filter_backend(timm.create_model(name), 'fft').eval()  # the cards state the FFT formulation
    cost = profile_model(model)
    features = timm.create_model(name, features_only=True)
    text = (CARDS / f'{name}.md').read_text()
    assert f"  - Params (M): {sum(p.numel() for p in model.parameters()) / 1e6:.2f}\n" in text
    assert f"  - GMACs: {cost['gmacs']:.2f}\n  - Activations (M): {cost['macts']:.2f}\n" in text
    assert f"  - Channels: {', '.join(map(str, features.feature_info.channels()))}\n" in text
    assert f"  - Strides: {', '.join(map(str, features.feature_info.reduction()))}\n" in text
    assert '  - Image size: 224 x 224\n' in text


@pytest.fixture
def offline_snippets(monkeypatch):
    """Snippets run as written, but with random weights instead of a download and a generated image."""
    create_model = timm.create_model

    def create_random(model_name, pretrained=False, **kwargs):
        assert pretrained, 'card snippets load pretrained weights'
        return create_model(model_name, pretrained=False, **kwargs)

    png = io.BytesIO()
    Image.fromarray(torch.randint(0, 256, (180, 240, 3), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8).numpy()).save(png, format='PNG')

    def urlopen(url, *args, **kwargs):
        assert url.startswith('https://huggingface.co/datasets/') and url.endswith('.png')
        return io.BytesIO(png.getvalue())

    monkeypatch.setattr(timm, 'create_model', create_random)
    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)


@pytest.mark.parametrize('name', ['gfnet_ti.in1k', 'gfnet_h_ti.in1k'])  # one isotropic, one hierarchical
def test_card_snippets_run(name, offline_snippets, capsys):
    classify, features, embed = _snippets((CARDS / f'{name}.md').read_text())
    exec(compile(classify, f'{name}: classification', 'exec'), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(re.fullmatch(r'.+: \d+\.\d%', line) for line in lines)
    for code in (features, embed):
        exec(compile(code, name, 'exec'), {})
        # every shape the card promises in a comment is the shape the snippet prints, in order
        printed = SIZE.findall(capsys.readouterr().out)
        promised = SIZE.findall(''.join(re.findall(r'#.*', code)))
        assert printed == promised and len(printed) >= 3


def test_card_for_a_hub_repo_and_other_weights():
    card = generate_card('gfnet_ti.in1k', repo_id='someone/gfnet_ti.in1k', authors_weights=True)
    assert all("'hf-hub:someone/gfnet_ti.in1k'" in code for code in _snippets(card.text))
    assert card.data.eval_results and str(card) != (CARDS / 'gfnet_ti.in1k.md').read_text()
    # weights not known to be the authors' (the default), or a head of other classes: no results claimed
    assert generate_card('gfnet_ti.in1k').data.eval_results is None
    other = generate_card('gfnet_ti.in1k', repo_id='someone/pets', model_args=dict(num_classes=3), authors_weights=True)
    assert other.data.eval_results is None and other.data.datasets is None and '## Results' not in other.text
    assert '3 classes' in other.text and 'ImageNetInfo' not in other.text and 'k=3)' in other.text
    for code in _snippets(other.text):
        compile(code, 'other', 'exec')


def test_cards_command_writes_and_checks(tmp_path, capsys):
    assert main(['cards', '--out', str(tmp_path), 'gfnet_ti.in1k']) == 0
    assert (tmp_path / 'gfnet_ti.in1k.md').read_text() == (CARDS / 'gfnet_ti.in1k.md').read_text()
    assert main(['cards', '--check', '--out', str(tmp_path), 'gfnet_ti.in1k']) == 0
    capsys.readouterr()

    card = tmp_path / 'gfnet_ti.in1k.md'
    card.write_text(card.read_text().replace('GMACs: 1.28', 'GMACs: 1.3'))  # a hand edit
    assert main(['cards', '--check', '--out', str(tmp_path), 'gfnet_ti.in1k', 'gfnet_xs.in1k']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('timm-gfnet cards: error: ')
    assert 'gfnet_ti.in1k.md (out of date), gfnet_xs.in1k.md (missing)' in err[0] and '--out' in err[0]


def test_check_reports_stale_and_missing_cards(tmp_path):
    """Checking the whole family also reports cards of tags that do not exist."""
    (tmp_path / 'gfnet_zz.in1k.md').write_text('stale')
    assert check_cards(tmp_path) == [f'{n}.md (missing)' for n in NAMES] + ['gfnet_zz.in1k.md (no such pretrained tag)']


def test_unknown_tag_is_refused(tmp_path, capsys):
    assert main(['cards', '--out', str(tmp_path / 'cards'), 'gfnet_ti.in22k']) == 1
    err = capsys.readouterr().err
    assert 'No pretrained tag gfnet_ti.in22k; cards exist for gfnet_b.in1k' in err
    assert not (tmp_path / 'cards').exists()

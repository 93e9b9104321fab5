"""`timm-gfnet models` prints what the README's table and the model cards say, row by row.

Nothing is hard-coded here: the README's table and the cards are parsed, so regenerating them (after a change of
the models or of the FLOP convention) keeps this test meaningful. The numbers must come from counting, not timing:
a table that varied between runs would fail here."""
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import timm

ROOT = Path(__file__).resolve().parents[1]


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

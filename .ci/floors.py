"""Print the lowest versions pyproject.toml declares as pip constraints (`name==floor`): what CI installs to test
the floors, the way a resolver choosing the lowest direct versions would.

`python .ci/floors.py` pins every floor: the runtime dependencies, the `onnx`, `plot`, `openvino` and `int8` extras,
and the clients of the test extra (transformers); the test tools themselves (pytest, ruff, ...) are left to the
resolver.
`python .ci/floors.py torch timm` pins only those (and torchvision for torch): the install a user gets whose timm and
torch are pinned low while pip takes the newest of everything else.
"""
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

# not ours: timm needs torchvision, whose release must match the torch floor
TORCHVISION_FOR_TORCH = {'2.6': '0.21.0'}
CLIENTS = ('transformers',)


def floors(pyproject: Path) -> dict:
    project = tomllib.loads(pyproject.read_text())['project']
    extras = project['optional-dependencies']
    texts = project['dependencies'] + extras['onnx'] + extras['plot'] + extras['openvino'] + extras['int8'] + [
        t for t in extras['test'] if Requirement(t).name in CLIENTS]
    out = {}
    for text in texts:
        req = Requirement(text)
        low = [s.version for s in req.specifier if s.operator == '>=']
        if low:
            out[req.name] = low[0]
    torch_minor = '.'.join(out['torch'].split('.')[:2])
    out['torchvision'] = TORCHVISION_FOR_TORCH[torch_minor]
    return out


if __name__ == '__main__':
    root = Path(__file__).resolve().parents[1]
    only = set(sys.argv[1:]) | ({'torchvision'} if 'torch' in sys.argv[1:] else set())
    for name, version in floors(root / 'pyproject.toml').items():
        if not only or name in only:
            print(f'{name}=={version}')

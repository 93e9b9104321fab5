"""The logits of every variant loaded from an authors'-format checkpoint, in this install: `write OUT` saves them,
`compare OUT` checks this install against them (CI runs one in the newest install, the other at the floors).

The checkpoints come from the reference weight recipe (tests/reference.py), in the authors' release format, and go
through timm's own `pretrained=True` path."""
import sys
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from reference import MODEL_NAMES, input_batch, write_authors_checkpoint  # noqa: E402

TOLERANCE = 2e-6  # each install is within 2e-6 of the authors' outputs (tests/test_gfnet.py)


def logits() -> dict:
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        for name in MODEL_NAMES:
            path = write_authors_checkpoint(name, Path(d) / f'{name}.pth')
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
            out[name] = model(input_batch())
    return out


if __name__ == '__main__':
    mode, path = sys.argv[1:3]
    here = logits()
    versions = f'timm {timm.__version__}, torch {torch.__version__}'
    if mode == 'write':
        save_file(here, path, metadata={'versions': versions})
        print(f'logits of {len(here)} variants ({versions}) written to {path}')
        sys.exit(0)
    there = load_file(path)
    diffs = {k: (here[k] - there[k]).abs().max().item() for k in here}
    worst = max(diffs, key=diffs.get)
    print(f'{versions} vs the other install: largest logit difference {diffs[worst]:.1e} ({worst})')
    sys.exit(0 if diffs[worst] <= TOLERANCE else 1)

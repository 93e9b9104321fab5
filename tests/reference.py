"""The authors' reference data (copied from their code's outputs) and the deterministic weight recipe.

`data/variants.json` and `data/expected.safetensors` come from running the authors' GFNet code; the recipe below
rebuilds the exact weights those outputs were computed with, so no large files are needed.
"""
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from safetensors.torch import load_file

DATA = Path(__file__).parent / 'data'
VARIANTS: Dict[str, dict] = json.loads((DATA / 'variants.json').read_text())
MODEL_NAMES: List[str] = [k.replace('-', '_') for k in VARIANTS]


def expected() -> Dict[str, torch.Tensor]:
    return load_file(str(DATA / 'expected.safetensors'))


def _uniform(k: int, n: int) -> np.ndarray:
    """splitmix64 finalizer of z = k * 2**32 + i + 1, mapped to float64 in [-1, 1)."""
    with np.errstate(over='ignore'):
        z = np.uint64(k) * np.uint64(2 ** 32) + np.arange(1, n + 1, dtype=np.uint64)
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / 2.0 ** 53 * 2 - 1


def _scaled(name: str, shape: Tuple[int, ...], u: np.ndarray) -> np.ndarray:
    parts = name.split('.')
    if name.endswith('complex_weight'):
        return 0.5 * u
    if name.endswith('.gamma'):
        return 0.5 + 0.25 * u
    if len(shape) == 1 and name.endswith('.weight') and len(parts) >= 2 and parts[-2].startswith('norm'):
        return 1 + 0.2 * u
    if name.endswith('.bias') or name == 'pos_embed':
        return 0.1 * u
    n = int(np.prod(shape))
    return u * math.sqrt(3 / (n / shape[0]))


def authors_state_dict(variant: str) -> Dict[str, torch.Tensor]:
    """The recipe weights in the authors' layout (key order of their state_dict)."""
    out = {}
    for k, (name, shape) in enumerate(VARIANTS[variant.replace('_', '-')]['state_dict']):
        n = int(np.prod(shape))
        out[name] = torch.from_numpy(_scaled(name, tuple(shape), _uniform(k, n)).reshape(shape).astype(np.float32))
    return out


def input_batch() -> torch.Tensor:
    return torch.from_numpy(_uniform(999999, 2 * 3 * 224 * 224).reshape(2, 3, 224, 224).astype(np.float32))


def write_authors_checkpoint(variant: str, path: Path, ddp: bool = False) -> Path:
    """A file in the released format: weights under "model", training state, an argparse.Namespace under "args"."""
    import argparse
    sd = authors_state_dict(variant)
    if ddp:
        sd = {f'module.{k}': v for k, v in sd.items()}
    torch.save({
        'model': sd,
        'model_ema': {k: torch.zeros_like(v) for k, v in sd.items()},  # must NOT be what gets loaded
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3}]},
        'epoch': 299,
        'args': argparse.Namespace(model=variant.replace('_', '-'), lr=1e-3, drop_path=0.1),
    }, path)
    return path


def write_fine_tuned_checkpoint(
        variant: str, path: Path, num_classes: int = 10) -> Tuple[Path, Dict[str, torch.Tensor]]:
    """An authors'-format file whose classifier has `num_classes` classes (what their transfer-learning script
    writes); returns the path and the head's tensors, which every loader must keep exactly."""
    import argparse
    sd = authors_state_dict(variant)
    g = torch.Generator().manual_seed(num_classes)
    head = {'head.weight': torch.randn(num_classes, sd['head.weight'].shape[1], generator=g),
            'head.bias': torch.randn(num_classes, generator=g)}
    torch.save({'model': {**sd, **head}, 'epoch': 9, 'args': argparse.Namespace(nb_classes=num_classes)}, path)
    return path, head

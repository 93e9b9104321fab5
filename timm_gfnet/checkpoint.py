"""Reading checkpoint files safely: safetensors, or `torch.load(weights_only=True)` with only harmless extra types.

The authors' released files are full training checkpoints: weights under "model", optimizer state, and an
`argparse.Namespace` under "args". Nothing in them may run code on load, so the only type allowed beyond
what `weights_only` accepts is `argparse.Namespace` (a plain attribute bag).
"""
import argparse
import pickle
from pathlib import Path
from typing import Any, Dict, Union

import torch

__all__ = ['read_checkpoint', 'unwrap_state_dict', 'CheckpointError']

# "model" first: the authors evaluate and publish those weights, not the EMA ones
_WEIGHT_KEYS = ('model', 'state_dict', 'model_ema', 'state_dict_ema')


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint."""


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: the authors' "model" entry (or timm's "state_dict"), `module.` prefixes removed."""
    if isinstance(checkpoint, dict):
        for key in _WEIGHT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'Expected a state_dict (a dict of tensors), got {type(checkpoint).__name__}.')
    tensors = {k.removeprefix('module.'): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f'No tensors found: this is not a model checkpoint (top-level keys: {", ".join(map(str, checkpoint))}).')
    return tensors


def _is_safetensors(path: Path) -> bool:
    if path.suffix == '.safetensors':
        return True
    with path.open('rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{'  # 8-byte header length, then the JSON header


def read_checkpoint(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read the weights of a `.safetensors` or PyTorch checkpoint file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'No checkpoint file at {path}.')
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return unwrap_state_dict(load_file(str(path)))
        except SafetensorError as e:
            raise CheckpointError(f'{path} is not a valid safetensors file ({e}).') from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _reason(e)
        if 'GLOBAL' in reason:  # a reference to a function or class: what a pickle runs code with
            raise CheckpointError(
                f'{path} was not loaded: it holds objects other than tensors and plain training state, and '
                f'unpickling them could run code ({reason}). Re-save its weights with torch.save(model.state_dict()) '
                f'or as safetensors.') from None
        raise CheckpointError(f'{path} is not a PyTorch checkpoint ({reason}).') from None
    except Exception as e:  # torch.load fails in many ways on truncated or foreign files
        raise CheckpointError(
            f'{path} is not a readable PyTorch checkpoint: truncated, or another kind of file '
            f'({_reason(e)}).') from None
    return unwrap_state_dict(checkpoint)


def _reason(e: Exception) -> str:
    """The informative part of torch.load's messages (which advise weights_only=False: not for untrusted files)."""
    skip = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(skip)]
    reason = lines[0].split('. ')[0].rstrip('.') if lines else ''
    return reason if any(c.isalpha() for c in reason) else type(e).__name__

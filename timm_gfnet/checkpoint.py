"""Reading checkpoint files safely: safetensors, or `torch.load(weights_only=True)` with only harmless extra types.

The authors' released files are full training checkpoints: weights under "model", optimizer state, and an
`argparse.Namespace` under "args". Nothing in them may run code on load, so the only type allowed beyond
what `weights_only` accepts is `argparse.Namespace` (a plain attribute bag).
"""
import argparse
import pickle
import zipfile
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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else 'disallowed content'
        raise CheckpointError(
            f'{path} holds objects other than tensors and plain training state, and is not unpickled for safety '
            f'({reason}). Re-save its weights with torch.save(model.state_dict()) or as safetensors.') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError) as e:
        raise CheckpointError(
            f'{path} is not a readable PyTorch checkpoint (truncated, or another kind of file): '
            f'{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}.') from None
    return unwrap_state_dict(checkpoint)

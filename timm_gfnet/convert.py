"""Convert a GFNet checkpoint (the authors' release format or ours) into timm's Hub layout, and check the result."""
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm
import torch

from .checkpoint import load_model
from .hub import save_for_hub

__all__ = ['convert_checkpoint']


def convert_checkpoint(
        checkpoint: Union[str, Path],
        out_dir: Union[str, Path],
        model_name: Optional[str] = None,
        atol: float = 1e-5,
) -> Dict[str, Any]:
    """Write `model.safetensors` and timm's `config.json` to `out_dir`, then load them back with
    `timm.create_model('local-dir:...')` and check they reproduce the source model's outputs.

    Without `model_name` the variant is recognised from the tensor shapes. The checkpoint's classifier is kept
    (a fine-tuned head stays as it is).
    """
    source = load_model(checkpoint, model_name=model_name).eval()
    out_dir = Path(out_dir)
    save_for_hub(source, out_dir)
    converted = timm.create_model(f'local-dir:{out_dir}', pretrained=True).eval()

    x = torch.randn(2, *source.pretrained_cfg['input_size'], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = source(x), converted(x)
    if got.shape != expected.shape:
        raise RuntimeError(f'The converted model gives outputs of shape {tuple(got.shape)}, the source '
                           f'{tuple(expected.shape)}.')
    max_diff = (expected - got).abs().max().item()
    if not max_diff <= atol:
        raise RuntimeError(f'The converted model differs from the source by {max_diff:.3g} (tolerance {atol}).')
    return {
        'model': source.pretrained_cfg['architecture'],
        'num_classes': converted.num_classes,
        'params': sum(p.numel() for p in converted.parameters()),
        'files': sorted(str(p) for p in out_dir.iterdir() if p.is_file()),
        'max_abs_diff': max_diff,
    }

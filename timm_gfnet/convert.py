"""Convert a GFNet checkpoint (the authors' release format or ours) into timm's Hub layout, and check the result."""
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm
import torch
from timm.models import save_for_hf

from .checkpoint import read_checkpoint
from .gfnet import checkpoint_arch, describe_arch, infer_variant

__all__ = ['convert_checkpoint']


def convert_checkpoint(
        checkpoint: Union[str, Path],
        out_dir: Union[str, Path],
        model_name: Optional[str] = None,
        atol: float = 1e-5,
) -> Dict[str, Any]:
    """Write `model.safetensors` and timm's `config.json` to `out_dir`, then load them back with
    `timm.create_model('local-dir:...')` and check they reproduce the source model's outputs.

    Without `model_name` the variant is recognised from the tensor shapes.
    """
    detected = infer_variant(read_checkpoint(checkpoint))
    if model_name is None:
        if detected is None:
            arch = describe_arch(checkpoint_arch(read_checkpoint(checkpoint)))
            raise ValueError(f'{checkpoint} matches no GFNet variant ({arch}); pass --model NAME to say which it is.')
        model_name = detected
    if model_name not in timm.list_models('gfnet*'):
        raise ValueError(f'{model_name!r} is not a GFNet model; choose one of {", ".join(timm.list_models("gfnet*"))}.')
    source = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))).eval()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_for_hf(source, str(out_dir), safe_serialization=True)
    converted = timm.create_model(f'local-dir:{out_dir}', pretrained=True).eval()

    x = torch.randn(2, *source.pretrained_cfg['input_size'], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        max_diff = (source(x) - converted(x)).abs().max().item()
    if not max_diff <= atol:
        raise RuntimeError(f'The converted model differs from the source by {max_diff:.3g} (tolerance {atol}).')
    return {
        'model': model_name,
        'detected': detected,
        'params': sum(p.numel() for p in converted.parameters()),
        'files': sorted(str(p) for p in out_dir.iterdir() if p.is_file()),
        'max_abs_diff': max_diff,
    }

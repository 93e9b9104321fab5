"""Convert a GFNet checkpoint (the authors' release format or ours) into timm's Hub layout, and check the result."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import timm
import torch

from .atomic import staged_folder
from .checkpoint import load_model
from .hub import save_for_hub

__all__ = ['convert_checkpoint']


def convert_checkpoint(
        checkpoint: Union[str, Path],
        out_dir: Union[str, Path],
        model_name: Optional[str] = None,
        atol: float = 1e-5,
) -> Dict[str, Any]:
    """Write `model.safetensors` and timm's `config.json` to `out_dir`, checked first: loaded back with
    `timm.create_model('local-dir:...')` they must reproduce the source model's outputs.

    Without `model_name` the variant is recognised from the tensor shapes. The checkpoint is kept as it is: its
    classifier, image size and input channels. The files are written beside `out_dir` and moved in only once
    checked: a failed or interrupted conversion leaves an earlier one in `out_dir` intact, and other files there are
    never touched.
    """
    source = load_model(checkpoint, model_name=model_name).eval()
    written: List[Path] = []
    with staged_folder(out_dir, written) as stage:
        save_for_hub(source, stage)
        converted = timm.create_model(f'local-dir:{stage}', pretrained=True).eval()
        x = torch.randn(2, source.in_chans, *source.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, got = source(x), converted(x)
        if got.shape != expected.shape:
            raise RuntimeError(f'The converted model gives outputs of shape {tuple(got.shape)}, the source '
                               f'{tuple(expected.shape)}: nothing was written.')
        max_diff = (expected - got).abs().max().item()
        if not max_diff <= atol:
            raise RuntimeError(f'The converted model differs from the source by {max_diff:.3g} (tolerance {atol}): '
                               f'nothing was written.')
    return {
        'model': source.pretrained_cfg['architecture'],
        'num_classes': converted.num_classes,
        'img_size': tuple(converted.patch_embed.img_size),
        'in_chans': converted.in_chans,
        'params': sum(p.numel() for p in converted.parameters()),
        'files': [str(p) for p in written],
        'max_abs_diff': max_diff,
    }

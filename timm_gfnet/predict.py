"""Classify images with a GFNet using the authors' eval transform and timm's ImageNet class names."""
from pathlib import Path
from typing import List, Optional, Tuple, Union

import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_model_data_config

__all__ = ['load_model', 'predict']


def load_model(model_name: Optional[str] = None, checkpoint: Optional[Union[str, Path]] = None) -> torch.nn.Module:
    """A converted directory (config.json + model.safetensors), a checkpoint file, or pretrained weights by name."""
    if checkpoint is not None and Path(checkpoint).is_dir():
        return timm.create_model(f'local-dir:{checkpoint}', pretrained=True).eval()
    if checkpoint is not None:
        if model_name is None:
            from .checkpoint import read_checkpoint
            from .gfnet import infer_variant
            model_name = infer_variant(read_checkpoint(checkpoint))
            if model_name is None:
                raise ValueError(f'{checkpoint} matches no GFNet variant; pass --model NAME.')
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint))).eval()
    return timm.create_model(model_name or 'gfnet_s', pretrained=True).eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: List[Union[str, Path]], topk: int = 5) -> List[List[Tuple[str, float]]]:
    """Top-k (class description, probability) for each image."""
    transform = create_transform(**resolve_model_data_config(model))
    info = ImageNetInfo()
    batch = torch.stack([transform(Image.open(p).convert('RGB')) for p in images])
    probs = model(batch).softmax(dim=-1)
    top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    name = info.index_to_description if probs.shape[-1] == info.num_classes() else (lambda i: f'class {i}')
    return [[(name(int(i)), float(p)) for p, i in zip(ps, idx)]
            for ps, idx in zip(top.values, top.indices)]

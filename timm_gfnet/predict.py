"""Classify images with a GFNet using the authors' eval transform and timm's ImageNet class names."""
from pathlib import Path
from typing import List, Tuple, Union

import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_model_data_config

__all__ = ['predict']


@torch.no_grad()
def predict(model: torch.nn.Module, images: List[Union[str, Path]], topk: int = 5) -> List[List[Tuple[str, float]]]:
    """Top-k (class description, probability) for each image; 'class i' for heads that are not ImageNet-1k's."""
    transform = create_transform(**resolve_model_data_config(model))
    info = ImageNetInfo()
    batch = torch.stack([transform(Image.open(p).convert('RGB')) for p in images])
    probs = model(batch).softmax(dim=-1)
    top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    name = info.index_to_description if probs.shape[-1] == info.num_classes() else (lambda i: f'class {i}')
    return [[(name(int(i)), float(p)) for p, i in zip(ps, idx)]
            for ps, idx in zip(top.values, top.indices)]

"""Classify images with a GFNet using the authors' eval transform and timm's ImageNet class names."""
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_model_data_config

__all__ = ['predict', 'read_image']

# Pillow's modes for more than 8 bits per pixel: 16-bit integers, 32-bit integers (what it makes of 16-bit PNGs in
# some releases), 32-bit floats. convert('RGB') would clip them to 255 (a white image) instead of scaling them.
_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


def read_image(path: Union[str, Path]) -> Image.Image:
    """The image at `path` as 8-bit RGB, what the eval transform takes: 8-bit images as Pillow converts them;
    16-bit ones scaled from 0-65535, float ones from 0-1 (other float ranges are refused). Every error names the
    file."""
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here, not later inside the transform
            if img.mode in _SIXTEEN_BIT or img.mode == 'F':
                img = _to_8_bit(img, path)
            return img.convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f'{path}: cannot read the image ({e}).') from None


def _to_8_bit(img: Image.Image, path: Union[str, Path]) -> Image.Image:
    a = np.asarray(img, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0., 0.)
    if img.mode == 'F':
        if not (np.isfinite(a).all() and lo >= 0 and hi <= 1):
            raise ValueError(f'{path}: float pixels from {lo:g} to {hi:g}, and float images are read as 0 to 1: '
                             f'scale it to 0-1, or save it with 8 or 16 bits per channel.')
        scale = 255.
    else:
        if lo < 0 or hi > 65535:
            raise ValueError(f'{path}: 32-bit integer pixels from {lo:g} to {hi:g}, beyond 16 bits: save it with '
                             f'8 or 16 bits per channel.')
        scale = 255. / 65535.
    return Image.fromarray(np.round(a * scale).astype(np.uint8), 'L')


@torch.no_grad()
def predict(model: torch.nn.Module, images: List[Union[str, Path]], topk: int = 5) -> List[List[Tuple[str, float]]]:
    """Top-k (class description, probability) for each image; 'class i' for heads that are not ImageNet-1k's."""
    transform = create_transform(**resolve_model_data_config(model))
    info = ImageNetInfo()
    batch = torch.stack([transform(read_image(p)) for p in images])
    probs = model(batch).softmax(dim=-1)
    top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    name = info.index_to_description if probs.shape[-1] == info.num_classes() else (lambda i: f'class {i}')
    return [[(name(int(i)), float(p)) for p, i in zip(ps, idx)]
            for ps, idx in zip(top.values, top.indices)]

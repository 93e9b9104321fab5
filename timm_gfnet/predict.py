"""Classify images with a GFNet: the model's own eval transform, input channels and class labels."""
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import (
    CustomDatasetInfo,
    ImageNetInfo,
    create_transform,
    infer_imagenet_subset,
    resolve_model_data_config,
)

__all__ = ['predict', 'read_image']

# Pillow's modes for more than 8 bits per pixel: 16-bit integers, 32-bit integers (what it makes of 16-bit PNGs in
# some releases), 32-bit floats. convert('RGB') would clip them to 255 (a white image) instead of scaling them.
_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}  # the image modes for a model's in_chans


def read_image(path: Union[str, Path], mode: str = 'RGB') -> Image.Image:
    """The image at `path` the right way up (its EXIF orientation applied, as transformers' `load_image` does), as
    8-bit `mode`: 8-bit images as Pillow converts them; 16-bit ones scaled from 0-65535, float ones from 0-1 (other
    float ranges are refused). Every error names the file."""
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here, not later inside the transform
            img = ImageOps.exif_transpose(img)
            if img.mode in _SIXTEEN_BIT or img.mode == 'F':
                img = _to_8_bit(img, path)
            return img.convert(mode)
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


def _class_labels(model: torch.nn.Module) -> Callable[[int], str]:
    """Class index -> label, as timm's inference script picks them: the labels the model carries (`label_names` /
    `label_descriptions` of its pretrained_cfg, as `save_for_hf` writes them), else ImageNet's for an ImageNet-sized
    head with none, else 'class i'."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('label_names'):  # its own labels, when they fit its head; never ImageNet's in their place
        if len(cfg['label_names']) != model.num_classes:
            return lambda i: f'class {i}'
        return CustomDatasetInfo(cfg['label_names'], cfg.get('label_descriptions')).index_to_description
    subset = infer_imagenet_subset(model)
    return ImageNetInfo(subset).index_to_description if subset else (lambda i: f'class {i}')


@torch.no_grad()
def predict(
        model: torch.nn.Module,
        images: Sequence[Union[str, Path]],
        topk: int = 5,
        batch_size: int = 16,
) -> Iterator[List[Tuple[str, float]]]:
    """Top-k (label, probability) for each image, in order, `batch_size` images per forward pass: each batch's
    results come as soon as it is done, and memory holds one batch. Images are read to the model's `in_chans`
    (1: grayscale, 3: RGB, 4: RGBA)."""
    if model.in_chans not in _MODES:
        raise ValueError(f'The model takes {model.in_chans}-channel input; images are read as 1 (L), 3 (RGB) or 4 '
                         f'(RGBA) channels: pass it tensors of shape (N, {model.in_chans}, H, W) yourself.')
    transform = create_transform(**resolve_model_data_config(model))
    mode, label = _MODES[model.in_chans], _class_labels(model)
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(read_image(p, mode)) for p in images[start:start + batch_size]])
        top = model(batch).softmax(dim=-1).topk(min(topk, model.num_classes), dim=-1)
        for probs, indices in zip(top.values.tolist(), top.indices.tolist()):
            yield [(label(i), p) for p, i in zip(probs, indices)]

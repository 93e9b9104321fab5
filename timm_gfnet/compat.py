"""Shims for the oldest timm and torch releases this package supports (see README, "Supported versions").

Each shim detects the feature (never a version string) and names the release that makes it unnecessary; delete a
shim when the floor in pyproject.toml reaches that release. Nothing here runs at import time beyond detection.
"""
import functools
import inspect
from typing import Any, Dict, Optional, Sequence, Tuple, Type, Union

import torch.nn as nn

__all__ = ['timm_layer', 'record_input_size']


@functools.lru_cache(maxsize=None)
def _takes_factory_kwargs(cls: type) -> bool:
    return 'device' in inspect.signature(cls.__init__).parameters


def timm_layer(cls: Type[nn.Module], *args: Any, device=None, dtype=None, **kwargs: Any) -> nn.Module:
    """`cls(*args, device=, dtype=, **kwargs)` for a timm layer. Unnecessary from timm 1.0.21, whose layers take
    device and dtype; older ones are built on the default device, then moved."""
    if _takes_factory_kwargs(cls):
        return cls(*args, device=device, dtype=dtype, **kwargs)
    module = cls(*args, **kwargs)
    return module if device is None and dtype is None else module.to(device=device, dtype=dtype)


def record_input_size(model: nn.Module, img_size: Union[int, Sequence[int]]) -> None:
    """Tell timm the model's input size, as ViT's `set_input_size` does.

    timm >= 1.0.31 keeps it in the model's traits (`timm.models._input.update_model_input_size`, the helper ViT
    calls), from which its data config and `save_for_hf` read it. Older timm reads `pretrained_cfg['input_size']`,
    so that is where it goes there.
    """
    size: Tuple[int, int] = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    try:
        from timm.models._input import update_model_input_size
    except ImportError:
        cfg: Optional[Dict[str, Any]] = getattr(model, 'pretrained_cfg', None)
        if cfg is not None:
            model.pretrained_cfg = dict(cfg, input_size=(model.in_chans, *size))
        return
    update_model_input_size(model, size)

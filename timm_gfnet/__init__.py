"""GFNet (Global Filter Networks) as a timm model family.

Installing the package is enough for `timm.create_model('gfnet_s')`: an entry point loads `timm_gfnet.gfnet`
as soon as `timm` is imported. Importing this package explicitly works too and is idempotent.
"""
from .checkpoint import infer_variant, load_model, read_checkpoint
from .filter_backends import set_default_filter_backend
from .gfnet import GFNet, GFNetPyramid, checkpoint_filter_fn
from .global_filter import (
    GlobalFilter,
    GlobalFilter1d,
    GlobalFilter3d,
    clear_filter_caches,
    resample_filter,
    set_filter_backend,
)

__version__ = '0.1.0'
__all__ = [
    'GFNet', 'GFNetPyramid', 'GlobalFilter', 'GlobalFilter1d', 'GlobalFilter3d', 'checkpoint_filter_fn',
    'clear_filter_caches', 'infer_variant', 'load_model', 'read_checkpoint', 'resample_filter', 'set_filter_backend',
    'set_default_filter_backend',
]

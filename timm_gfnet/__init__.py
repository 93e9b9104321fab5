"""GFNet (Global Filter Networks) as a timm model family.

Installing the package is enough for `timm.create_model('gfnet_s')`: an entry point loads `timm_gfnet.gfnet`
as soon as `timm` is imported. Importing this package explicitly works too and is idempotent.
"""
from .gfnet import GFNet, GFNetPyramid, checkpoint_filter_fn, infer_variant
from .global_filter import GlobalFilter, resample_filter

__version__ = '0.1.0'
__all__ = ['GFNet', 'GFNetPyramid', 'GlobalFilter', 'checkpoint_filter_fn', 'infer_variant', 'resample_filter']

""" Global Filter Networks (GFNet)

Papers:
* `Global Filter Networks for Image Classification` - https://arxiv.org/abs/2107.00645 (NeurIPS 2021)
* `GFNet: Global Filter Networks for Visual Recognition` - https://arxiv.org/abs/2304.06446 (T-PAMI)

@inproceedings{rao2021global,
  title={Global Filter Networks for Image Classification},
  author={Rao, Yongming and Zhao, Wenliang and Zhu, Zheng and Lu, Jiwen and Zhou, Jie},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2021}
}

Isotropic (`gfnet_ti/xs/s/b`) and hierarchical (`gfnet_h_ti/h_s/h_b`) models, computing exactly what the
authors' models (https://github.com/raoyongming/GFNet, MIT licence) compute. Activations stay channels-last
(B, H, W, C) from the patch embedding to the head, so blocks need no reshapes and the filter takes the
grid as it is.
"""
import logging
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    calculate_drop_path_rates,
    register_notrace_function,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
)
from timm.models import (
    build_model_with_cfg,
    checkpoint,
    checkpoint_seq,
    generate_default_cfgs,
    named_apply,
    register_model,
)
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import init_weights_vit_timm

from . import flops  # noqa: F401  (FlopCounterMode counts the FFTs once the model family is loaded)
from .checkpoint import _authors_to_timm_key, check_weights, checkpoint_grid, load_pretrained, unwrap_state_dict
from .global_filter import GlobalFilter, resample_filter

_logger = logging.getLogger(__name__)

__all__ = ['GFNet', 'GFNetPyramid', 'checkpoint_filter_fn']


class Block(nn.Module):
    """norm1 -> global filter -> norm2 -> mlp, with ONE residual around the whole branch (the authors' block)."""

    def __init__(
            self,
            dim: int,
            grid_size: Tuple[int, int],
            mlp_ratio: float = 4.,
            init_values: Optional[float] = None,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            dynamic_size: bool = False,
            filter_backend: str = 'auto',
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Callable = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.filter = GlobalFilter(dim, grid_size, dynamic_size=dynamic_size, filter_backend=filter_backend, **dd)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        # layer scale of the hierarchical models, named `gamma` as in their checkpoints
        self.gamma = nn.Parameter(init_values * torch.ones(dim, **dd)) if init_values is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm2(self.filter(self.norm1(x))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y)


class Downsample(nn.Module):
    """2x2 stride-2 conv between hierarchical stages, on channels-last grids."""

    def __init__(self, dim: int, dim_out: int, pad: bool = False, device=None, dtype=None):
        super().__init__()
        self.pad = pad
        self.proj = nn.Conv2d(dim, dim_out, kernel_size=2, stride=2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        if self.pad:  # odd grids (dynamic padding) keep their last row/column
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.proj(x).permute(0, 2, 3, 1).contiguous()  # the stage's residual stream, channels-last


class GFNetStage(nn.Module):
    def __init__(
            self,
            dim: int,
            dim_out: int,
            depth: int,
            grid_size: Tuple[int, int],
            drop_path: List[float],
            downsample: bool = True,
            dynamic_img_pad: bool = False,
            **block_kwargs,
    ):
        super().__init__()
        dd = {'device': block_kwargs.get('device'), 'dtype': block_kwargs.get('dtype')}
        self.grad_checkpointing = False
        self.downsample = Downsample(dim, dim_out, pad=dynamic_img_pad, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            Block(dim_out, grid_size, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x


# Python control flow on shapes: a leaf for FX feature extraction (FX only wraps names without a leading "_")
@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int, min_size: int) -> torch.Tensor:
    """The errors torch would raise from deep inside, early and naming the fix. Sizes that do not fit the patch
    grid are PatchEmbed's own check (strict_img_size / dynamic_img_pad)."""
    if x.dim() != 4:
        raise ValueError(
            f'GFNet takes a (B, C, H, W) batch of images, got shape {list(x.shape)}: use x.unsqueeze(0) for one image.')
    if x.shape[1] != in_chans:
        fix = 'it looks channels-last: use x.permute(0, 3, 1, 2)' if x.shape[-1] == in_chans \
            else f'for {x.shape[1]}-channel images create the model with in_chans={x.shape[1]}'
        raise ValueError(f'GFNet was created with in_chans={in_chans} and got shape {list(x.shape)}: {fix}.')
    if not x.is_floating_point():
        raise ValueError('GFNet takes floating-point images: convert with x.float() and normalise (the transforms of '
                         'timm.data.create_transform do both).')
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f'GFNet takes images of at least {min_size}x{min_size} (its largest stride), got '
                         f'{x.shape[-2]}x{x.shape[-1]}: resize the input, or create the model with '
                         f'dynamic_img_pad=True.')
    return x


def _check_args(global_pool: str, output_stride: Optional[int], stride: int) -> None:
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool takes 'avg' (mean over the token grid) or '' (none), got {global_pool!r}.")
    if output_stride not in (None, stride):
        raise ValueError(f'output_stride={output_stride} is not supported: this GFNet has a fixed output stride of '
                         f'{stride} (no dilation); pass output_stride={stride} or leave it out.')


def _grid(img_size: Tuple[int, int], stride: int, pad: bool) -> Tuple[int, int]:
    """The token grid of a stage at `stride`, as PatchEmbed's dynamic_feat_size at the patch stride: partial tokens
    count when padded (dynamic_img_pad: each 2x2 stride-2 conv rounds up), else are dropped (rounds down)."""
    return tuple(-(-s // stride) if pad else s // stride for s in img_size)


class _GFNetCommon(nn.Module):
    """The methods both models share word for word: position embedding, classifier, resizing and timm's API around
    them. No construction here: each model builds itself in its own __init__."""
    output_fmt: str = 'NHWC'

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=.02)
        named_apply(init_weights_vit_timm, self)

    load_pretrained = load_pretrained  # timm's custom_load: the authors' training checkpoints, read safely

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed'}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f'num_classes takes a whole number >= 0 (0: no classifier), got {num_classes!r}.')
        if global_pool is not None:
            _check_args(global_pool, None, 0)  # before anything changes
            self.global_pool = global_pool
        self.num_classes = num_classes
        dd = {'device': self.pos_embed.device, 'dtype': self.pos_embed.dtype}
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Change the input resolution: pos_embed and every filter are resampled (bicubic) to their new token grids,
        as `create_model(..., img_size=...)` does from a checkpoint. All or nothing."""
        if img_size is None:
            return
        size = to_2tuple(img_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f'img_size takes one or two positive integers (H, W), got {img_size!r}.')
        pad = self.patch_embed.dynamic_img_pad
        grid = self.patch_embed.dynamic_feat_size(size)
        # each filter at its stage's stride (feature_info names the module each stride starts with)
        filters = [(m, _grid(size, info['reduction'], pad)) for name, m in self.named_modules()
                   if isinstance(m, GlobalFilter)
                   for info in self.feature_info if name.startswith(info['module'] + '.')]
        if min(min(g) for _, g in filters + [(None, grid)]) < 1:
            stride = self.feature_info[-1]['reduction']
            raise ValueError(f'set_input_size({size[0]}, {size[1]}): too small for {type(self).__name__}; take at '
                             f'least {stride}x{stride} (its largest stride).')
        with torch.no_grad():  # every new tensor first, then the swap: nothing half-changed if one of them fails
            pos_embed = resample_abs_pos_embed(self.pos_embed, grid, self.grid_size, num_prefix_tokens=0,
                                               antialias=False)
            weights = [resample_filter(f.complex_weight, g, mode='bicubic') for f, g in filters]
        self.patch_embed.set_input_size(img_size=size)
        self.grid_size = grid
        self.pos_embed = nn.Parameter(pos_embed, requires_grad=self.pos_embed.requires_grad)
        for (filt, g), weight in zip(filters, weights):
            filt.complex_weight = nn.Parameter(weight, requires_grad=filt.complex_weight.requires_grad)
            filt.grid_size = g
        if hasattr(self, 'pretrained_cfg'):  # what timm's data config and save_for_hf read (timm < 1.0.31)
            self.pretrained_cfg = dict(self.pretrained_cfg, input_size=(self.in_chans, *size))
        try:  # timm >= 1.0.31 keeps the input size in the model's traits, as ViT's set_input_size does
            from timm.models._input import update_model_input_size
            update_model_input_size(self, size)
        except ImportError:
            pass

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            pos_embed = resample_abs_pos_embed(pos_embed, (H, W), self.grid_size, num_prefix_tokens=0, antialias=False)
        # contiguous channels-last: the stem conv gives a permuted view, and a residual stream stored channels-first
        # makes every add and LayerNorm of every block copy (about a tenth of the bf16 time)
        return self.pos_drop((x + pos_embed.reshape(1, H, W, C)).contiguous())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


class GFNet(_GFNetCommon):
    """Isotropic GFNet: patch embedding + learned position embedding, a stack of global filter blocks.
    Features are channels-last (NHWC)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 384,
            depth: int = 12,
            mlp_ratio: float = 4.,
            init_values: Optional[float] = None,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            filter_backend: str = 'auto',
            output_stride: Optional[int] = None,
            norm_layer: Optional[Callable] = None,
            act_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        _check_args(global_pool, output_stride, patch_size)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.min_img_size = 1  # sizes that do not fit the patches are PatchEmbed's own error
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, output_fmt='NHWC', strict_img_size=not dynamic_img_size,
            dynamic_img_pad=dynamic_img_pad, **dd)
        # with dynamic_img_pad a partial patch is a token too
        self.grid_size = self.patch_embed.dynamic_feat_size(self.patch_embed.img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, **dd))
        self.pos_drop = nn.Dropout(p=pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[Block(
            embed_dim, self.grid_size, mlp_ratio=mlp_ratio, init_values=init_values, proj_drop=proj_drop_rate,
            drop_path=dpr[i], dynamic_size=dynamic_img_size, filter_backend=filter_backend,
            act_layer=act_layer or nn.GELU, norm_layer=norm_layer, **dd) for i in range(depth)])
        r = self.patch_embed.feat_ratio()
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=r) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates.

        Args:
            x: Input image tensor.
            indices: Take last n blocks if int, all if None, select matching indices if sequence.
            norm: Apply the final norm to every intermediate.
            stop_early: Stop iterating over blocks when the last desired intermediate is reached.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._pos_embed(self.patch_embed(check_input(x, self.in_chans, self.min_img_size)))
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune layers not required for specified intermediates."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(check_input(x, self.in_chans, self.min_img_size)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class GFNetPyramid(_GFNetCommon):
    """Hierarchical GFNet: a 4x4 patch stem, then four stages of global filter blocks with layer scale,
    joined by 2x2 stride-2 convs (strides 4, 8, 16, 32). Features are channels-last (NHWC)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: Tuple[int, ...] = (64, 128, 256, 512),
            depth: Tuple[int, ...] = (3, 3, 10, 3),
            mlp_ratio: float = 4.,
            init_values: Optional[float] = 1e-3,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            filter_backend: str = 'auto',
            output_stride: Optional[int] = None,
            norm_layer: Optional[Callable] = None,
            act_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depth)
        assert len(embed_dim) == num_stages, 'embed_dim and depth need one entry per stage'
        _check_args(global_pool, output_stride, patch_size * 2 ** (num_stages - 1))
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.dynamic_img_size = dynamic_img_size
        self.min_img_size = 1 if dynamic_img_pad else patch_size * 2 ** (num_stages - 1)

        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim[0], output_fmt='NHWC', strict_img_size=not dynamic_img_size,
            dynamic_img_pad=dynamic_img_pad, **dd)
        self.grid_size = self.patch_embed.dynamic_feat_size(self.patch_embed.img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim[0], **dd))
        self.pos_drop = nn.Dropout(p=pos_drop_rate)
        # stochastic depth rises linearly over all blocks of all stages, as the authors do
        dpr = calculate_drop_path_rates(drop_path_rate, list(depth), stagewise=True)
        self.feature_info = []
        stages = []
        for i in range(num_stages):
            stride = patch_size * 2 ** i
            grid = _grid(self.patch_embed.img_size, stride, dynamic_img_pad)
            stages.append(GFNetStage(
                embed_dim[max(i - 1, 0)], embed_dim[i], depth[i], grid, downsample=i > 0,
                dynamic_img_pad=dynamic_img_pad, drop_path=dpr[i], mlp_ratio=mlp_ratio, init_values=init_values,
                proj_drop=proj_drop_rate, dynamic_size=dynamic_img_size, filter_backend=filter_backend,
                act_layer=act_layer or nn.GELU, norm_layer=norm_layer, **dd))
            self.feature_info.append(dict(module=f'stages.{i}', num_chs=embed_dim[i], reduction=stride))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(embed_dim[-1], **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        blocks = [(r'^stages\.(\d+)\.downsample', (0,)), (r'^stages\.(\d+)\.blocks\.(\d+)', None), (r'^norm', (99999,))]
        return dict(stem=r'^pos_embed|patch_embed', blocks=r'^stages\.(\d+)' if coarse else blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns the output of each stage.

        Args:
            x: Input image tensor.
            indices: Take last n stages if int, all if None, select matching indices if sequence.
            norm: Apply the final norm to the last stage's output (the only one of its width).
            stop_early: Stop iterating over stages when the last desired intermediate is reached.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'Output format must be NCHW or NHWC.'
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        x = self._pos_embed(self.patch_embed(check_input(x, self.in_chans, self.min_img_size)))
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last_idx else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune stages not required for specified intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if not self.patch_embed.dynamic_img_pad:
            self.min_img_size = self.feature_info[max_index]['reduction']
        if prune_norm or prune_end:  # the final norm only fits the last stage's width
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(check_input(x, self.in_chans, self.min_img_size)))
        x = self.stages(x)
        return self.norm(x)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an authors' checkpoint (or our own) onto `model`: their pyramid's keys renamed, position embedding and
    filters resampled to the model's grids (bicubic, the authors' fine-tuning recipe), a classifier of another size
    replaced by the model's new one. Checked to fit with one error naming every problem (`checkpoint.check_weights`).
    """
    state_dict = {_authors_to_timm_key(k): v for k, v in unwrap_state_dict(state_dict).items()}
    check_weights(state_dict, model)
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.startswith('head.') and (k not in target or v.shape != target[k].shape):
            continue
        if k == 'pos_embed' and v.shape != target[k].shape:
            grid = checkpoint_grid(state_dict)
            _logger.info(f'Resampled pos_embed and the filters from a {grid} to a {model.grid_size} token grid.')
            v = resample_abs_pos_embed(v, model.grid_size, grid, num_prefix_tokens=0, antialias=False)
        elif k.endswith('filter.complex_weight') and v.shape != target[k].shape:
            v = resample_filter(v, model.get_submodule(k.rsplit('.', 1)[0]).grid_size, mode='bicubic')
        out[k] = v
    head = state_dict.get('head.weight')
    if head is not None and 'head.weight' in target and 'head.weight' not in out:
        _logger.info(f"The checkpoint's {head.shape[0]}-class head was replaced by a new one (num_classes="
                     f"{model.num_classes}).")
        out.update({k: v for k, v in target.items() if k.startswith('head.')})
    return out


def _create_gfnet(variant: str, pretrained: bool = False, **kwargs) -> Union[GFNet, GFNetPyramid]:
    hierarchical = isinstance(kwargs['depth'], (tuple, list))
    if kwargs.get('features_only'):
        # backbones take the sizes detection and segmentation feed them (e.g. 512x683) without extra flags
        kwargs.setdefault('dynamic_img_size', True)
        kwargs.setdefault('dynamic_img_pad', True)
    # isotropic: four evenly spaced blocks (as dense-prediction heads for plain ViTs take them)
    depth = kwargs['depth']
    default_out_indices = (0, 1, 2, 3) if hierarchical else tuple(round((i + 1) * depth / 4) - 1 for i in range(4))
    out_indices = kwargs.pop('out_indices', default_out_indices)
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if any(overlay.get(k) for k in ('file', 'url', 'hf_hub_id', 'state_dict')):
        # a source of the caller's: a file is read by ours (timm's loader takes a training checkpoint's EMA weights
        # over the "model" ones the authors publish), the rest by timm's (timm < 1.0.31 would keep our custom_load)
        custom_load = overlay.get('custom_load', bool(overlay.get('file')))
        kwargs['pretrained_cfg_overlay'] = dict(overlay, custom_load=custom_load)
    return build_model_with_cfg(
        GFNetPyramid if hierarchical else GFNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        # no pool_size (as ViT): clients such as fastai then pool forward_features' maps as NCHW, but ours are NHWC
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        # like ViT: the learned pos_embed and filters fix the size, unless created with img_size= or dynamic_img_size
        # the authors' evaluation (their datasets.py): Resize(int(256 / 224 * size), bicubic), CenterCrop(size)
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        # the authors' files are training checkpoints: read by `load_pretrained` (safely, their "model" weights)
        'custom_load': True,
        'license': 'mit', 'paper_ids': 'arXiv:2107.00645', 'paper_name': 'Global Filter Networks for Image '
        'Classification', 'origin_url': 'https://github.com/raoyongming/GFNet',
        **kwargs,
    }


def _authors(name: str, link_id: str, **kwargs) -> Dict[str, Any]:
    # their links end in `/?dl=1`, without a file name: timm's download_cached_file takes (url, file name)
    return _cfg(url=(f'https://cloud.tsinghua.edu.cn/f/{link_id}/?dl=1', f'{name}.in1k.pth'), **kwargs)


default_cfgs = generate_default_cfgs({
    # the authors' direct download links (their README)
    'gfnet_ti.in1k': _authors('gfnet_ti', '3d0c1579aa524a0a99dd'),
    'gfnet_xs.in1k': _authors('gfnet_xs', 'e0ab5b1583954a1fa9b2'),
    'gfnet_s.in1k': _authors('gfnet_s', 'e5561fa070c44d9399bf'),
    'gfnet_b.in1k': _authors('gfnet_b', '2fbf264597af4d72afb3'),
    'gfnet_h_ti.in1k': _authors('gfnet_h_ti', 'b22dd45eccbe462cbbfb'),
    'gfnet_h_s.in1k': _authors('gfnet_h_s', '5229cb4d1daf48e69675'),
    'gfnet_h_b.in1k': _authors('gfnet_h_b', '954c5af21e824ba6b40c'),
})


@register_model
def gfnet_ti(pretrained: bool = False, **kwargs) -> GFNet:
    """GFNet-Ti: 12 blocks of width 256, patch 16 (7.5M params)."""
    model_args = dict(embed_dim=256, depth=12)
    return _create_gfnet('gfnet_ti', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gfnet_xs(pretrained: bool = False, **kwargs) -> GFNet:
    """GFNet-XS: 12 blocks of width 384, patch 16 (16M params)."""
    model_args = dict(embed_dim=384, depth=12)
    return _create_gfnet('gfnet_xs', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gfnet_s(pretrained: bool = False, **kwargs) -> GFNet:
    """GFNet-S: 19 blocks of width 384, patch 16 (25M params)."""
    model_args = dict(embed_dim=384, depth=19)
    return _create_gfnet('gfnet_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gfnet_b(pretrained: bool = False, **kwargs) -> GFNet:
    """GFNet-B: 19 blocks of width 512, patch 16 (43M params)."""
    model_args = dict(embed_dim=512, depth=19)
    return _create_gfnet('gfnet_b', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gfnet_h_ti(pretrained: bool = False, **kwargs) -> GFNetPyramid:
    """GFNet-H-Ti: hierarchical, 3-3-10-3 blocks of widths 64-128-256-512 (15M params)."""
    model_args = dict(embed_dim=(64, 128, 256, 512), depth=(3, 3, 10, 3), init_values=1e-3)
    return _create_gfnet('gfnet_h_ti', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gfnet_h_s(pretrained: bool = False, **kwargs) -> GFNetPyramid:
    """GFNet-H-S: hierarchical, 3-3-10-3 blocks of widths 96-192-384-768 (32M params)."""
    model_args = dict(embed_dim=(96, 192, 384, 768), depth=(3, 3, 10, 3), init_values=1e-5)
    return _create_gfnet('gfnet_h_s', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gfnet_h_b(pretrained: bool = False, **kwargs) -> GFNetPyramid:
    """GFNet-H-B: hierarchical, 3-3-27-3 blocks of widths 96-192-384-768 (54M params)."""
    model_args = dict(embed_dim=(96, 192, 384, 768), depth=(3, 3, 27, 3), init_values=1e-6)
    return _create_gfnet('gfnet_h_b', pretrained=pretrained, **dict(model_args, **kwargs))

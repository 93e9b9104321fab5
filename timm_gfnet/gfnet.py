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
import re
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, register_notrace_function, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .checkpoint import CheckpointError, check_fits, unwrap_state_dict
from .compat import record_input_size, timm_layer
from .flops import register_fft_flop_formulas
from .global_filter import GlobalFilter, resample_filter
from .pretrained_sources import PretrainedWeights, pretrained_weights

_logger = logging.getLogger(__name__)
register_fft_flop_formulas()  # FlopCounterMode counts the FFTs as soon as timm loads the plugin (idempotent)

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
        self.mlp = timm_layer(Mlp, dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
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
        return self.proj(x).permute(0, 2, 3, 1)


class GFNetStage(nn.Module):
    def __init__(
            self,
            dim: int,
            dim_out: int,
            depth: int,
            grid_size: Tuple[int, int],
            downsample: bool = True,
            dynamic_img_pad: bool = False,
            drop_path: Optional[List[float]] = None,
            **block_kwargs,
    ):
        super().__init__()
        dd = {'device': block_kwargs.get('device'), 'dtype': block_kwargs.get('dtype')}
        self.grad_checkpointing = False
        self.downsample = Downsample(dim, dim_out, pad=dynamic_img_pad, **dd) if downsample else nn.Identity()
        drop_path = drop_path or [0.] * depth
        self.blocks = nn.Sequential(*[
            Block(dim_out, grid_size, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x


# Python control flow on shapes: a leaf for FX feature extraction (FX only wraps names without a leading "_")
@register_notrace_function
def check_input(
        x: torch.Tensor,
        in_chans: int,
        img_size: Tuple[int, int],
        patch_size: Tuple[int, int],
        fixed_size: bool,
        pad: bool,
        min_size: int,
) -> torch.Tensor:
    """One early check whose error names the problem and the fix, instead of one from deep inside torch."""
    if x.dim() != 4:
        raise ValueError(
            f'GFNet takes a (B, C, H, W) batch of images, got shape {list(x.shape)}: use x.unsqueeze(0) for one image.')
    B, C, H, W = x.shape
    if C != in_chans:
        fix = 'it looks channels-last: use x.permute(0, 3, 1, 2)' if W == in_chans \
            else f'for {C}-channel images create the model with in_chans={C}'
        raise ValueError(
            f'GFNet was created with in_chans={in_chans} and got {C} channels (shape {list(x.shape)}): {fix}.')
    if not x.is_floating_point():
        raise ValueError(
            'GFNet takes floating-point images, not integer or bool tensors: convert with x.float() and normalise '
            '(the transforms of timm.data.create_transform do both).')
    if B == 0:
        raise ValueError('GFNet got an empty batch (batch size 0): skip the call for empty batches.')
    if fixed_size:
        if H != img_size[0] or W != img_size[1]:
            raise ValueError(
                f'GFNet was created for {img_size[0]}x{img_size[1]} images and got {H}x{W}: resize the input, or '
                f'create the model with img_size=({H}, {W}) or dynamic_img_size=True.')
    elif not pad:
        if H % patch_size[0] != 0 or W % patch_size[1] != 0 or H < min_size or W < min_size:
            raise ValueError(
                f'GFNet without dynamic_img_pad takes sizes that are multiples of the patch size {patch_size[0]} and '
                f'at least {min_size} (its largest stride), got {H}x{W}: crop or resize the input, or create '
                f'the model with dynamic_img_pad=True.')
    elif H < 1 or W < 1:
        raise ValueError(f'GFNet got an image of size {H}x{W}.')
    return x


def _drop_path_rates(drop_path_rate: float, depth: int) -> List[float]:
    # rising linearly over all blocks, as the authors (and timm's calculate_drop_path_rates) do
    return [x.item() for x in torch.linspace(0, drop_path_rate, depth, device='cpu')]  # cpu: also on the meta device


def _check_pool(global_pool: str) -> None:
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool takes 'avg' (mean over the token grid) or '' (none), got {global_pool!r}.")


def _image_size(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size) \
        if isinstance(img_size, (tuple, list)) else ()
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f'img_size takes one or two positive integers (H, W), got {img_size!r}.')
    return size


def _token_grid(img_size: Tuple[int, int], patch_size: Tuple[int, int], pad: bool) -> Tuple[int, int]:
    """Tokens per axis: partial patches count when the input is padded to whole ones (dynamic_img_pad)."""
    if pad:
        return (-(-img_size[0] // patch_size[0]), -(-img_size[1] // patch_size[1]))
    return (img_size[0] // patch_size[0], img_size[1] // patch_size[1])


def _x(grid: Sequence[int]) -> str:
    return 'x'.join(str(g) for g in grid)


def _halve(grid: Tuple[int, int], pad: bool) -> Tuple[int, int]:
    """The grid after a 2x2 stride-2 conv: rounded up when odd grids are padded (dynamic_img_pad), else down."""
    return ((grid[0] + 1) // 2, (grid[1] + 1) // 2) if pad else (grid[0] // 2, grid[1] // 2)


class _GFNetBase(nn.Module):
    """Stem, head and timm plumbing shared by both model families. Features are channels-last (NHWC)."""
    output_fmt: str = 'NHWC'

    def _init_stem(
            self,
            img_size: Union[int, Tuple[int, int]],
            patch_size: int,
            in_chans: int,
            embed_dim: int,
            num_classes: int,
            global_pool: str,
            pos_drop_rate: float,
            dynamic_img_size: bool,
            dynamic_img_pad: bool,
            dd: Dict[str, Any],
    ) -> None:
        _check_pool(global_pool)
        img_size = _image_size(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        self.min_img_size = patch_size  # without dynamic padding; the largest stride, for hierarchical models
        self.patch_embed = timm_layer(
            PatchEmbed,
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt='NHWC',
            strict_img_size=not dynamic_img_size,
            dynamic_img_pad=dynamic_img_pad,
            **dd,
        )
        grid = self.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim, **dd))
        self.pos_drop = nn.Dropout(p=pos_drop_rate)

    @property
    def grid_size(self) -> Tuple[int, int]:
        """The token grid of the stem at the model's input size: what pos_embed (and the first filters) are built
        for. With dynamic_img_pad the input is padded to whole patches, so a partial patch is a token too."""
        pe = self.patch_embed
        return _token_grid(pe.img_size, pe.patch_size, pe.dynamic_img_pad)

    def _init_head(self, num_features: int, num_classes: int, drop_rate: float, norm_layer: Callable, dd) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.norm = norm_layer(num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def architecture_args(self) -> Dict[str, Any]:
        """The constructor arguments that give this model its shapes, read from the model as it is now (after
        `set_input_size` too), JSON-ready: what a config needs to build it again for its weights. Not among them:
        `num_classes` (timm keeps it apart), drop rates, the layer-scale init and the filter backend."""
        pe = self.patch_embed
        fc1 = self._first_block().mlp.fc1
        return dict(
            img_size=list(pe.img_size), patch_size=pe.patch_size[0], in_chans=self.in_chans,
            global_pool=self.global_pool, mlp_ratio=fc1.out_features / fc1.in_features,
            dynamic_img_size=self.dynamic_img_size, dynamic_img_pad=pe.dynamic_img_pad, **self._stage_args())

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'pos_embed'}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            _check_pool(global_pool)  # before anything changes
        p = self.norm.weight if isinstance(self.norm, nn.LayerNorm) else next(self.parameters())
        self.head = nn.Linear(self.num_features, num_classes, device=p.device, dtype=p.dtype) if num_classes > 0 \
            else nn.Identity()
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool

    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Change the input resolution: pos_embed and every filter are resampled (bicubic) to the new token grids,
        as when fine-tuning at another size (`create_model(..., img_size=...)` does the same from a checkpoint).
        All or nothing: a size the model cannot take raises before anything changes."""
        if img_size is None:
            return
        size = _image_size(img_size)
        pe = self.patch_embed
        grid = _token_grid(size, pe.patch_size, pe.dynamic_img_pad)
        filter_grids = self._filter_grids(grid)
        if min(min(g) for _, g in filter_grids + [(None, grid)]) < 1:
            smallest = self.feature_info[-1]['reduction']
            raise ValueError(
                f'set_input_size({size[0]}, {size[1]}): too small for {type(self).__name__}, whose token grids '
                f'shrink to {_x(filter_grids[-1][1])} there; take at least {smallest}x{smallest} (its largest stride).')
        prev_grid = self.grid_size
        with torch.no_grad():  # every new tensor first, then the swap: nothing half-changed if one of them fails
            pos_embed = resample_abs_pos_embed(self.pos_embed, grid, prev_grid, num_prefix_tokens=0, antialias=False)
            weights = [resample_filter(f.complex_weight, g, mode='bicubic') for f, g in filter_grids]
        pe.set_input_size(img_size=size)
        self.pos_embed = nn.Parameter(pos_embed, requires_grad=self.pos_embed.requires_grad)
        for (filt, filt_grid), weight in zip(filter_grids, weights):
            if weight is not filt.complex_weight:
                filt.complex_weight = nn.Parameter(weight, requires_grad=filt.complex_weight.requires_grad)
            filt.grid_size = filt_grid
        record_input_size(self, size)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        pe = self.patch_embed
        return check_input(
            x, self.in_chans, pe.img_size, pe.patch_size, pe.strict_img_size, pe.dynamic_img_pad, self.min_img_size)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if self.dynamic_img_size:
            pos_embed = resample_abs_pos_embed(
                self.pos_embed, (H, W), self.grid_size, num_prefix_tokens=0, antialias=False)
        else:
            pos_embed = self.pos_embed
        return self.pos_drop(x + pos_embed.reshape(1, H, W, C))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


class GFNet(_GFNetBase):
    """Isotropic GFNet: patch embedding + learned position embedding, a stack of global filter blocks."""

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
            norm_layer: Optional[Callable] = None,
            act_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self._init_stem(img_size, patch_size, in_chans, embed_dim, num_classes, global_pool, pos_drop_rate,
                        dynamic_img_size, dynamic_img_pad, dd)
        grid_size = self.grid_size
        dpr = _drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            Block(
                embed_dim,
                grid_size,
                mlp_ratio=mlp_ratio,
                init_values=init_values,
                proj_drop=proj_drop_rate,
                drop_path=dpr[i],
                dynamic_size=dynamic_img_size,
                filter_backend=filter_backend,
                act_layer=act_layer or nn.GELU,
                norm_layer=norm_layer,
                **dd,
            ) for i in range(depth)])
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self._init_head(embed_dim, num_classes, drop_rate, norm_layer, dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^pos_embed|patch_embed', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _filter_grids(self, grid: Tuple[int, int]) -> List[Tuple[GlobalFilter, Tuple[int, int]]]:
        return [(blk.filter, grid) for blk in self.blocks]

    def _first_block(self) -> Block:
        return self.blocks[0]

    def _stage_args(self) -> Dict[str, Any]:
        return dict(embed_dim=self.feature_info[0]['num_chs'], depth=len(self.blocks))

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
        x = self._pos_embed(self.patch_embed(self._check_input(x)))
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
        x = self._pos_embed(self.patch_embed(self._check_input(x)))
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return self.norm(x)


class GFNetPyramid(_GFNetBase):
    """Hierarchical GFNet: a 4x4 patch stem, then four stages of global filter blocks with layer scale,
    joined by 2x2 stride-2 convs (strides 4, 8, 16, 32)."""

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
            norm_layer: Optional[Callable] = None,
            act_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        num_stages = len(depth)
        assert len(embed_dim) == num_stages, 'embed_dim and depth need one entry per stage'
        self._init_stem(img_size, patch_size, in_chans, embed_dim[0], num_classes, global_pool, pos_drop_rate,
                        dynamic_img_size, dynamic_img_pad, dd)
        # stochastic depth rises linearly over all blocks of all stages, as the authors do
        dpr = _drop_path_rates(drop_path_rate, sum(depth))
        grid = self.grid_size
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(GFNetStage(
                embed_dim[max(i - 1, 0)],
                embed_dim[i],
                depth[i],
                grid,
                downsample=i > 0,
                dynamic_img_pad=dynamic_img_pad,
                drop_path=dpr[sum(depth[:i]):sum(depth[:i + 1])],
                mlp_ratio=mlp_ratio,
                init_values=init_values,
                proj_drop=proj_drop_rate,
                dynamic_size=dynamic_img_size,
                filter_backend=filter_backend,
                act_layer=act_layer or nn.GELU,
                norm_layer=norm_layer,
                **dd,
            ))
            self.feature_info.append(dict(module=f'stages.{i}', num_chs=embed_dim[i], reduction=patch_size * 2 ** i))
            grid = _halve(grid, dynamic_img_pad)
        self.stages = nn.Sequential(*stages)
        self.min_img_size = self.feature_info[-1]['reduction']
        self._init_head(embed_dim[-1], num_classes, drop_rate, norm_layer, dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^pos_embed|patch_embed',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    def _filter_grids(self, grid: Tuple[int, int]) -> List[Tuple[GlobalFilter, Tuple[int, int]]]:
        # each stage after the first halves the grid, as built in __init__
        out = []
        for i, stage in enumerate(self.stages):
            grid = _halve(grid, self.patch_embed.dynamic_img_pad) if i else grid
            out += [(blk.filter, grid) for blk in stage.blocks]
        return out

    def _first_block(self) -> Block:
        return self.stages[0].blocks[0]

    def _stage_args(self) -> Dict[str, Any]:
        return dict(embed_dim=[f['num_chs'] for f in self.feature_info], depth=[len(s.blocks) for s in self.stages])

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
        x = self._pos_embed(self.patch_embed(self._check_input(x)))
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
        self.min_img_size = self.feature_info[max_index]['reduction']
        if prune_norm or prune_end:  # the final norm only fits the last stage's width
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(self._check_input(x)))
        x = self.stages(x)
        return self.norm(x)


def _authors_to_timm_key(k: str) -> str:
    """Key of the authors' GFNetPyramid state_dict -> ours (isotropic keys are the same in both)."""
    k = re.sub(r'^patch_embed\.0\.', 'patch_embed.', k)
    k = re.sub(r'^patch_embed\.(\d+)\.', r'stages.\1.downsample.', k)
    return re.sub(r'^blocks\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.', k)


def checkpoint_grid(state_dict: Dict[str, torch.Tensor]) -> Optional[Tuple[int, int]]:
    """The stem's token grid of a checkpoint (our key layout): its height is the first block's filter height (the
    first stage's, for the hierarchical family), its width what pos_embed's tokens leave; square without filters.
    None without a pos_embed (`check_fits` names it missing)."""
    if 'pos_embed' not in state_dict:
        return None
    n = state_dict['pos_embed'].shape[1]
    first = state_dict.get('blocks.0.filter.complex_weight', state_dict.get('stages.0.blocks.0.filter.complex_weight'))
    h = first.shape[0] if first is not None else round(n ** 0.5)
    if h < 1 or n % h:
        raise ValueError(f'pos_embed holds {n} tokens, which is no grid of height {h} (the first filter\'s): the '
                         f'checkpoint is damaged or not a GFNet.')
    return h, n // h


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an authors' checkpoint (or our own) onto `model`'s keys, resampling position embedding and filters to its
    size (bicubic, the authors' fine-tuning recipe). Accepts their full training checkpoints (weights under 'model')
    and DDP `module.` prefixes. Checks live in `checkpoint` (`pretrained_weights` before building, `check_fits`
    after this)."""
    state_dict = {_authors_to_timm_key(k): v for k, v in unwrap_state_dict(state_dict).items()}
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k in target and v.shape != target[k].shape:
            if k == 'pos_embed' and checkpoint_grid(state_dict) is not None:
                v = resample_abs_pos_embed(
                    v, model.grid_size, checkpoint_grid(state_dict), num_prefix_tokens=0, antialias=False)
            elif k.endswith('filter.complex_weight') and v.shape[2] == target[k].shape[2]:
                v = resample_filter(v, model.get_submodule(k.rsplit('.', 1)[0]).grid_size, mode='bicubic')
        out[k] = v
    return out


def _sized_to_weights(variant: str, kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[PretrainedWeights]]:
    """Model kwargs that load the pretrained weights as they are: read and checked once (`pretrained_weights`), then
    timm builds the model at their own image size, input channels and classes unless the caller asks otherwise
    (`img_size=` resamples, another `num_classes` resets the head, as timm does)."""
    depth, dim = kwargs['depth'], kwargs['embed_dim']
    arch = (tuple(depth), tuple(dim)) if isinstance(depth, (tuple, list)) else ((depth,), (dim,))
    weights = pretrained_weights(variant, kwargs, arch)
    if weights is None:
        return kwargs, None
    state_dict = {_authors_to_timm_key(k): v for k, v in weights.state_dict.items()}
    stem = state_dict.get('patch_embed.proj.weight')
    grid = checkpoint_grid(state_dict)
    if stem is None or grid is None:
        return kwargs, weights  # not a whole GFNet: check_fits names what is missing
    in_chans, patch = stem.shape[1], tuple(stem.shape[2:])
    size = weights.img_size
    if size is None or _token_grid(size, patch, kwargs.get('dynamic_img_pad', False)) != grid:
        size = (grid[0] * patch[0], grid[1] * patch[1])
    head = state_dict.get('head.weight')
    overlay = dict(
        kwargs.get('pretrained_cfg_overlay') or {},
        # timm's own loader takes the weights from here: no second read, and no source it would read again
        state_dict=state_dict, source='', file=None, custom_load=False,
        # what timm builds by default: the weights' own classes and input (`_update_default_model_kwargs`)
        num_classes=head.shape[0] if head is not None else 0, input_size=(in_chans, *size))
    return dict(kwargs, pretrained_cfg_overlay=overlay), weights


def _load_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """What timm's loader applies: the authors' layout mapped and resampled (`checkpoint_filter_fn`), then checked
    to fit with one error naming every key. Says in a log line what it changed."""
    grid = checkpoint_grid(state_dict)
    if grid is not None and grid != model.grid_size:
        _logger.info(f'Resampled pos_embed and the filters from a {_x(grid)} to a {_x(model.grid_size)} token grid.')
    head = state_dict.get('head.weight')
    if head is not None and head.shape[0] != model.num_classes:
        _logger.info(f'The checkpoint\'s {head.shape[0]}-class head was replaced by a new one: num_classes='
                     f'{model.num_classes}.')
    return check_fits(checkpoint_filter_fn(state_dict, model), model)


def _create_gfnet(variant: str, pretrained: bool = False, **kwargs) -> Union[GFNet, GFNetPyramid]:
    depth = kwargs['depth']
    hierarchical = isinstance(depth, (tuple, list))
    if kwargs.get('features_only'):
        # backbones take the sizes detection and segmentation feed them (e.g. 512x683) without extra flags
        kwargs.setdefault('dynamic_img_size', True)
        kwargs.setdefault('dynamic_img_pad', True)
    # isotropic: four evenly spaced blocks (as dense-prediction heads for plain ViTs take them)
    default_out_indices = (0, 1, 2, 3) if hierarchical else tuple(round((i + 1) * depth / 4) - 1 for i in range(4))
    out_indices = kwargs.pop('out_indices', default_out_indices)
    weights = None
    if pretrained:
        kwargs, weights = _sized_to_weights(variant, kwargs)
    try:
        model = build_model_with_cfg(
            GFNetPyramid if hierarchical else GFNet,
            variant,
            pretrained,
            pretrained_filter_fn=_load_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
            **kwargs,
        )
    except CheckpointError as e:
        raise (weights.blame_cache(e) if weights is not None else e) from None
    for m in (model, getattr(model, 'model', None)):  # a features_only wrapper may hold the model
        if isinstance(getattr(m, 'pretrained_cfg', None), dict):
            m.pretrained_cfg.pop('state_dict', None)  # the cfg describes the weights, it keeps no copy of them
    if isinstance(model, _GFNetBase):
        record_input_size(model, model.patch_embed.img_size)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
        # like ViT: the learned pos_embed and filters fix the size, unless created with img_size= or dynamic_img_size
        # the authors' evaluation (their datasets.py): Resize(int(256 / 224 * size), bicubic), CenterCrop(size)
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'mit', 'paper_ids': 'arXiv:2107.00645', 'paper_name': 'Global Filter Networks for Image '
        'Classification', 'origin_url': 'https://github.com/raoyongming/GFNet',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # the authors' direct download links (their README); converted on load
    'gfnet_ti.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/3d0c1579aa524a0a99dd/?dl=1'),
    'gfnet_xs.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/e0ab5b1583954a1fa9b2/?dl=1'),
    'gfnet_s.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/e5561fa070c44d9399bf/?dl=1'),
    'gfnet_b.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/2fbf264597af4d72afb3/?dl=1'),
    'gfnet_h_ti.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/b22dd45eccbe462cbbfb/?dl=1', pool_size=(7, 7)),
    'gfnet_h_s.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/5229cb4d1daf48e69675/?dl=1', pool_size=(7, 7)),
    'gfnet_h_b.in1k': _cfg(url='https://cloud.tsinghua.edu.cn/f/954c5af21e824ba6b40c/?dl=1', pool_size=(7, 7)),
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

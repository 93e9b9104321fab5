"""Any resolution: resampling at creation (the authors' fine-tuning recipe) and dynamic sizes at run time."""
from typing import List, Tuple

import pytest
import timm
import torch
import torch.nn.functional as F

from reference import VARIANTS, authors_state_dict, input_batch, write_authors_checkpoint
from timm_gfnet import GlobalFilter, load_model, resample_filter


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp('ckpt')
    return {v: str(write_authors_checkpoint(v, d / f'{v}.pth')) for v in ('gfnet_ti', 'gfnet_h_ti')}


def _authors_filter(w: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """The authors' recipe on the raw (h, w // 2 + 1, C, 2) tensor: real and imaginary parts as channels,
    align_corners=True (bicubic when fine-tuning at another size, bilinear for dense prediction)."""
    h, wf, c, _ = w.shape
    x = w.reshape(1, h, wf, 2 * c).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode=mode, align_corners=True)
    return x.permute(0, 2, 3, 1).reshape(*size, c, 2)


def _authors_pos_embed(pos: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """(1, N, C) tokens on an old grid -> the new grid: bicubic, align_corners=False, no antialiasing."""
    x = pos.reshape(1, *old, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=new, mode='bicubic', align_corners=False, antialias=False)
    return x.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1)


def _grids(name: str, h: int, w: int) -> List[Tuple[int, int]]:
    """Token grid of every block, in block order, from the authors' constructor arguments: the patch grid, and for
    the hierarchical models each further stage at half the size of the one before."""
    args = VARIANTS[name.replace('_', '-')]['constructor']
    depths = args['depth'] if isinstance(args['depth'], list) else [args['depth']]
    p = args['patch_size']
    return [(h // (p * 2 ** i), w // (p * 2 ** i)) for i, d in enumerate(depths) for _ in range(d)]


@pytest.mark.parametrize('name,size', [('gfnet_ti', 384), ('gfnet_ti', (224, 320)), ('gfnet_h_ti', 288)])
def test_pretrained_at_another_size(name, size, checkpoints):
    """Fine-tuning at another size: pos_embed and every filter equal the authors' recipe applied to the raw
    checkpoint tensors (computed here with torch's interpolate, not with the package's resampling code)."""
    model = timm.create_model(name, pretrained=True, img_size=size,
                              pretrained_cfg_overlay=dict(file=checkpoints[name], custom_load=True)).eval()
    h, w = (size, size) if isinstance(size, int) else size
    patch = 16 if name == 'gfnet_ti' else 4
    src = authors_state_dict(name)
    torch.testing.assert_close(
        model.pos_embed, _authors_pos_embed(src['pos_embed'], (224 // patch, 224 // patch), (h // patch, w // patch)),
        rtol=0, atol=1e-6)  # measured: bit-identical
    ours = [m.complex_weight for m in model.modules() if isinstance(m, GlobalFilter)]
    theirs = [v for k, v in src.items() if k.endswith('filter.complex_weight')]  # the authors' block order
    grids = _grids(name, h, w)
    assert len(ours) == len(theirs) == len(grids)
    for i, (a, b, (gh, gw)) in enumerate(zip(ours, theirs, grids)):
        expected = _authors_filter(b, (gh, gw // 2 + 1), 'bicubic')
        torch.testing.assert_close(a, expected, rtol=0, atol=1e-6, msg=lambda m, i=i: f'filter {i}: {m}')
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_224_to_384_to_224_is_well_formed(checkpoints, tmp_path):
    """A 384 checkpoint loads at 384, as it is (its own size, read from its shapes); 224 only when asked for."""
    from safetensors.torch import save_file
    big = timm.create_model('gfnet_ti', pretrained=True, img_size=384,
                            pretrained_cfg_overlay=dict(file=checkpoints['gfnet_ti'], custom_load=True))
    save_file(big.state_dict(), str(tmp_path / 'ti384.safetensors'))
    kept = load_model(tmp_path / 'ti384.safetensors').eval()
    assert kept.patch_embed.img_size == (384, 384)
    assert timm.data.resolve_model_data_config(kept)['input_size'] == (3, 384, 384)
    assert all(torch.equal(v, big.state_dict()[k]) for k, v in kept.state_dict().items())
    back = timm.create_model('gfnet_ti', pretrained=True, img_size=224,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / 'ti384.safetensors'))).eval()
    original = timm.create_model(
        'gfnet_ti', pretrained=True, pretrained_cfg_overlay=dict(file=checkpoints['gfnet_ti'], custom_load=True)).eval()
    assert back.pos_embed.shape == original.pos_embed.shape
    x = input_batch()[:1]
    with torch.no_grad():
        a, b = back(x), original(x)
    assert torch.isfinite(a).all()
    # resampling is smooth: the round trip stays close to where it started (not bit-exact: bicubic both ways)
    assert F.cosine_similarity(a, b).item() > 0.9


@pytest.mark.parametrize('name', ['gfnet_ti', 'gfnet_h_ti'])
def test_dynamic_size(name, checkpoints):
    fixed = timm.create_model(name, pretrained=True,
                              pretrained_cfg_overlay=dict(file=checkpoints[name], custom_load=True)).eval()
    dynamic = timm.create_model(name, dynamic_img_size=True, dynamic_img_pad=True).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = input_batch()[:1]
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x), rtol=0, atol=0)  # same size: the same model
        for size in ((160, 96), (257, 200), (100, 333)):
            out = dynamic(torch.randn(2, 3, *size))
            assert out.shape == (2, 1000) and torch.isfinite(out).all(), size
        features = dynamic.forward_features(torch.randn(1, 3, 100, 333))
    stride = 16 if name == 'gfnet_ti' else 32
    assert features.shape[1:3] == (-(-100 // stride), -(-333 // stride))


TINY = {
    'gfnet_ti': dict(depth=2, embed_dim=32),
    'gfnet_h_ti': dict(depth=(1, 1, 1, 1), embed_dim=(8, 16, 16, 32)),
}


@pytest.mark.parametrize('size', [(160, 96), (96, 288), (64, 64)])
@pytest.mark.parametrize('name', list(TINY))
def test_dynamic_size_is_the_authors_dense_recipe(name, size):
    """A dynamic-size model at another size computes what a fixed-size model of that size computes with the
    filters resampled bilinearly (align_corners=True) and pos_embed bicubically, as the authors do for dense
    prediction; the expected weights are computed here from the raw tensors with torch's interpolate."""
    torch.manual_seed(0)
    base = timm.create_model(name, img_size=128, dynamic_img_size=True, filter_backend='fft', **TINY[name]).eval()
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, GlobalFilter):
                m.complex_weight.normal_()  # O(1) filters: a wrong resampling shows in the outputs
    sized = timm.create_model(name, img_size=size, filter_backend='fft', **TINY[name]).eval()
    patch = 16 if name == 'gfnet_ti' else 4
    state = base.state_dict()
    grid = (size[0] // patch, size[1] // patch)
    state['pos_embed'] = _authors_pos_embed(state['pos_embed'], (128 // patch,) * 2, grid)
    for k, m in sized.named_modules():
        if isinstance(m, GlobalFilter):
            state[f'{k}.complex_weight'] = _authors_filter(state[f'{k}.complex_weight'], m.complex_weight.shape[:2],
                                                           'bilinear')
    sized.load_state_dict(state)
    x = torch.randn(2, 3, *size)
    # features (normalised, O(1)), not logits (a small random head would hide differences); measured: bit-identical
    with torch.no_grad():
        expected = sized.forward_features(x)
        torch.testing.assert_close(base.forward_features(x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(base.forward_features(x), expected, rtol=0, atol=1e-6)  # a second call: the same
    base.train()
    sized.train()
    # training resamples inside the autograd graph
    torch.testing.assert_close(base.forward_features(x), sized.forward_features(x), rtol=0, atol=1e-6)


def test_fixed_size_model_refuses_other_sizes():
    model = timm.create_model('gfnet_ti')
    with pytest.raises(AssertionError, match=r"^Input height \(256\) doesn't match model \(224\)\.$"):
        model(torch.randn(1, 3, 256, 224))


def test_dynamic_filter_trains():
    model = timm.create_model('gfnet_ti', depth=2, dynamic_img_size=True)
    layer = model.blocks[0].filter
    # training resamples inside the autograd graph: gradients reach the stored filter
    model(torch.randn(1, 3, 96, 96)).sum().backward()
    assert layer.complex_weight.grad is not None and layer.complex_weight.grad.abs().sum() > 0


# ---- fixed sizes with dynamic_img_pad: the filters and pos_embed are built for the padded (rounded-up) grids

def _by_hand_isotropic(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own layers, the input padded by hand to whole patches (zeros right and bottom)."""
    p = model.patch_embed.patch_size[0]
    x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
    t = model.patch_embed.proj(x).permute(0, 2, 3, 1)
    t = t + model.pos_embed.reshape(1, *t.shape[1:])
    for blk in model.blocks:
        t = blk(t)
    return model.forward_head(model.norm(t))


def _by_hand_pyramid(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stem padded to whole patches, and every stage's map padded to even sides before its 2x2 conv, by hand."""
    p = model.patch_embed.patch_size[0]
    x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
    t = model.patch_embed.proj(x)  # NCHW
    t = (t.permute(0, 2, 3, 1) + model.pos_embed.reshape(1, *t.shape[2:], -1))
    for i, stage in enumerate(model.stages):
        if i:
            c = t.permute(0, 3, 1, 2)
            c = F.pad(c, (0, c.shape[-1] % 2, 0, c.shape[-2] % 2))
            t = stage.downsample.proj(c).permute(0, 2, 3, 1)
        for blk in stage.blocks:
            t = blk(t)
    return model.forward_head(model.norm(t))


@pytest.mark.parametrize('name,size,grids', [
    ('gfnet_ti', (230, 230), [(15, 15)]),
    ('gfnet_ti', (200, 260), [(13, 17)]),
    ('gfnet_h_ti', (228, 228), [(57, 57), (29, 29), (15, 15), (8, 8)]),
    ('gfnet_h_ti', (200, 260), [(50, 65), (25, 33), (13, 17), (7, 9)]),
])
def test_fixed_size_with_dynamic_pad(name, size, grids):
    """Every stage's filters and the position embedding are built for the rounded-up grids the padded input makes,
    and the model equals its own layers fed the input padded by hand. Other sizes keep the one-line error."""
    depth = 2 if name == 'gfnet_ti' else (1, 1, 1, 1)
    model = timm.create_model(name, img_size=size, dynamic_img_pad=True, depth=depth).eval()
    stages = [model.blocks] if name == 'gfnet_ti' else [s.blocks for s in model.stages]
    assert [{blk.filter.grid_size for blk in blocks} for blocks in stages] == [{g} for g in grids]
    assert model.pos_embed.shape[1] == grids[0][0] * grids[0][1]
    x = torch.randn(2, 3, *size)
    by_hand = _by_hand_isotropic if name == 'gfnet_ti' else _by_hand_pyramid
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand(model, x), rtol=0, atol=0)
    with pytest.raises(AssertionError, match=rf"^Input height \(224\) doesn't match model \({size[0]}\)"):
        model(torch.randn(1, 3, 224, 224))


def test_fixed_size_with_dynamic_pad_loads_pretrained(checkpoints):
    """The 224 checkpoint resampled to the padded grids (15x15 at 230), as for any other size."""
    model = timm.create_model('gfnet_ti', pretrained=True, img_size=230, dynamic_img_pad=True,
                              pretrained_cfg_overlay=dict(file=checkpoints['gfnet_ti'], custom_load=True)).eval()
    source = authors_state_dict('gfnet_ti')
    torch.testing.assert_close(model.blocks[0].filter.complex_weight,
                               resample_filter(source['blocks.0.filter.complex_weight'], (15, 15)))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 230, 230))).all()


def test_set_input_size_is_all_or_nothing():
    """A size too small for the model's stages is refused before anything changes: the model still takes its old
    size, with the same weights."""
    model = timm.create_model('gfnet_h_ti', depth=(1, 1, 1, 1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r'^set_input_size\(16, 16\): too small for GFNetPyramid; take at least '
                                         r'32x32 \(its largest stride\)\.$'):
        model.set_input_size(16)
    for bad in (0, -3, 3.5, (224,), 'x'):
        with pytest.raises(ValueError, match=r'^img_size takes one or two positive integers'):
            model.set_input_size(bad)
    assert model.patch_embed.img_size == (224, 224)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)

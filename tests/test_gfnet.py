"""`timm_gfnet.gfnet`: the timm model contract for every GFNet variant (as timm's own tests/test_models.py checks it),
bad input, any resolution (resampling at creation, the authors' recipes, dynamic sizes and padding) and property-based
fuzzing of sizes and tensors (a few hundred cases here, ten times as many with `-m slow`)."""
import math
import re
from collections import Counter
from typing import Dict, List, Tuple

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timm.layers import get_channel_dim, get_spatial_dim

from reference import MODEL_NAMES, VARIANTS, authors_state_dict, expected, input_batch, write_authors_checkpoint
from timm_gfnet import GlobalFilter, set_filter_backend

HIERARCHICAL = [n for n in MODEL_NAMES if n.startswith('gfnet_h_')]
# the smallest of each family for the slower checks (the families share all code; sizes are checked for all)
TWO = ['gfnet_ti', 'gfnet_h_ti']


def _input(model: torch.nn.Module, batch_size: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, *model.pretrained_cfg['input_size'])


def test_registry():
    assert sorted(timm.list_models('gfnet*')) == sorted(MODEL_NAMES)
    assert sorted(timm.list_pretrained('gfnet*')) == sorted(f'{n}.in1k' for n in MODEL_NAMES)
    assert set(timm.list_models(module='gfnet')) == set(MODEL_NAMES)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_param_count_equals_authors(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[name.replace('_', '-')]['num_params']


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_layer_norms_are_the_authors(name):
    """Every LayerNorm has the authors' eps (their constructor's `norm_layer`, recorded in tests/data); a wrong eps
    moves the logits by less than the parity tests' tolerance, so it is checked here directly."""
    spec = VARIANTS[name.replace('_', '-')]['constructor']['norm_layer']
    eps = float(re.fullmatch(r'LayerNorm\(eps=(.+)\)', spec).group(1))
    with torch.device('meta'):
        model = timm.create_model(name)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * len(_blocks(model)) + 1  # norm1 and norm2 per block, and the final norm
    assert {m.eps for m in norms} == {eps}


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(f'{name}.in1k').to_dict()
    assert cfg['url'] == (VARIANTS[name.replace('_', '-')]['published']['url'], f'{name}.in1k.pth')
    assert cfg['input_size'] == (3, 224, 224) and cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.875
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg['license'] == 'mit'
    model = timm.create_model(name)
    data_cfg = timm.data.resolve_model_data_config(model)
    assert data_cfg['input_size'] == (3, 224, 224) and data_cfg['crop_pct'] == 0.875


@pytest.mark.parametrize('name', TWO)
def test_default_cfgs_and_head(name):
    """forward_features is an unpooled NHWC grid; head reset / pooling removal as timm expects."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    spatial, feat = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    grid = (224 // model.feature_info[-1]['reduction'],) * 2
    assert model.output_fmt == 'NHWC'
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert (features.shape[spatial[0]], features.shape[spatial[1]]) == grid
    assert cfg['pool_size'] is None  # as ViT's: fastai and others would pool the NHWC map as NCHW
    assert features.shape[feat] == model.num_features
    assert pre_logits.shape == (1, model.head_hidden_size)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    torch.testing.assert_close(pre_logits, features.mean(dim=(1, 2)))

    assert model.get_classifier() is model.head
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), pre_logits)
    model.reset_classifier(0, '')
    with torch.no_grad():
        torch.testing.assert_close(model(x), features)
    model.reset_classifier(7, 'avg')
    assert model(x).shape == (1, 7)
    for bad in (-1, 2.5):  # refused before anything changes
        with pytest.raises(ValueError, match=rf'^num_classes takes a whole number >= 0 .*got {bad}\.$'):
            model.reset_classifier(bad)
    assert model.num_classes == 7 and model(x).shape == (1, 7)

    state_dict = model.state_dict()
    assert cfg['classifier'] + '.weight' in state_dict and cfg['first_conv'] + '.weight' in state_dict
    model = timm.create_model(name, num_classes=0, global_pool='').eval()
    with torch.no_grad():
        assert model(x).shape == features.shape


@pytest.mark.parametrize('name', TWO)
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42, drop_path_rate=0.1, drop_rate=0.1)
    model.train()
    x = _input(model, 2)
    out = model(x)
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'


# each variant's architecture (depths, widths, layer scale) at a size where its grids are small: 2x2 tokens for the
# isotropic models, 16x16 down to 2x2 for the hierarchical ones
SMALL_SIZE = {n: 64 if n in HIERARCHICAL else 32 for n in MODEL_NAMES}


def _train_grads(
        model: torch.nn.Module, x: torch.Tensor, intermediates: bool = False, seed: int = 1) -> Dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same stochastic-depth and dropout masks in the runs compared
    if intermediates:
        final, inter = model.forward_intermediates(x)
        loss = final.square().mean() + sum(t.square().mean() for t in inter)
    else:
        loss = model(x).logsumexp(-1).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _blocks(model: torch.nn.Module) -> List[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == 'Block']


@pytest.mark.parametrize('name', TWO)
def test_grad_checkpointing_gives_the_same_gradients(name):
    """Where checkpointing matters: training mode (stochastic depth and dropout on), gradients of every parameter
    with and without it, through forward and forward_intermediates; and it really recomputes every block."""
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=SMALL_SIZE[name], num_classes=10, drop_path_rate=0.3,
                              proj_drop_rate=0.1, drop_rate=0.1, filter_backend='fft').train()
    size = SMALL_SIZE[name]
    x = torch.randn(2, 3, size, size)
    calls = Counter()
    for i, blk in enumerate(_blocks(model)):
        blk.register_forward_pre_hook(lambda m, a, i=i: calls.update([i]))
    n_blocks = len(_blocks(model))
    for intermediates in (False, True):
        model.set_grad_checkpointing(False)
        calls.clear()
        plain = _train_grads(model, x, intermediates)
        assert sorted(plain) == sorted(n for n, _ in model.named_parameters() if not (intermediates and 'head' in n))
        assert set(calls.values()) == {1} and len(calls) == n_blocks
        model.set_grad_checkpointing(True)
        calls.clear()
        checkpointed = _train_grads(model, x, intermediates)
        # every block started twice: its forward, then its recomputation in backward
        assert set(calls.values()) == {2} and len(calls) == n_blocks, calls
        assert sorted(checkpointed) == sorted(plain)
        for n, g in plain.items():
            # measured: bit-identical on CPU (the recomputation replays the same kernels and masks)
            torch.testing.assert_close(checkpointed[n], g, rtol=0, atol=0, msg=lambda m, n=n: f"{n}: {m}")
    # the random masks are part of what is compared: another seed gives other gradients
    other = _train_grads(model, x, seed=2)
    first = next(n for n in plain if n.endswith('mlp.fc1.weight'))
    assert not torch.equal(other[first], _train_grads(model, x)[first])


@pytest.mark.parametrize('name', TWO)
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, range(len(model.feature_info)))
    assert len(info.channels()) >= 3
    x = _input(model)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for c, r, o in zip(info.channels(), info.reduction(), intermediates, strict=True):
            assert o.shape == (1, c, math.ceil(224 / r), math.ceil(224 / r))
        last2 = model.forward_intermediates(x, indices=2, output_fmt='NHWC', intermediates_only=True)
        torch.testing.assert_close(last2[-1], intermediates[-1].permute(0, 2, 3, 1))
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], intermediates[0])
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', TWO)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 4
    if name in HIERARCHICAL:
        full = timm.create_model(name)
        assert reductions == [4, 8, 16, 32] and channels == [f['num_chs'] for f in full.feature_info]
    else:
        assert reductions == [16] * 4
    with torch.no_grad():
        # backbones take detection/segmentation sizes as they come (dynamic size and padding by default)
        for size in ((224, 224), (96, 160), (130, 171)):
            outs = model(torch.randn(1, 3, *size))
            for c, r, o in zip(channels, reductions, outs, strict=True):
                assert o.shape == (1, c, math.ceil(size[0] / r), math.ceil(size[1] / r)), (size, r)
                assert torch.isfinite(o).all()
    picked = timm.create_model(name, features_only=True, out_indices=(-1,))
    assert picked.feature_info.channels() == channels[-1:]


@pytest.mark.parametrize('name', ['gfnet_ti', 'gfnet_h_ti'])
def test_layer_decay_groups(name):
    """group_matcher drives timm's layer-wise LR decay: every parameter lands in a group, stem first."""
    from timm.optim import create_optimizer_v2
    model = timm.create_model(name)
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    grouped = {id(p) for g in opt.param_groups for p in g['params']}
    assert grouped == {id(p) for p in model.parameters()}
    scales = sorted({g['lr_scale'] for g in opt.param_groups})
    assert len(scales) > 3 and scales[-1] == 1.0
    names = {id(p): n for n, p in model.named_parameters()}
    stem = [g for g in opt.param_groups if any(names[id(p)] == 'pos_embed' for p in g['params'])]
    assert len(stem) == 1 and stem[0]['lr_scale'] == scales[0]  # the stem gets the most decayed rate


@pytest.mark.parametrize('layer_decay', [None, 0.75])
@pytest.mark.parametrize('name', ['gfnet_ti', 'gfnet_h_ti'])
def test_pos_embed_outside_weight_decay(name, layer_decay):
    """no_weight_decay() is honoured by timm's optimizer factory: pos_embed (a 3-D tensor, which timm would decay)
    is in a group without weight decay; filters, linear and conv weights are decayed, biases and norms not."""
    from timm.optim import create_optimizer_v2
    model = timm.create_model(name)
    assert model.no_weight_decay() == {'pos_embed'}
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=layer_decay)
    decay = {id(p): g['weight_decay'] for g in opt.param_groups for p in g['params']}
    for n, p in model.named_parameters():
        expected = 0. if n == 'pos_embed' or p.ndim <= 1 else 0.05
        assert decay[id(p)] == expected, (n, decay[id(p)])


@pytest.mark.parametrize('name', TWO)
def test_torchscript(name):
    with timm.set_scriptable(True):
        model = timm.create_model(name).eval()
    x = _input(model)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['iso', 'pyr'])
def test_torchscript_matmul_and_dynamic_filters(kind):
    """TorchScript with the matmul filter, and with dynamic sizes (bilinearly resampled filters and pos_embed) at a
    size the model was not built for: the scripted model computes what the eager one does."""
    name, args = ('gfnet_ti', dict(depth=2, embed_dim=32)) if kind == 'iso' else \
        ('gfnet_h_ti', dict(depth=(1, 1, 1, 1), embed_dim=(8, 16, 16, 32)))
    torch.manual_seed(0)
    with timm.set_scriptable(True):
        matmul = timm.create_model(name, img_size=64, filter_backend='matmul', **args).eval()
        dynamic = timm.create_model(name, img_size=64, dynamic_img_size=True, dynamic_img_pad=True, **args).eval()
    fft = timm.create_model(name, img_size=64, filter_backend='fft', **args).eval()
    fft.load_state_dict(matmul.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        scripted = torch.jit.script(matmul)
        # measured: at most 3e-8 from eager matmul and from the fft reference (logits up to 0.3)
        torch.testing.assert_close(scripted(x), matmul(x), rtol=0, atol=1e-7)
        torch.testing.assert_close(scripted(x), fft(x), rtol=0, atol=1e-7)
        scripted = torch.jit.script(dynamic)
        for size in ((64, 64), (96, 48), (70, 45)):
            y = torch.randn(2, 3, *size)
            torch.testing.assert_close(scripted(y), dynamic(y), rtol=0, atol=1e-7, msg=lambda m, s=size: f'{s}: {m}')


@pytest.mark.parametrize('name', TWO)
def test_fx_feature_extraction(name):
    """timm's FX feature extraction (GlobalFilter is a leaf) traces and reproduces the model exactly."""
    from timm.models import create_feature_extractor, get_graph_node_names
    model = timm.create_model(name).eval()
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = _input(model)
    with torch.no_grad():
        assert torch.equal(next(iter(fx_model(x).values())), model(x))
    fx_features = timm.create_model(name, features_only=True, feature_cls='fx', dynamic_img_size=False).eval()
    with torch.no_grad():
        outs = fx_features(x)
    # FX taps give the blocks' native channels-last maps, as for timm's other NHWC models
    assert len(outs) == 4 and all(o.shape[-1] == c for o, c in zip(outs, fx_features.feature_info.channels()))


@pytest.mark.parametrize('name', ['gfnet_ti', 'gfnet_h_ti'])
def test_torch_compile(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_global_filter_standalone():
    from timm_gfnet import GlobalFilter
    layer = GlobalFilter(32, grid_size=(6, 10))
    grid = torch.randn(2, 6, 10, 32)
    out = layer(grid)
    assert out.shape == grid.shape
    torch.testing.assert_close(layer(grid.reshape(2, 60, 32), spatial_size=(6, 10)), out.reshape(2, 60, 32))
    # a circular convolution: shifting the input grid shifts the output the same way
    torch.testing.assert_close(layer(grid.roll(2, dims=1)), out.roll(2, dims=1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match='6x10 token grid and got 7x10'):
        layer(torch.randn(1, 7, 10, 32))
    dynamic = GlobalFilter(32, grid_size=(6, 10), dynamic_size=True)
    assert dynamic(torch.randn(1, 7, 9, 32)).shape == (1, 7, 9, 32)


@pytest.mark.parametrize('name', ['gfnet_ti', 'gfnet_h_ti'])
def test_hooks_see_exactly_what_a_layer_returned(name):
    """A forward hook that keeps fc1's output (activation capture, probing) sees fc1's output, not GELU(fc1): no
    module changes a tensor after returning it, in eager inference too."""
    model = timm.create_model(name, depth=(1, 1, 1, 1) if 'h_' in name else 2, img_size=64).eval()
    fc1 = model.get_submodule('stages.0.blocks.0.mlp.fc1' if 'h_' in name else 'blocks.0.mlp.fc1')
    seen = {}

    def keep(module, args, output):
        seen['input'], seen['output'] = args[0], output

    handle = fc1.register_forward_hook(keep)
    with torch.inference_mode():
        model(torch.randn(2, 3, 64, 64))
    handle.remove()
    with torch.inference_mode():
        assert torch.equal(seen['output'], fc1(seen['input']))


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_parity_with_authors(name, tmp_path):
    """An authors'-format file (training state, argparse.Namespace, a decoy EMA) through `pretrained=True` with their
    format's reader (`custom_load`, what the registered links use): their logits and pre-logits (reference data from
    their code) to the last bit."""
    path = write_authors_checkpoint(name, tmp_path / 'checkpoint.pth', ddp=name in ('gfnet_s', 'gfnet_h_s'))
    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), custom_load=True)).eval()
    reference = expected()
    x = input_batch()
    torch.testing.assert_close(x, reference['images_224'], rtol=0, atol=0)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    # measured here: equal to the last bit; a LayerNorm eps of 1e-5 instead of the authors' 1e-6 moves the logits
    # by 3e-5: a few float32 ulps of the logits' scale (~2) is the bound that bites
    torch.testing.assert_close(logits, reference[f'{name}.logits'], rtol=0, atol=2e-6)
    torch.testing.assert_close(pre_logits, reference[f'{name}.pre_logits'], rtol=0, atol=2e-6)


@pytest.mark.parametrize('name,stride', [('gfnet_ti', 16), ('gfnet_h_ti', 32)])
def test_output_stride(name, stride):
    """Segmentation libraries pass output_stride (smp's DeepLabV3+ 16): the model's own stride is accepted, any
    other is refused naming what it supports."""
    assert timm.create_model(name, output_stride=stride, features_only=True).feature_info.reduction()[-1] == stride
    other = 8 if stride == 16 else 16
    with pytest.raises(ValueError, match=rf'output_stride={other} is not supported: .* fixed output stride of '
                                         rf'{stride} .*pass output_stride={stride} or leave it out'):
        timm.create_model(name, output_stride=other)


@pytest.mark.parametrize('name', TWO)
def test_fastai_vision_learner(name):
    """fastai's real entry point builds a learner from the timm name and trains one step: it pools what the model
    returns as it should (the cfgs declare no pool_size, as ViT's)."""
    fastai_vision = pytest.importorskip('fastai.vision.all')
    rng = np.random.default_rng(0)
    images = [fastai_vision.PILImage.create(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    dls = fastai_vision.DataBlock(
        blocks=(fastai_vision.ImageBlock, fastai_vision.CategoryBlock), get_items=lambda _: list(range(4)),
        get_x=lambda i: images[i], get_y=lambda i: 'ab'[i % 2], splitter=fastai_vision.IndexSplitter([3]),
    ).dataloaders(None, bs=2, num_workers=0, device='cpu')
    learn = fastai_vision.vision_learner(
        dls, name, pretrained=False, img_size=64, depth=(1, 1, 1, 1) if 'h_' in name else 2)
    with torch.no_grad():
        out = learn.model.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    learn.fit(1)  # a training step through fastai's loop


TINY = {
    'iso': ('gfnet_ti', dict(depth=2, embed_dim=32)),  # patch 16, one stride
    'pyr': ('gfnet_h_ti', dict(depth=(1, 1, 1, 1), embed_dim=(8, 16, 24, 32))),  # patch 4, strides 4 to 32
}


def _tiny(kind: str, **kwargs) -> torch.nn.Module:
    name, args = TINY[kind]
    return timm.create_model(name, **dict(args, **kwargs)).eval()


FLOAT_ONLY = ('GFNet takes floating-point images: convert with x.float() and normalise (the transforms of '
              'timm.data.create_transform do both).')
# (case, model kwargs, input shape and dtype, error type, exact message)
TENSOR_CASES = [
    ('one image without batch', {}, (3, 224, 224), torch.float32, ValueError,
     'GFNet takes a (B, C, H, W) batch of images, got shape [3, 224, 224]: use x.unsqueeze(0) for one image.'),
    ('rank 5', {}, (1, 1, 3, 224, 224), torch.float32, ValueError,
     'GFNet takes a (B, C, H, W) batch of images, got shape [1, 1, 3, 224, 224]: use x.unsqueeze(0) for one image.'),
    ('RGBA image', {}, (1, 4, 224, 224), torch.float32, ValueError,
     'GFNet was created with in_chans=3 and got shape [1, 4, 224, 224]: for 4-channel images create the model with '
     'in_chans=4.'),
    ('channels-last image', {}, (1, 224, 224, 3), torch.float32, ValueError,
     'GFNet was created with in_chans=3 and got shape [1, 224, 224, 3]: it looks channels-last: use '
     'x.permute(0, 3, 1, 2).'),
    ('uint8 image', {}, (1, 3, 224, 224), torch.uint8, ValueError, FLOAT_ONLY),
    ('bool image', {}, (1, 3, 224, 224), torch.bool, ValueError, FLOAT_ONLY),
    # PatchEmbed's own (timm's) checks
    ('other size, fixed-size model', {}, (1, 3, 200, 256), torch.float32, AssertionError,
     "Input height (200) doesn't match model (224)."),
    ('not a multiple of the patch', dict(dynamic_img_size=True), (1, 3, 230, 224), torch.float32, AssertionError,
     'Input height (230) should be divisible by patch size'),
    ('empty image, dynamic padding', dict(dynamic_img_size=True, dynamic_img_pad=True), (1, 3, 0, 224),
     torch.float32, ValueError, 'GFNet takes images of at least 1x1 (its largest stride), got 0x224'),
]


@pytest.mark.parametrize('kind', list(TINY))
@pytest.mark.parametrize('case,kwargs,shape,dtype,error,message', TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_bad_tensor(kind, case, kwargs, shape, dtype, error, message):
    model = _tiny(kind, **kwargs)
    x = torch.rand(*shape).to(dtype)
    with torch.no_grad():
        for forward in (model, model.forward_intermediates):  # features_only backbones check the same way
            with pytest.raises(error) as e:
                forward(x)
            assert str(e.value).startswith(message) and '\n' not in str(e.value)


def test_smaller_than_the_largest_stride():
    """Hierarchical models downsample to stride 32: 16x16 passes the patch (4) and would crash in stage 4; pruned to
    stride 16, 16x16 is fine; with dynamic padding any size from 1x1 works."""
    model = _tiny('pyr', dynamic_img_size=True)
    with pytest.raises(ValueError, match=r'at least 32x32 \(its largest stride\), got 16x16: .*dynamic_img_pad=True'):
        model(torch.rand(1, 3, 16, 16))
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1000)
    backbone = timm.create_model('gfnet_h_ti', features_only=True, out_indices=(2,), dynamic_img_pad=False,
                                 **TINY['pyr'][1]).eval()
    assert backbone(torch.rand(1, 3, 16, 16))[0].shape == (1, 24, 1, 1)
    with pytest.raises(ValueError, match=r'at least 16x16 \(its largest stride\), got 8x8'):
        backbone(torch.rand(1, 3, 8, 8))
    for kind in TINY:
        padded = _tiny(kind, dynamic_img_size=True, dynamic_img_pad=True)
        with torch.no_grad():
            for size in ((1, 1), (3, 5), (17, 33)):
                out = padded(torch.rand(2, 3, *size))
                assert out.shape == (2, 1000) and torch.isfinite(out).all(), size


@pytest.mark.parametrize('kind', list(TINY))
def test_floating_dtypes_and_empty_batch(kind):
    """float64 input to a float32 model is torch's own clear error; autocast and a float64 model work; an empty
    batch gives an empty output, as nn.Linear does."""
    model = _tiny(kind)
    with pytest.raises(RuntimeError, match=r'Input type \(double\) and bias type \(float\) should be the same'):
        model(torch.rand(1, 3, 224, 224, dtype=torch.float64))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 224, 224))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x.float())
        out = model.double()(x)
        assert model(x[:0]).shape == (0, 1000)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=1e-4, atol=1e-4)


# ---- any resolution: the authors' recipes, computed here from the raw tensors with torch's interpolate

@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp('ckpt')
    return {v: str(write_authors_checkpoint(v, d / f'{v}.pth')) for v in TWO}


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


def _grids(name: str, h: int, w: int, pad: bool) -> List[Tuple[int, int]]:
    """Token grid of every block, in block order, from the authors' constructor arguments: the patch grid, and for
    the hierarchical models each further stage at half the size of the one before (rounded up when padded)."""
    args = VARIANTS[name.replace('_', '-')]['constructor']
    depths = args['depth'] if isinstance(args['depth'], list) else [args['depth']]
    p = args['patch_size']
    div = (lambda a, b: -(-a // b)) if pad else (lambda a, b: a // b)
    return [(div(h, p * 2 ** i), div(w, p * 2 ** i)) for i, d in enumerate(depths) for _ in range(d)]


@pytest.mark.parametrize('name,size,pad', [
    ('gfnet_ti', 384, False), ('gfnet_ti', (224, 320), False), ('gfnet_h_ti', 288, False), ('gfnet_ti', 230, True)])
def test_pretrained_at_another_size(name, size, pad, checkpoints):
    """Fine-tuning at another size: pos_embed and every filter equal the authors' recipe applied to the raw
    checkpoint tensors. With dynamic_img_pad a fixed size that is not a multiple of the patch gets the padded
    (rounded-up) grids: 230 -> 15x15 tokens."""
    model = timm.create_model(name, pretrained=True, img_size=size, dynamic_img_pad=pad,
                              pretrained_cfg_overlay=dict(file=checkpoints[name], custom_load=True)).eval()
    h, w = (size, size) if isinstance(size, int) else size
    grids = _grids(name, h, w, pad)
    patch = 16 if name == 'gfnet_ti' else 4
    src = authors_state_dict(name)
    torch.testing.assert_close(
        model.pos_embed, _authors_pos_embed(src['pos_embed'], (224 // patch, 224 // patch), grids[0]),
        rtol=0, atol=1e-6)  # measured: bit-identical
    ours = [m.complex_weight for m in model.modules() if isinstance(m, GlobalFilter)]
    theirs = [v for k, v in src.items() if k.endswith('filter.complex_weight')]  # the authors' block order
    assert len(ours) == len(theirs) == len(grids)
    for i, (a, b, (gh, gw)) in enumerate(zip(ours, theirs, grids)):
        expected = _authors_filter(b, (gh, gw // 2 + 1), 'bicubic')
        torch.testing.assert_close(a, expected, rtol=0, atol=1e-6, msg=lambda m, i=i: f'filter {i}: {m}')
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


TINY_DENSE = {
    'gfnet_ti': dict(depth=2, embed_dim=32),
    'gfnet_h_ti': dict(depth=(1, 1, 1, 1), embed_dim=(8, 16, 16, 32)),
}


@pytest.mark.parametrize('size', [(128, 128), (160, 96), (96, 288), (64, 64)])
@pytest.mark.parametrize('name', list(TINY_DENSE))
def test_dynamic_size_is_the_authors_dense_recipe(name, size):
    """A dynamic-size model at another size computes what a fixed-size model of that size computes with the
    filters resampled bilinearly (align_corners=True) and pos_embed bicubically, as the authors do for dense
    prediction (at its own size, 128, what the fixed model computes); in training too, where the resampling is
    inside the autograd graph and gradients reach the stored filters."""
    torch.manual_seed(0)
    base = timm.create_model(name, img_size=128, dynamic_img_size=True, filter_backend='fft', **TINY_DENSE[name])
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, GlobalFilter):
                m.complex_weight.normal_()  # O(1) filters: a wrong resampling shows in the outputs
    sized = timm.create_model(name, img_size=size, filter_backend='fft', **TINY_DENSE[name]).eval()
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
        expected = sized.eval().forward_features(x)
        torch.testing.assert_close(base.eval().forward_features(x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(base.forward_features(x), expected, rtol=0, atol=1e-6)  # a second call: the same
    features = base.train().forward_features(x)
    torch.testing.assert_close(features, sized.train().forward_features(x), rtol=0, atol=1e-6)
    features.square().mean().backward()
    assert all(m.complex_weight.grad.abs().sum() > 0 for m in base.modules() if isinstance(m, GlobalFilter))


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
        # measured: up to 2e-7 for the pyramid (its residual stream is stored channels-last, by hand it is a permuted
        # view: another summation order in the kernels), bit-identical for the isotropic models
        torch.testing.assert_close(model(x), by_hand(model, x), rtol=0, atol=1e-6)
    with pytest.raises(AssertionError, match=rf"^Input height \(224\) doesn't match model \({size[0]}\)"):
        model(torch.randn(1, 3, 224, 224))


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


# ---- property-based fuzzing: every case either gives finite logits, or the error the documented rules predict

# stable in CI: the same examples every run, no example database, no timing-based failures
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
FUZZ = {
    'iso': ('gfnet_ti', dict(depth=1, embed_dim=16), 16, 16),  # name, args, patch, largest stride
    'pyr': ('gfnet_h_ti', dict(depth=(1, 1, 1, 1), embed_dim=(8, 8, 16, 16)), 4, 32),
}


def budget(ci: int, slow: int):
    return pytest.mark.parametrize('examples', [ci, pytest.param(slow, marks=pytest.mark.slow)], ids=['ci', 'slow'])


@pytest.fixture(scope='module')
def fuzz_models():
    """One dynamic-size model per family, padding and channel count (built once: the cases only vary inputs)."""
    torch.manual_seed(0)
    return {(kind, pad, c): timm.create_model(name, num_classes=5, in_chans=c, dynamic_img_size=True,
                                              dynamic_img_pad=pad, **args).eval()
            for kind, (name, args, _, _) in FUZZ.items() for pad in (False, True) for c in (1, 3, 4)}


@budget(50, 500)
def test_models_any_size(examples, fuzz_models):
    """Dynamic-size models over random sizes: valid sizes give finite logits that are the same image by image and
    for both filter backends; the others exactly the error the rules give (PatchEmbed's for a partial patch, ours for
    an image smaller than the largest stride)."""
    @settings(max_examples=examples, **SETTINGS)
    @given(kind=st.sampled_from(list(FUZZ)), B=st.integers(1, 2), in_chans=st.sampled_from([1, 3, 4]),
           H=st.integers(1, 72), W=st.integers(1, 72), pad=st.booleans())
    def check(kind, B, in_chans, H, W, pad):
        _, _, patch, stride = FUZZ[kind]
        model = fuzz_models[(kind, pad, in_chans)]
        x = torch.randn(B, in_chans, H, W)
        with torch.no_grad():
            # smaller than a largest stride beyond the patch: ours (checked first); a partial patch: PatchEmbed's
            if not pad and min(H, W) < stride and stride > patch:
                with pytest.raises(ValueError, match=rf'^GFNet takes images of at least {stride}x{stride} '):
                    model(x)
            elif not pad and (H % patch or W % patch):
                with pytest.raises(AssertionError, match=r'should be divisible by patch size'):
                    model(x)
            else:
                outs = []
                for backend in ('fft', 'matmul'):
                    set_filter_backend(model, backend)
                    outs.append(model(x))
                    torch.testing.assert_close(model(x[-1:]), outs[-1][-1:], rtol=1e-4, atol=1e-5)
                assert outs[0].shape == (B, 5) and torch.isfinite(outs[0]).all()
                torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)

    check()


def _expected_error(shape: list, dtype: torch.dtype) -> str:
    """The documented order of the input checks, as a spec independent of the code."""
    if len(shape) != 4:
        return 'GFNet takes a (B, C, H, W) batch of images'
    if shape[1] != 3:
        return 'GFNet was created with in_chans=3'
    if not dtype.is_floating_point:
        return 'GFNet takes floating-point images'
    if 0 in shape[2:]:
        return 'GFNet takes images of at least 1x1'
    return ''


@budget(100, 1000)
def test_models_any_tensor(examples, fuzz_models):
    """Any rank, size (including zero) and dtype: finite logits (an empty batch gives an empty output, as nn.Linear
    does), or the ValueError the rules predict."""
    @settings(max_examples=examples, **SETTINGS)
    # half of the draws a float (B, 3, H, W) batch, so that the deeper checks and the valid cases are reached
    @given(kind=st.sampled_from(list(FUZZ)), channels_right=st.booleans(),
           shape=st.lists(st.integers(0, 6), min_size=4, max_size=4) | st.lists(st.integers(0, 6), max_size=5),
           dtype=st.just(torch.float32) | st.sampled_from([torch.uint8, torch.int64, torch.bool]))
    def check(kind, channels_right, shape, dtype):
        if channels_right and len(shape) > 1:
            shape[1] = 3
        x = torch.zeros(shape).to(dtype)
        expected = _expected_error(shape, dtype)
        model = fuzz_models[(kind, True, 3)]
        with torch.no_grad():
            if expected:
                with pytest.raises(ValueError, match=f'^{re.escape(expected)}'):
                    model(x)
            else:
                out = model(x)
                assert out.shape == (shape[0], 5) and torch.isfinite(out).all()

    check()

"""The timm model contract for every GFNet variant, as timm's own tests/test_models.py checks it for its models."""
import math
import re
from collections import Counter
from typing import Dict, List

import numpy as np
import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim

from reference import MODEL_NAMES, VARIANTS, expected, input_batch, write_authors_checkpoint

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

"""The timm model contract for every GFNet variant, as timm's own tests/test_models.py checks it for its models."""
import math
import re
from collections import Counter
from typing import Dict, List

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim

from reference import MODEL_NAMES, VARIANTS

HIERARCHICAL = [n for n in MODEL_NAMES if n.startswith('gfnet_h_')]


def _input(model: torch.nn.Module, batch_size: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, *model.pretrained_cfg['input_size'])


def test_registry():
    assert sorted(timm.list_models('gfnet*')) == sorted(MODEL_NAMES)
    assert sorted(timm.list_pretrained('gfnet*')) == sorted(f'{n}.in1k' for n in MODEL_NAMES)
    assert set(timm.list_models(module='gfnet')) == set(MODEL_NAMES)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_param_count_equals_authors(name):
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[name.replace('_', '-')]['num_params']


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_layer_norms_are_the_authors(name):
    """Every LayerNorm has the authors' eps (their constructor's `norm_layer`, recorded in tests/data); a wrong eps
    moves the logits by less than the parity tests' tolerance, so it is checked here directly."""
    spec = VARIANTS[name.replace('_', '-')]['constructor']['norm_layer']
    eps = float(re.fullmatch(r'LayerNorm\(eps=(.+)\)', spec).group(1))
    model = timm.create_model(name)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * len(_blocks(model)) + 1  # norm1 and norm2 per block, and the final norm
    assert {m.eps for m in norms} == {eps}


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(f'{name}.in1k').to_dict()
    assert cfg['url'] == VARIANTS[name.replace('_', '-')]['published']['url']
    assert cfg['input_size'] == (3, 224, 224) and cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.875
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg['license'] == 'mit'
    model = timm.create_model(name)
    data_cfg = timm.data.resolve_model_data_config(model)
    assert data_cfg['input_size'] == (3, 224, 224) and data_cfg['crop_pct'] == 0.875


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_default_cfgs_and_head(name):
    """forward_features is an unpooled NHWC grid of pool_size; head reset / pooling removal as timm expects."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    spatial, feat = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    assert model.output_fmt == 'NHWC'
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert (features.shape[spatial[0]], features.shape[spatial[1]]) == cfg['pool_size']
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


@pytest.mark.parametrize('name', MODEL_NAMES)
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


@pytest.mark.parametrize('name', MODEL_NAMES)
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


@pytest.mark.parametrize('name', MODEL_NAMES)
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


@pytest.mark.parametrize('name', MODEL_NAMES)
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


@pytest.mark.parametrize('name', MODEL_NAMES)
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


@pytest.mark.parametrize('name', MODEL_NAMES)
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

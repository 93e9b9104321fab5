"""Any resolution: resampling at creation (the authors' fine-tuning recipe) and dynamic sizes at run time."""
import pytest
import timm
import torch
import torch.nn.functional as F

from reference import authors_state_dict, input_batch, write_authors_checkpoint
from timm_gfnet import resample_filter

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp('ckpt')
    return {v: str(write_authors_checkpoint(v, d / f'{v}.pth')) for v in ('gfnet_ti', 'gfnet_h_ti')}


def test_resample_filter_follows_authors_recipe():
    w = torch.randn(14, 8, 5, 2)
    assert resample_filter(w, (14, 14)) is w  # same size: the identity, not a copy
    assert resample_filter(w, (14, 15)) is w  # 15 // 2 + 1 == 8: the same spectrum size
    out = resample_filter(w, (24, 24))
    assert out.shape == (24, 13, 5, 2)
    # real and imaginary parts as channels, bicubic, align_corners=True: corners are kept exactly
    ref = F.interpolate(w.reshape(1, 14, 8, 10).permute(0, 3, 1, 2), size=(24, 13), mode='bicubic',
                        align_corners=True).permute(0, 2, 3, 1).reshape(24, 13, 5, 2)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out[0, 0], w[0, 0])
    torch.testing.assert_close(out[-1, -1], w[-1, -1])


@pytest.mark.parametrize('name,size', [('gfnet_ti', 384), ('gfnet_ti', (224, 320)), ('gfnet_h_ti', 288)])
def test_pretrained_at_another_size(name, size, checkpoints):
    model = timm.create_model(
        name, pretrained=True, img_size=size, pretrained_cfg_overlay=dict(file=checkpoints[name])).eval()
    h, w = (size, size) if isinstance(size, int) else size
    patch = 16 if name == 'gfnet_ti' else 4
    assert model.pos_embed.shape[1] == (h // patch) * (w // patch)
    first = model.blocks[0] if name == 'gfnet_ti' else model.stages[0].blocks[0]
    assert first.filter.complex_weight.shape[:2] == (h // patch, (w // patch) // 2 + 1)
    src = authors_state_dict(name)
    src_pos = src['pos_embed'].reshape(1, 224 // patch, 224 // patch, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(src_pos, size=(h // patch, w // patch), mode='bicubic', align_corners=False)
    torch.testing.assert_close(model.pos_embed, pos.permute(0, 2, 3, 1).reshape(1, -1, src_pos.shape[1]))
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_224_to_384_to_224_is_well_formed(checkpoints, tmp_path):
    from safetensors.torch import save_file
    big = timm.create_model(
        'gfnet_ti', pretrained=True, img_size=384, pretrained_cfg_overlay=dict(file=checkpoints['gfnet_ti']))
    save_file(big.state_dict(), str(tmp_path / 'ti384.safetensors'))
    back = timm.create_model(
        'gfnet_ti', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'ti384.safetensors'))).eval()
    original = timm.create_model(
        'gfnet_ti', pretrained=True, pretrained_cfg_overlay=dict(file=checkpoints['gfnet_ti'])).eval()
    assert back.pos_embed.shape == original.pos_embed.shape
    x = input_batch()[:1]
    with torch.no_grad():
        a, b = back(x), original(x)
    assert torch.isfinite(a).all()
    # resampling is smooth: the round trip stays close to where it started (not bit-exact: bicubic both ways)
    assert F.cosine_similarity(a, b).item() > 0.9


@pytest.mark.parametrize('name', ['gfnet_ti', 'gfnet_h_ti'])
def test_dynamic_size(name, checkpoints):
    fixed = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=checkpoints[name])).eval()
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


def test_fixed_size_model_refuses_other_sizes():
    model = timm.create_model('gfnet_ti')
    with pytest.raises(ValueError, match=r'created for 224x224 images and got 256x224'):
        model(torch.randn(1, 3, 256, 224))


def test_dynamic_filter_cache_is_bounded():
    model = timm.create_model('gfnet_ti', depth=2, dynamic_img_size=True).eval()
    layer = model.blocks[0].filter
    with torch.no_grad():
        for side in range(64, 64 + 16 * 20, 16):
            model(torch.randn(1, 3, side, side))
    assert 0 < len(layer._cache) <= layer.cache_size
    # training resamples inside the autograd graph: nothing cached, gradients reach the stored filter
    model.train()
    model(torch.randn(1, 3, 96, 96)).sum().backward()
    assert layer.complex_weight.grad is not None and layer.complex_weight.grad.abs().sum() > 0

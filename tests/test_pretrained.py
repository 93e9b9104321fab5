"""`pretrained=True` gives exactly the authors' model: parity with their outputs, adaptation, safe loading."""
import pytest
import timm
import torch

from reference import MODEL_NAMES, authors_state_dict, expected, input_batch, write_authors_checkpoint


@pytest.fixture(scope='module')
def reference_outputs():
    return expected()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_parity_with_authors(name, tmp_path, reference_outputs):
    """An authors'-format file (training state, argparse.Namespace, a decoy EMA) through the public path."""
    path = write_authors_checkpoint(name, tmp_path / 'checkpoint.pth', ddp=name in ('gfnet_s', 'gfnet_h_s'))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = input_batch()
    torch.testing.assert_close(x, reference_outputs['images_224'], rtol=0, atol=0)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    # measured here: equal to the last bit; the contract is 1e-4, and a LayerNorm eps of 1e-5 instead of the
    # authors' 1e-6 moves the logits by 3e-5: a few float32 ulps of the logits' scale (~2) is the bound that bites
    torch.testing.assert_close(logits, reference_outputs[f'{name}.logits'], rtol=0, atol=2e-6)
    torch.testing.assert_close(pre_logits, reference_outputs[f'{name}.pre_logits'], rtol=0, atol=2e-6)


def test_pretrained_adapts_classes_and_channels(tmp_path):
    path = write_authors_checkpoint('gfnet_h_ti', tmp_path / 'h_ti.pth')
    source = authors_state_dict('gfnet_h_ti')
    model = timm.create_model(
        'gfnet_h_ti', pretrained=True, num_classes=10, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.out_features == 10
    stem = model.patch_embed.proj.weight
    assert stem.shape == (64, 1, 4, 4)
    torch.testing.assert_close(stem, source['patch_embed.0.proj.weight'].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.stages[2].blocks[0].filter.complex_weight,
                               source['blocks.2.0.filter.complex_weight'])
    assert model(torch.randn(1, 1, 224, 224)).shape == (1, 10)


def test_our_own_format_passes_through(tmp_path):
    """A state_dict saved from our model (safetensors) loads unchanged."""
    from safetensors.torch import save_file
    model = timm.create_model('gfnet_ti')
    save_file(model.state_dict(), str(tmp_path / 'model.safetensors'))
    loaded = timm.create_model(
        'gfnet_ti', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors')))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_other_variant_is_refused_by_name(tmp_path):
    path = write_authors_checkpoint('gfnet_xs', tmp_path / 'xs.pth')
    with pytest.raises(ValueError, match=r'gfnet_xs \(12 blocks of width 384\); gfnet_s has 19 blocks of width 384'):
        timm.create_model('gfnet_s', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_features_only_with_pretrained(tmp_path):
    path = write_authors_checkpoint('gfnet_h_ti', tmp_path / 'h_ti.pth')
    backbone = timm.create_model(
        'gfnet_h_ti', pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    full = timm.create_model('gfnet_h_ti', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = input_batch()[:1]
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[-1], full.forward_intermediates(x, intermediates_only=True)[-1])
    assert 'state_dict' not in backbone.pretrained_cfg and 'state_dict' not in full.pretrained_cfg

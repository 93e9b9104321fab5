"""`timm-gfnet viz`: the full spectrum is rebuilt from the stored half exactly, and the picture is written."""
import pytest
import torch

from timm_gfnet.cli import main
from timm_gfnet.viz import filter_spectra, full_magnitude


@pytest.mark.parametrize('h,w', [(6, 10), (7, 9), (14, 14), (5, 1)])
def test_full_magnitude_is_the_fft2_of_a_real_kernel(h, w):
    kernel = torch.randn(h, w, 3, dtype=torch.float64)
    half = torch.view_as_real(torch.fft.rfft2(kernel, dim=(0, 1)))  # the filter of a real spatial kernel
    expected = torch.fft.fftshift(torch.fft.fft2(kernel, dim=(0, 1)).abs(), dim=(0, 1)).float()
    torch.testing.assert_close(full_magnitude(half, (h, w)), expected)


def test_viz_cli(tmp_path, capsys):
    import timm
    out = tmp_path / 'filters.png'
    assert main(['viz', '--model', 'gfnet_h_ti', '--out', str(out), '--channels', '2', '--log']) == 0
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and 'wrote' in capsys.readouterr().out
    spectra = filter_spectra(timm.create_model('gfnet_ti'))
    assert len(spectra) == 12 and spectra[0][0] == 'blocks.0.filter' and spectra[0][1].shape == (1, 14, 14)
    with pytest.raises(ValueError, match='no GlobalFilter layers'):
        filter_spectra(torch.nn.Linear(2, 2))


def test_channels_are_checked_against_the_model(tmp_path, capsys):
    assert main(['viz', '--model', 'gfnet_ti', '--out', str(tmp_path / 'v.png'), '--channels', '999']) == 1
    assert capsys.readouterr().err == (
        'timm-gfnet viz: error: channels=999: the narrowest filter layer has 256 channels; pass 1 to 256, or leave '
        'it out for the mean over channels.\n')
    assert not (tmp_path / 'v.png').exists()

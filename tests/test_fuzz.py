"""Property-based fuzzing of the models: random sizes, dtypes and backends. Every case either gives finite logits
that agree across backends, or the ValueError predicted from the documented rules. A few hundred cases here; ten
times as many with `-m slow`. (The layer's fuzzing: tests/test_global_filter.py.)
"""
import re
from typing import List

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timm_gfnet import set_filter_backend

# the backends that compute the filter ('auto' chooses one of these); every case runs on each
BACKENDS: List[str] = ['fft', 'matmul']


# stable in CI: the same examples every run, no example database, no timing-based failures
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def budget(ci: int, slow: int):
    return pytest.mark.parametrize('examples', [ci, pytest.param(slow, marks=pytest.mark.slow)], ids=['ci', 'slow'])


@st.composite
def _shapes(draw, dims: st.SearchStrategy, channels: int, axis: int) -> list:
    """Random rank and sizes; the channel axis often right, so that the deeper checks are reached."""
    shape = draw(st.lists(dims, min_size=0, max_size=5))
    if len(shape) > max(axis, -axis - 1) and draw(st.booleans()):
        shape[axis] = channels
    return shape


TINY = {
    'iso': ('gfnet_ti', dict(depth=1, embed_dim=16), 16, 16),  # name, args, patch, largest stride
    'pyr': ('gfnet_h_ti', dict(depth=(1, 1, 1, 1), embed_dim=(8, 8, 16, 16)), 4, 32),
}


@budget(50, 500)
def test_models_any_size(examples):
    """Dynamic-size models over random sizes: valid sizes give finite logits that are the same image by image and
    across backends; invalid ones (no dynamic padding) a ValueError, exactly when the rules say so."""
    @settings(max_examples=examples, **SETTINGS)
    @given(
        kind=st.sampled_from(list(TINY)), B=st.integers(1, 2), in_chans=st.integers(1, 4),
        H=st.integers(1, 72), W=st.integers(1, 72), pad=st.booleans(), seed=st.integers(0, 2 ** 16),
    )
    def check(kind, B, in_chans, H, W, pad, seed):
        name, args, patch, stride = TINY[kind]
        torch.manual_seed(seed)
        model = timm.create_model(name, num_classes=5, in_chans=in_chans, dynamic_img_size=True,
                                  dynamic_img_pad=pad, **args).eval()
        x = torch.randn(B, in_chans, H, W)
        valid = pad or (H % patch == 0 and W % patch == 0 and min(H, W) >= stride)
        outs = []
        for backend in BACKENDS:
            set_filter_backend(model, backend)
            with torch.no_grad():
                if not valid:
                    with pytest.raises(ValueError, match='^GFNet without dynamic_img_pad takes sizes that are'):
                        model(x)
                    return
                out = model(x)
            assert out.shape == (B, 5) and torch.isfinite(out).all()
            with torch.no_grad():
                torch.testing.assert_close(model(x[-1:]), out[-1:], rtol=1e-4, atol=1e-5)
            outs.append(out)
        for out in outs[1:]:
            torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-5)

    check()


@pytest.fixture(scope='module')
def padded_models():
    return {kind: timm.create_model(name, dynamic_img_size=True, dynamic_img_pad=True, **args).eval()
            for kind, (name, args, _, _) in TINY.items()}


def _expected_error(shape: list, dtype: torch.dtype) -> str:
    """The documented order of the input checks, as a spec independent of the code."""
    if len(shape) != 4:
        return 'GFNet takes a (B, C, H, W) batch of images'
    if shape[1] != 3:
        return 'GFNet was created with in_chans=3'
    if not dtype.is_floating_point:
        return 'GFNet takes floating-point images'
    if shape[0] == 0:
        return 'GFNet got an empty batch'
    if 0 in shape[2:]:
        return 'GFNet got an image of size'
    return ''


@budget(100, 1000)
def test_models_any_tensor(examples, padded_models):
    """Any rank, size (including zero) and dtype: finite logits, or the ValueError the rules predict."""
    @settings(max_examples=examples, **SETTINGS)
    @given(
        kind=st.sampled_from(list(TINY)),
        shape=_shapes(st.integers(0, 6), channels=3, axis=1),
        dtype=st.sampled_from([torch.float32, torch.uint8, torch.int32, torch.int64, torch.bool]),
    )
    def check(kind, shape, dtype):
        x = torch.zeros(shape).to(dtype)
        expected = _expected_error(shape, dtype)
        with torch.no_grad():
            if expected:
                with pytest.raises(ValueError, match=f'^{re.escape(expected)}'):
                    padded_models[kind](x)
            else:
                out = padded_models[kind](x)
                assert out.shape == (shape[0], 1000) and torch.isfinite(out).all()

    check()

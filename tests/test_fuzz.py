"""Property-based fuzzing of GlobalFilter and the models: random batch, channel and spatial sizes, dtypes and
backends. Every case either gives the right shape, finite and equal to an independent reference (and across
backends), or a clear ValueError predicted from the documented rules. A few hundred cases here; ten times as many
with `-m slow`.
"""
import re

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timm_gfnet import GlobalFilter

try:  # compute backends of the filter, where this version has them
    from timm_gfnet.global_filter import FILTER_BACKENDS, set_filter_backend
    BACKENDS = [b for b in FILTER_BACKENDS if b != 'auto']
except ImportError:
    BACKENDS, set_filter_backend = ['fft'], None

torch.set_num_threads(1)

# stable in CI: the same examples every run, no example database, no timing-based failures
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def budget(ci: int, slow: int):
    return pytest.mark.parametrize('examples', [ci, pytest.param(slow, marks=pytest.mark.slow)], ids=['ci', 'slow'])


def _backend_kwargs(backend: str) -> dict:
    return {} if set_filter_backend is None else {'filter_backend': backend}


# relative error allowed against a float64 reference: the filter computes in float32 (fft) or the input's dtype
TOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The global filter from its definition, in float64: rfft2 (ortho), times the complex filter, irfft2."""
    H, W = x.shape[1], x.shape[2]
    y = torch.fft.rfft2(x.double(), dim=(1, 2), norm='ortho') * torch.view_as_complex(weight.double().contiguous())
    return torch.fft.irfft2(y, s=(H, W), dim=(1, 2), norm='ortho')


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@budget(150, 1500)
def test_global_filter_is_the_circular_convolution(examples):
    @settings(max_examples=examples, **SETTINGS)
    @given(
        B=st.integers(1, 3), C=st.integers(1, 12), H=st.integers(1, 12), W=st.integers(1, 12),
        grid=st.tuples(st.integers(1, 12), st.integers(1, 12)),
        dtype=st.sampled_from(list(TOL)), tokens=st.booleans(), seed=st.integers(0, 2 ** 16),
    )
    def check(B, C, H, W, grid, dtype, tokens, seed):
        torch.manual_seed(seed)
        dynamic = grid != (H, W)
        outs = {}
        for backend in BACKENDS:
            layer = GlobalFilter(C, grid_size=grid, dynamic_size=dynamic, **_backend_kwargs(backend))
            torch.manual_seed(seed)
            torch.nn.init.normal_(layer.complex_weight)  # O(1) outputs: relative errors are meaningful
            x = torch.randn(B, H, W, C).to(dtype)
            with torch.no_grad():
                out = layer(x.reshape(B, H * W, C), spatial_size=(H, W)).reshape(B, H, W, C) if tokens else layer(x)
                ref = _reference(x, layer.filter_for(H, W))
            assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
            assert _rel_err(out, ref) < TOL[dtype], (backend, _rel_err(out, ref))
            outs[backend] = out
        for backend, out in outs.items():  # the backends agree with each other as well as with the reference
            assert _rel_err(out, outs[BACKENDS[0]].double()) < 2 * TOL[dtype], backend

    check()


@st.composite
def _shapes(draw, dims: st.SearchStrategy, channels: int, axis: int) -> list:
    """Random rank and sizes; the channel axis often right, so that the deeper checks are reached."""
    shape = draw(st.lists(dims, min_size=0, max_size=5))
    if len(shape) > max(axis, -axis - 1) and draw(st.booleans()):
        shape[axis] = channels
    return shape


@budget(100, 1000)
def test_global_filter_bad_shapes_are_value_errors(examples):
    """Any rank / token count / spatial_size / channel count: the right output or a ValueError, nothing else.
    (Zero-size batches and grids: test_global_filter_empty_input.)"""
    @settings(max_examples=examples, **SETTINGS)
    @given(
        shape=_shapes(st.integers(1, 7), channels=4, axis=-1),
        spatial=st.none() | st.tuples(st.integers(1, 7), st.integers(1, 7)),
        dynamic=st.booleans(), backend=st.sampled_from(BACKENDS),
    )
    def check(shape, spatial, dynamic, backend):
        layer = GlobalFilter(4, grid_size=(3, 4), dynamic_size=dynamic, **_backend_kwargs(backend))
        x = torch.randn(shape)
        if x.dim() == 3:
            H, W = spatial if spatial is not None else (round(shape[1] ** 0.5),) * 2
        else:
            H, W = shape[1:3] if x.dim() == 4 else (0, 0)
        # a fixed filter takes the grids of its spectrum size: 3x4 and 3x5 both have 3x3 (as the authors' layer)
        valid = (x.dim() == 4 or (x.dim() == 3 and H * W == shape[1])) and shape[-1] == 4 and \
            (dynamic or (H, W // 2 + 1) == (3, 3))
        try:
            with torch.no_grad():
                out = layer(x, spatial_size=spatial) if x.dim() == 3 else layer(x)
        except ValueError as e:
            assert not valid, f'valid input refused: {e}'
            assert str(e).startswith('GlobalFilter ')
            return
        assert valid, f'{shape} {spatial} accepted'
        assert out.shape == x.shape and torch.isfinite(out).all()

    check()


@pytest.mark.parametrize('shape,dynamic,backend', [
    (shape, dynamic, backend)
    for shape, dynamic in [((0, 3, 4, 4), False), ((0, 5, 5, 4), True), ((1, 0, 4, 4), True), ((0, 12, 4), False)]
    for backend in BACKENDS
])
def test_global_filter_empty_input(shape, dynamic, backend):
    """An empty batch or grid: an empty output (as torch layers give) or a ValueError, not an error from MKL."""
    layer = GlobalFilter(4, grid_size=(3, 4), dynamic_size=dynamic, **_backend_kwargs(backend))
    x = torch.randn(*shape)
    try:
        out = layer(x, spatial_size=(3, 4)) if x.dim() == 3 else layer(x)
    except ValueError as e:
        assert str(e).startswith('GlobalFilter ')
    else:
        assert out.shape == x.shape


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
            if set_filter_backend is not None:
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

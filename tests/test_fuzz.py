"""Property-based fuzzing of GlobalFilter and the models: random batch, channel and spatial sizes, dtypes and
backends. Every case either gives the right shape, finite and equal to an independent reference (and across
backends), or a clear ValueError predicted from the documented rules. A few hundred cases here; ten times as many
with `-m slow`.
"""
import re
from typing import Dict, List, Tuple

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timm_gfnet import GlobalFilter, set_filter_backend

# the backends that compute the filter ('auto' chooses one of these); every case runs on each
BACKENDS: List[str] = ['fft', 'matmul']


# stable in CI: the same examples every run, no example database, no timing-based failures
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def budget(ci: int, slow: int):
    return pytest.mark.parametrize('examples', [ci, pytest.param(slow, marks=pytest.mark.slow)], ids=['ci', 'slow'])


# largest relative error allowed against the float64 reference, per backend and input dtype ('agree': between the
# backends): about 3x the largest measured over 1,500 cases (`python benchmarks/fuzz_errors.py 1500`, the slow run's
# count; the CI's 150 stay below that). fft computes in float32 whatever the input's dtype; matmul in the input's
# dtype (float16 / bfloat16: half-precision DFT matrices, float32 accumulation); dynamic sizes resample the filter in
# float32, hence float64's 1e-7s.
DTYPES: List[torch.dtype] = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL: Dict[str, Dict[torch.dtype, float]] = {
    'fft': {torch.float32: 2e-6, torch.float64: 2e-6, torch.bfloat16: 1.2e-2, torch.float16: 1.5e-3},
    'matmul': {torch.float32: 4e-6, torch.float64: 1.5e-6, torch.bfloat16: 3e-2, torch.float16: 5e-3},
    'agree': {torch.float32: 4e-6, torch.float64: 1.5e-6, torch.bfloat16: 3e-2, torch.float16: 5e-3},
}


def _expected_filter(weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The filter for an H x W grid from the documented rule, independent of GlobalFilter: the stored one when its
    spectrum size (H, W // 2 + 1) fits, else resampled as the authors do for dense prediction (bilinear,
    align_corners=True, real and imaginary parts as channels), here in float64."""
    h, wf, c, _ = weight.shape
    size = (H, W // 2 + 1)
    if (h, wf) == size:
        return weight.double()
    x = weight.double().reshape(1, h, wf, 2 * c).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode='bilinear', align_corners=True)
    return x.permute(0, 2, 3, 1).reshape(*size, c, 2)


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The global filter from its definition, in float64: rfft2 (ortho), times the complex filter, irfft2."""
    H, W = x.shape[1], x.shape[2]
    y = torch.fft.rfft2(x.double(), dim=(1, 2), norm='ortho') * torch.view_as_complex(weight.double().contiguous())
    return torch.fft.irfft2(y, s=(H, W), dim=(1, 2), norm='ortho')


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


CIRCULAR_CASES = dict(
    B=st.integers(1, 3), C=st.integers(1, 12), H=st.integers(1, 12), W=st.integers(1, 12),
    grid=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    dtype=st.sampled_from(DTYPES), tokens=st.booleans(), seed=st.integers(0, 2 ** 16),
)


def circular_errors(B: int, C: int, H: int, W: int, grid: Tuple[int, int], dtype: torch.dtype, tokens: bool,
                    seed: int) -> Dict[str, float]:
    """One case: {backend: relative error against the float64 reference, 'agree': largest between backends}."""
    dynamic = grid != (H, W)
    outs, errors = {}, {}
    for backend in BACKENDS:
        layer = GlobalFilter(C, grid_size=grid, dynamic_size=dynamic, filter_backend=backend)
        torch.manual_seed(seed)
        torch.nn.init.normal_(layer.complex_weight)  # O(1) outputs: relative errors are meaningful
        x = torch.randn(B, H, W, C).to(dtype)
        with torch.no_grad():
            out = layer(x.reshape(B, H * W, C), spatial_size=(H, W)).reshape(B, H, W, C) if tokens else layer(x)
            ref = _reference(x, _expected_filter(layer.complex_weight, H, W))
        assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
        errors[backend] = _rel_err(out, ref)
        outs[backend] = out
    errors['agree'] = max(_rel_err(out, outs[BACKENDS[0]].double()) for out in outs.values())
    return errors


@budget(150, 1500)
def test_global_filter_is_the_circular_convolution(examples):
    """Every backend equals the float64 FFT of the definition (with the filter resampled by the documented rule
    for other grids), and the backends agree with each other."""
    @settings(max_examples=examples, **SETTINGS)
    @given(**CIRCULAR_CASES)
    def check(dtype, **case):
        errors = circular_errors(dtype=dtype, **case)
        for what, err in errors.items():
            assert err < TOL[what][dtype], (what, errors)

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
        layer = GlobalFilter(4, grid_size=(3, 4), dynamic_size=dynamic, filter_backend=backend)
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


EMPTY_CASES: List[Tuple[tuple, bool, str]] = [  # (input shape, dynamic_size, expected: 'empty' or the error)
    ((0, 3, 4, 4), False, 'empty'),  # an empty batch: an empty output, as torch layers give
    ((0, 5, 5, 4), True, 'empty'),
    ((0, 12, 4), False, 'empty'),  # tokens, spatial_size (3, 4)
    ((1, 0, 4, 4), True, 'GlobalFilter got an empty 0x4 token grid'),  # an empty grid: a ValueError
    ((2, 3, 0, 4), False, 'GlobalFilter got an empty 3x0 token grid'),
]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape,dynamic,expected', EMPTY_CASES)
def test_global_filter_empty_input(shape, dynamic, expected, backend):
    """Documented: an empty batch gives an empty output of the input's shape, an empty token grid a ValueError
    (not an error from the FFT library)."""
    layer = GlobalFilter(4, grid_size=(3, 4), dynamic_size=dynamic, filter_backend=backend)
    x = torch.randn(*shape)
    run = (lambda: layer(x, spatial_size=(3, 4))) if x.dim() == 3 else (lambda: layer(x))
    if expected == 'empty':
        out = run()
        assert out.shape == x.shape and out.dtype == x.dtype
    else:
        with pytest.raises(ValueError, match=f'^{re.escape(expected)}'):
            run()


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

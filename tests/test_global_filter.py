"""The global filter layers (timm_gfnet/global_filter.py, filter_backends.py): 1-D, 2-D and 3-D in every layout,
both backends and the `auto` rule, against a float64 FFT of the definition computed here; resampling against
F.interpolate; errors; autocast, half-precision tensors, torch.compile, TorchScript, ONNX, torch.func; the global
switch and its environment variable."""
import copy
import importlib
import pickle
import threading
from typing import Dict, List, Tuple

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad, jvp, vmap
from torch.utils.flop_counter import FlopCounterMode

from reference import MODEL_NAMES, authors_state_dict, input_batch
from timm_gfnet import filter_backends
from timm_gfnet.filter_backends import clear_filter_caches, set_default_filter_backend
from timm_gfnet.gfnet import checkpoint_filter_fn
from timm_gfnet.global_filter import GlobalFilter, GlobalFilter1d, GlobalFilter3d, resample_filter, set_filter_backend

BACKENDS = ('fft', 'matmul')
# (class, fmt, size): even and odd last axes, a size-1 axis
LAYOUTS = [
    (GlobalFilter1d, 'NLC', (9,)), (GlobalFilter1d, 'NCL', (8,)),
    (GlobalFilter, 'NHWC', (5, 6)), (GlobalFilter, 'NCHW', (4, 7)),
    (GlobalFilter3d, 'NDHWC', (3, 4, 5)), (GlobalFilter3d, 'NCDHW', (2, 1, 6)),
]
IDS = [f'{c.__name__}-{fmt}' for c, fmt, _ in LAYOUTS]
LINEAR = {1: 'linear', 2: 'bilinear', 3: 'trilinear'}


def _reference(x: torch.Tensor, weight: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The definition in float64 (independent of the package): rfftn over the spatial axes, product, irfftn."""
    xl = x.double() if channels_last else x.double().movedim(1, -1)
    dims = list(range(1, xl.dim() - 1))
    y = torch.fft.rfftn(xl, dim=dims, norm='ortho') * torch.view_as_complex(weight.double().contiguous())
    y = torch.fft.irfftn(y, s=xl.shape[1:-1], dim=dims, norm='ortho')
    return y if channels_last else y.movedim(-1, 1)


def _interpolated(weight: torch.Tensor, size, mode: str) -> torch.Tensor:
    """The authors' resampling: real and imaginary parts as channels, F.interpolate with align_corners=True."""
    rank = weight.dim() - 2
    spec = (*size[:-1], size[-1] // 2 + 1)
    w = weight.reshape(*weight.shape[:rank], -1).movedim(-1, 0)[None]
    w = F.interpolate(w, size=spec, mode=mode, align_corners=True)[0].movedim(0, -1)
    return w.reshape(*spec, *weight.shape[rank:])


def _input(size, C, channels_last, B=2, dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, *size, C) if channels_last else (B, C, *size), generator=g, dtype=dtype)


def _layer(cls, fmt, size, C=3, **kwargs):
    layer = cls(C, size, fmt=fmt, **kwargs)
    with torch.no_grad():
        layer.complex_weight.normal_()  # O(1) outputs: absolute tolerances are meaningful
    return layer


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def _fft_ops(fn, *args) -> bool:
    """Whether fn(*args) runs an FFT op (torch's FLOP counter sees them: the package registers their formulas)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return any('_fft_' in str(op) for op in counter.get_flop_counts().get('Global', {}))


# ---- what the layer computes

@pytest.mark.parametrize('cls,fmt,size', LAYOUTS, ids=IDS)
def test_every_layout_is_the_float64_definition(cls, fmt, size):
    """float64 stays float64 on both backends: values and gradients to 1e-12 of the definition, gradcheck passes;
    float32 within its rounding (fft, matmul and auto)."""
    channels_last = fmt.endswith('C')
    layer = _layer(cls, fmt, size).double()
    x = _input(size, 3, channels_last)
    w = layer.complex_weight.detach().clone().requires_grad_()
    xr = x.clone().requires_grad_()
    ref = _reference(xr, w, channels_last)
    probe = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (ref * probe).sum().backward()
    for backend in BACKENDS:
        set_filter_backend(layer, backend).zero_grad()
        xg = x.clone().requires_grad_()
        out = layer(xg)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        (out * probe).sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.complex_weight.grad, w.grad, rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(layer, (x[:1].clone().requires_grad_(),))
    layer32 = layer.float()
    for backend in ('fft', 'matmul', 'auto'):
        with torch.no_grad():
            out32 = set_filter_backend(layer32, backend)(x.float())
        assert out32.dtype == torch.float32 and out32.shape == x.shape
        torch.testing.assert_close(out32.double(), ref.detach(), rtol=0, atol=5e-6)


def test_authors_signature_and_a_cnn_map():
    """`GlobalFilter(dim, h=14, w=8)` as in the authors' code, the shapes of every rank's filter, and a CNN map
    straight in with fmt='NCHW', equal to the rearrange-to-tokens route."""
    assert GlobalFilter1d(8, 11, fmt='NCL').complex_weight.shape == (6, 8, 2)
    assert GlobalFilter3d(8, (4, 6, 10)).complex_weight.shape == (4, 6, 6, 8, 2)
    assert GlobalFilter3d(8, 5, fmt='NCDHW').grid_size == (5, 5, 5)
    authors = GlobalFilter(16, h=14, w=8)
    assert authors.grid_size == (14, 14) and authors.complex_weight.shape == (14, 8, 16, 2)
    cnn = GlobalFilter(16, h=14, w=8, fmt='NCHW')
    cnn.load_state_dict({'complex_weight': authors.complex_weight.detach()})  # the authors' state_dict key
    from timm.layers import Format
    assert GlobalFilter(4, 6, fmt=Format.NCHW).fmt == 'NCHW'  # timm's format enum works too
    x = torch.randn(2, 16, 14, 14)
    with torch.no_grad():
        tokens = x.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        expected = authors(tokens).transpose(1, 2).reshape(2, 16, 14, 14)
        torch.testing.assert_close(cnn(x), expected, rtol=0, atol=1e-6)
        layer3d = _layer(GlobalFilter3d, 'NDHWC', (2, 3, 4))
        vol = torch.randn(2, 2, 3, 4, 3)
        tokens = layer3d(vol.reshape(2, 24, 3), spatial_size=(2, 3, 4))
        torch.testing.assert_close(tokens, layer3d(vol).reshape(2, 24, 3))


def test_resample_filter_follows_the_authors_recipe():
    """Bicubic, real and imaginary parts as channels, align_corners=True (corners kept); a grid of the same
    spectrum is the identity (not a copy); float64 stays float64."""
    w = torch.randn(14, 8, 5, 2)
    assert resample_filter(w, (14, 14)) is w and resample_filter(w, (14, 15)) is w  # 15 // 2 + 1 == 8
    out = resample_filter(w, (24, 24))
    assert out.shape == (24, 13, 5, 2)
    torch.testing.assert_close(out, _interpolated(w, (24, 24), 'bicubic'), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, 0], w[0, 0])
    torch.testing.assert_close(out[-1, -1], w[-1, -1])
    w64 = w.double()
    out64 = resample_filter(w64, (24, 24))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, _interpolated(w64, (24, 24), 'bicubic'), rtol=0, atol=1e-12)


@pytest.mark.parametrize('cls,fmt,built,size,mode', [
    (GlobalFilter1d, 'NCL', (8,), (13,), 'linear'),
    (GlobalFilter, 'NHWC', (6, 10), (7, 9), 'bilinear'),
    (GlobalFilter, 'NCHW', (6, 10), (6, 11), 'bilinear'),  # the same spectrum: the stored filter
    (GlobalFilter3d, 'NCDHW', (3, 4, 6), (4, 3, 9), 'trilinear'),
])
def test_dynamic_sizes_resample_the_filter_linearly(cls, fmt, built, size, mode):
    """With dynamic_size=True another grid uses the filter resampled as the authors do for dense prediction."""
    channels_last = fmt.endswith('C')
    layer = _layer(cls, fmt, built, dynamic_size=True).double()
    expected = _interpolated(layer.complex_weight.detach(), size, mode)
    x = _input(size, 3, channels_last)
    for backend in BACKENDS:
        with torch.no_grad():
            out = set_filter_backend(layer, backend)(x)
        torch.testing.assert_close(out, _reference(x, expected, channels_last), rtol=0, atol=1e-12)


# ---- property-based: random sizes, dtypes, layouts of tokens; any shape; empty inputs

# stable in CI: the same examples every run, no example database, no timing-based failures
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def budget(ci: int, slow: int):
    return pytest.mark.parametrize('examples', [ci, pytest.param(slow, marks=pytest.mark.slow)], ids=['ci', 'slow'])


# largest relative error allowed against the float64 reference, per backend and input dtype ('agree': between the
# backends): about 3x the largest measured over 1,500 cases (`python benchmarks/fuzz_errors.py 1500`). fft computes
# in float32 (float64 in float64); matmul in the input's dtype (half precision: half-precision DFT matrices, float32
# accumulation)
DTYPES: List[torch.dtype] = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL: Dict[str, Dict[torch.dtype, float]] = {
    'fft': {torch.float32: 2e-6, torch.float64: 1e-14, torch.bfloat16: 1.2e-2, torch.float16: 1.5e-3},
    'matmul': {torch.float32: 4e-6, torch.float64: 1e-14, torch.bfloat16: 3e-2, torch.float16: 5e-3},
    'agree': {torch.float32: 4e-6, torch.float64: 1e-14, torch.bfloat16: 3e-2, torch.float16: 5e-3},
}

CIRCULAR_CASES = dict(
    B=st.integers(1, 3), C=st.integers(1, 12), H=st.integers(1, 12), W=st.integers(1, 12),
    grid=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    dtype=st.sampled_from(DTYPES), tokens=st.booleans(), seed=st.integers(0, 2 ** 16),
)


def circular_errors(B: int, C: int, H: int, W: int, grid: Tuple[int, int], dtype: torch.dtype, tokens: bool,
                    seed: int) -> Dict[str, float]:
    """One case: {backend: largest error relative to the float64 reference's largest value, 'agree': between the
    backends}. The expected filter for another grid is the authors' bilinear resampling, here in float64."""
    dynamic = grid != (H, W)
    outs, errors = {}, {}
    for backend in BACKENDS:
        layer = GlobalFilter(C, grid_size=grid, dynamic_size=dynamic, filter_backend=backend)
        layer.to(torch.float64 if dtype == torch.float64 else torch.float32)  # half inputs: float32 weights
        torch.manual_seed(seed)
        torch.nn.init.normal_(layer.complex_weight)
        x = torch.randn(B, H, W, C).to(dtype)
        with torch.no_grad():
            out = layer(x.reshape(B, H * W, C), spatial_size=(H, W)).reshape(B, H, W, C) if tokens else layer(x)
            ref = _reference(x, _interpolated(layer.complex_weight.double(), (H, W), 'bilinear'), True)
        assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
        errors[backend] = ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
        outs[backend] = out.double()
    errors['agree'] = ((outs['fft'] - outs['matmul']).abs().max() / outs['fft'].abs().max().clamp_min(1e-12)).item()
    return errors


@budget(150, 1500)
def test_global_filter_is_the_circular_convolution(examples):
    """Random batch, channels, grids (dynamic when they differ from the built one), dtypes, tokens or grids: every
    backend equals the float64 definition, and the backends agree."""
    @settings(max_examples=examples, **SETTINGS)
    @given(**CIRCULAR_CASES)
    def check(dtype, **case):
        errors = circular_errors(dtype=dtype, **case)
        for what, err in errors.items():
            assert err < TOL[what][dtype], (what, errors)

    check()


@st.composite
def _shapes(draw) -> list:
    """Random rank and sizes; the channel axis often right, so that the deeper checks are reached."""
    shape = draw(st.lists(st.integers(1, 7), min_size=0, max_size=5))
    if shape and draw(st.booleans()):
        shape[-1] = 4
    return shape


@budget(100, 1000)
def test_any_shape_is_filtered_or_a_value_error(examples):
    """Any rank / token count / spatial_size / channel count: the right output or a one-line ValueError, exactly when
    the rules say so. A fixed filter takes its own grid only (3x5 has 3x4's spectrum and is still refused)."""
    @settings(max_examples=examples, **SETTINGS)
    @given(shape=_shapes(), spatial=st.none() | st.tuples(st.integers(1, 7), st.integers(1, 7)),
           dynamic=st.booleans(), backend=st.sampled_from(BACKENDS))
    def check(shape, spatial, dynamic, backend):
        layer = GlobalFilter(4, grid_size=(3, 4), dynamic_size=dynamic, filter_backend=backend)
        x = torch.randn(shape)
        if x.dim() == 3:
            H, W = spatial if spatial is not None else (round(shape[1] ** 0.5),) * 2
        else:
            H, W = shape[1:3] if x.dim() == 4 else (0, 0)
        valid = (x.dim() == 4 or (x.dim() == 3 and H * W == shape[1])) and shape[-1] == 4 and \
            (dynamic or (H, W) == (3, 4))
        try:
            with torch.no_grad():
                out = layer(x, spatial_size=spatial) if x.dim() == 3 else layer(x)
        except ValueError as e:
            assert not valid, f'valid input refused: {e}'
            assert str(e).startswith('GlobalFilter ') and '\n' not in str(e)
            return
        assert valid, f'{shape} {spatial} accepted'
        assert out.shape == x.shape and torch.isfinite(out).all()

    check()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape,dynamic', [((0, 3, 4, 4), False), ((0, 5, 5, 4), True), ((0, 12, 4), False)])
def test_empty_batch_keeps_autograd(shape, dynamic, backend):
    """An empty batch gives an empty output attached to autograd, and the weight a zero gradient, as nn.Linear."""
    layer = GlobalFilter(4, grid_size=(3, 4), dynamic_size=dynamic, filter_backend=backend)
    x = torch.randn(*shape, requires_grad=True)
    out = layer(x, spatial_size=(3, 4)) if x.dim() == 3 else layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.requires_grad
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert layer.complex_weight.grad is not None and not layer.complex_weight.grad.any()


# ---- errors: one line, naming what the user typed

def _fixed(message_grid: str, got: str, name: str = 'GlobalFilter') -> str:
    return (f'{name} was built for a {message_grid} token grid and got {got}: create the layer with '
            f'dynamic_size=True to resample its filter to other sizes.')


INPUT_ERRORS = [
    (lambda: GlobalFilter(16, (6, 10)), (2, 59, 16), dict(spatial_size=(6, 10)),
     'GlobalFilter got 59 tokens but spatial_size 6x10 holds 60: pass the grid the tokens come from.'),
    (lambda: GlobalFilter(16, (6, 10)), (2, 12, 16), dict(spatial_size=(12,)),
     'GlobalFilter spatial_size takes 2 positive whole numbers (H, W), got (12,).'),
    (lambda: GlobalFilter(16, (6, 10)), (2, 60, 16), dict(spatial_size=(-6, -10)),
     'GlobalFilter spatial_size takes 2 positive whole numbers (H, W), got (-6, -10).'),
    (lambda: GlobalFilter(16, (2, 4)), (2, 7, 16), dict(spatial_size=(2, 3.5)),
     'GlobalFilter spatial_size takes 2 positive whole numbers (H, W), got (2, 3.5).'),
    (lambda: GlobalFilter(16, (6, 10)), (2, 60, 16), {},
     'GlobalFilter got 60 tokens, which is not a square grid: pass spatial_size=(H, W).'),
    (lambda: GlobalFilter(16, (6, 10)), (60, 16), {},
     'GlobalFilter expects (B, H, W, C) or (B, N, C) input, got a tensor of shape [60, 16].'),
    (lambda: GlobalFilter(16, (6, 10)), (2, 16, 6, 10), {},
     'GlobalFilter has 16 channels, got input with 10 (channels last).'),
    (lambda: GlobalFilter(16, (6, 10)), (2, 7, 10, 16), {}, _fixed('6x10', '7x10')),
    (lambda: GlobalFilter(4, (14, 14)), (1, 14, 15, 4), {}, _fixed('14x14', '14x15')),  # the same spectrum
    (lambda: GlobalFilter(4, (14, 14), fmt='NCHW'), (1, 4, 14, 15), {}, _fixed('14x14', '14x15')),
    (lambda: GlobalFilter(4, (6, 10), fmt='NCHW'), (4, 6, 10), {},
     'GlobalFilter expects (B, C, H, W) input, got a tensor of shape [4, 6, 10].'),
    (lambda: GlobalFilter(4, (6, 10)), (2, 3, 0, 4), {},
     'GlobalFilter got an empty 3x0 token grid: the input is smaller than one patch.'),
    (lambda: GlobalFilter1d(4, 8), (2, 4, 8, 1), {},
     'GlobalFilter1d expects (B, L, C) input, got a tensor of shape [2, 4, 8, 1].'),
    (lambda: GlobalFilter1d(4, 8, fmt='NCL'), (2, 8, 8), {},
     'GlobalFilter1d has 4 channels, got input with 8 (channels first).'),
    (lambda: GlobalFilter1d(4, 10), (2, 11, 4), {}, _fixed('10', '11', 'GlobalFilter1d')),  # the same spectrum
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (2, 3, 4), {},
     'GlobalFilter3d got 3 tokens, which is not a cube grid: pass spatial_size=(D, H, W).'),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (1, 24, 4), dict(spatial_size=(2, 3, 5)),
     'GlobalFilter3d got 24 tokens but spatial_size 2x3x5 holds 30: pass the grid the tokens come from.'),
    (lambda: GlobalFilter3d(4, (2, 3, 4), fmt='NCDHW'), (2, 3, 4, 4), {},
     'GlobalFilter3d expects (B, C, D, H, W) input, got a tensor of shape [2, 3, 4, 4].'),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (1, 2, 3, 5, 4), {}, _fixed('2x3x4', '2x3x5', 'GlobalFilter3d')),
]


@pytest.mark.parametrize('make,shape,kwargs,message', INPUT_ERRORS, ids=[m for *_, m in INPUT_ERRORS])
def test_bad_input_is_a_one_line_value_error(make, shape, kwargs, message):
    with pytest.raises(ValueError) as e:
        make()(torch.randn(shape), **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize('dtype', [torch.int64, torch.uint8, torch.bool])
def test_integer_input_is_refused(dtype):
    with pytest.raises(ValueError, match=f'^GlobalFilter needs a floating-point input, got {dtype}: convert it with '
                                         r'x.float\(\).$'):
        GlobalFilter(16, (6, 10))(torch.ones(2, 6, 10, 16, dtype=dtype))


ARGUMENT_ERRORS = [
    (lambda: GlobalFilter(8, w=1), 'GlobalFilter w (the spectrum width of a grid 2 * (w - 1) wide) takes at least 2, '
                                   'got w=1: pass grid_size=(H, W) for other grids.'),
    (lambda: GlobalFilter(8, h=2.5), 'GlobalFilter h takes a positive whole number, got 2.5.'),
    (lambda: GlobalFilter(8, (14, 14), h=14), 'GlobalFilter takes grid_size=(H, W) or the spectrum size h=, w=, '
                                              'not both.'),
    (lambda: GlobalFilter(0), 'GlobalFilter dim takes a positive whole number, got 0.'),
    (lambda: GlobalFilter1d(4, (4, 4)), 'GlobalFilter1d length takes a positive whole number (L), got (4, 4).'),
    (lambda: GlobalFilter1d(4, 10.5), 'GlobalFilter1d length takes a positive whole number (L), got 10.5.'),
    (lambda: GlobalFilter3d(4, (2, 3)), 'GlobalFilter3d size takes 3 positive whole numbers (D, H, W), got (2, 3).'),
    (lambda: GlobalFilter3d(4, 4, fmt='NCHW'), "GlobalFilter3d takes fmt='NDHWC' or 'NCDHW', got 'NCHW'."),
    (lambda: GlobalFilter(8, filter_backend='cufft'), "Unknown filter_backend 'cufft': use one of auto, fft, matmul."),
    (lambda: set_filter_backend(nn.Sequential(GlobalFilter(8)), 'FFT'),
     "Unknown filter_backend 'FFT': use one of auto, fft, matmul."),
    (lambda: set_default_filter_backend('dft'), "Unknown filter_backend 'dft': use one of auto, fft, matmul."),
    (lambda: resample_filter(torch.randn(3, 4, 5, 2, 2), (4, 4, 8), mode='bicubic'),
     "resample_filter cannot use mode='bicubic' for a 3-D filter: use 'linear'."),
    (lambda: resample_filter(torch.randn(14, 8, 4, 2), (24,)),
     'resample_filter grid_size (for a 2-D filter) takes 2 positive whole numbers, got (24,).'),
    (lambda: resample_filter(torch.randn(14, 8, 4), (24, 24)),
     'resample_filter takes a (*spectrum, C, 2) filter of 1 to 3 spatial axes, got shape [14, 8, 4].'),
]


@pytest.mark.parametrize('make,message', ARGUMENT_ERRORS, ids=[m for _, m in ARGUMENT_ERRORS])
def test_bad_arguments_name_what_was_typed(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


def test_fractional_negative_zero_and_boolean_sizes_are_refused():
    for bad in (3.5, (6, 3.5), (6, -10), 0, (6, 0), True, '6'):
        with pytest.raises(ValueError, match=r'^GlobalFilter grid_size takes 2 positive whole numbers \(H, W\), got '):
            GlobalFilter(4, bad)


# ---- no hidden state: the filter follows the weights; outputs are never changed; threads

def _dynamic(C=4):
    torch.manual_seed(0)
    return GlobalFilter(C, (6, 10), dynamic_size=True, fmt='NCHW').eval()


def test_dynamic_filter_follows_the_weights():
    """After a cast, new weights (load_state_dict, an in-place update) or a copy, a layer filters other sizes with
    the weights it has now; outputs and hooks' tensors are never changed by later calls or cache clears."""
    layer, other = _dynamic(), GlobalFilter(4, (6, 10), dynamic_size=True, fmt='NCHW').eval()
    kept = []
    hook = layer.register_forward_hook(lambda m, i, o: kept.append((o, o.clone())))
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        layer(x)
        out = layer.double()(x.double())
        assert out.dtype == torch.float64
        expected = _interpolated(layer.complex_weight, (7, 9), 'bilinear')
        torch.testing.assert_close(out, _reference(x, expected, False), rtol=0, atol=1e-12)
        layer.float()
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
        before = layer(x)
        layer.complex_weight.mul_(-1)  # an optimizer step, an EMA update
        torch.testing.assert_close(layer(x), -before, rtol=0, atol=1e-6)
        hook.remove()  # a lambda does not pickle
        for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            twin.complex_weight.mul_(-1)
            torch.testing.assert_close(twin(x), before, rtol=0, atol=1e-6)
        clear_filter_caches()
    assert all(torch.equal(o, c) for o, c in kept)


def test_threads_sharing_a_layer():
    """Eight threads at five sizes sharing the cache of DFT matrices while one of them keeps clearing it: no error,
    outputs equal to single-threaded ones."""
    layer = set_filter_backend(_dynamic(8), 'matmul')
    sizes = [(6, 10), (7, 9), (5, 12), (8, 8), (9, 7)]
    inputs = {s: torch.randn(2, 8, *s) for s in sizes}
    with torch.no_grad():
        expected = {s: layer(x) for s, x in inputs.items()}
    errors, mismatches = [], []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            with torch.no_grad():
                for i in range(40):
                    s = sizes[rng.integers(len(sizes))]
                    if not torch.equal(layer(inputs[s]), expected[s]):  # matmul is deterministic
                        mismatches.append(s)
                    if seed == 0 and i % 5 == 0:
                        clear_filter_caches()
        except Exception as e:  # noqa: B902 - any exception is the failure being tested for
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches


# ---- which backend runs: the auto rule, the global switch, the environment variable

BF16_UNITS, FP16_UNITS = frozenset({'avx512_bf16', 'amx_bf16'}), frozenset({'amx_fp16'})


@pytest.mark.parametrize('tensor,amp,units,expected', [
    (torch.float32, None, BF16_UNITS | FP16_UNITS, 'fft'),
    (torch.float64, None, BF16_UNITS | FP16_UNITS, 'fft'),
    (torch.float32, torch.bfloat16, BF16_UNITS, 'matmul'),
    (torch.float32, torch.bfloat16, frozenset(), 'fft'),  # no bf16 units: emulated bf16 products are slower
    (torch.float32, torch.float16, FP16_UNITS, 'matmul'),
    (torch.float32, torch.float16, BF16_UNITS, 'fft'),
    (torch.bfloat16, None, BF16_UNITS, 'matmul'),  # model.to(torch.bfloat16)
    (torch.bfloat16, None, frozenset(), 'fft'),
    (torch.float16, None, FP16_UNITS, 'matmul'),
    (torch.float16, None, frozenset(), 'fft'),
], ids=['fp32', 'fp64', 'bf16-autocast', 'bf16-autocast-no-units', 'fp16-autocast', 'fp16-autocast-no-fp16-units',
        'bf16-tensors', 'bf16-tensors-no-units', 'fp16-tensors', 'fp16-tensors-no-units'])
def test_auto_is_a_fixed_rule_in_eager_mode(tensor, amp, units, expected, monkeypatch):
    """Eager `auto`: the authors' fft, except where the products run in bf16 / fp16 (the tensors' dtype or
    autocast's) on a CPU with matrix units for it. No timing: exactly the bits of the backend the rule names."""
    monkeypatch.setattr(filter_backends, '_cpu_features', lambda: units)
    layer = _layer(GlobalFilter, 'NHWC', (6, 10), C=16).to(tensor)
    named = set_filter_backend(copy.deepcopy(layer), expected)
    x = torch.randn(3, 6, 10, 16).to(tensor)
    with torch.no_grad(), torch.autocast('cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
        out = layer(x)
        assert torch.equal(out, named(x)) and torch.equal(layer(x), out)
        assert _fft_ops(layer, x) == (expected == 'fft')


def test_auto_is_matmul_when_traced():
    """jit tracing (as fvcore and the old ONNX exporter do) records the real-valued DFT, no FFT op."""
    layer = GlobalFilter(8, (6, 10))
    x = torch.randn(2, 6, 10, 8)
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert not {k for k in kinds if 'fft' in k} and 'aten::matmul' in kinds
    with torch.no_grad():
        torch.testing.assert_close(traced(x), set_filter_backend(layer, 'fft')(x), rtol=0, atol=1e-5)


def test_default_backend_switch_overrides_auto_only():
    """set_default_filter_backend replaces the rule for layers at `auto`; a layer's own backend stays; 'auto' restores
    the rule; set_filter_backend reaches every layer of every rank."""
    model = nn.ModuleDict({'a': GlobalFilter1d(4, 8), 'b': GlobalFilter(4, 6), 'c': GlobalFilter3d(4, 3)})
    assert set_filter_backend(model, 'matmul') is model
    assert {m.filter_backend for m in model.values()} == {'matmul'}
    set_filter_backend(model, 'auto')
    pinned = GlobalFilter(4, 6, filter_backend='fft')
    x = torch.randn(2, 6, 6, 4)
    try:
        set_default_filter_backend('matmul')
        assert not _fft_ops(model['b'], x) and _fft_ops(pinned, x)
        set_default_filter_backend('fft')
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert _fft_ops(model['b'], x)
        compiled = torch.compile(model['b'], backend='eager', fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), set_filter_backend(copy.deepcopy(model['b']), 'fft')(x))
    finally:
        set_default_filter_backend('auto')
    assert _fft_ops(model['b'], x)  # float32: the rule's fft again


def test_environment_variable_sets_the_default(monkeypatch):
    """TIMM_GFNET_FILTER_BACKEND, read when the module is imported (here: reloaded), sets the default; a bad value is
    a one-line error naming the variable."""
    layer, x = GlobalFilter(4, 6), torch.randn(1, 6, 6, 4)
    try:
        monkeypatch.setenv('TIMM_GFNET_FILTER_BACKEND', 'matmul')
        importlib.reload(filter_backends)
        assert not _fft_ops(layer, x)
        monkeypatch.setenv('TIMM_GFNET_FILTER_BACKEND', 'cuFFT')
        with pytest.raises(ValueError, match="^Unknown TIMM_GFNET_FILTER_BACKEND 'cuFFT': use one of auto, fft, "
                                             "matmul.$"):
            importlib.reload(filter_backends)
    finally:
        monkeypatch.delenv('TIMM_GFNET_FILTER_BACKEND')
        importlib.reload(filter_backends)
    assert _fft_ops(layer, x)


# ---- precision: autocast and half-precision tensors

# relative L2 error against float32, measured here (both backends, every layout): bf16 at most 6e-3, fp16 at most
# 1e-3 (matmul in the half dtype; fft computes in float32, hence its 1e-6 under autocast); the bounds about 3x that
HALF_TOL = {torch.bfloat16: 2e-2, torch.float16: 2.5e-3}


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('cls,fmt,size', LAYOUTS[::2] + LAYOUTS[1::2], ids=IDS[::2] + IDS[1::2])
def test_autocast_and_half_tensors(cls, fmt, size, dtype):
    """Under autocast matmul runs every product in the autocast dtype, fft in float32, and the output keeps the
    input's dtype; with half-precision weights and input both return that dtype. Gradients reach the filter."""
    channels_last = fmt.endswith('C')
    layer = _layer(cls, fmt, size, C=8)
    x = _input(size, 8, channels_last, dtype=torch.float32)
    ref = _reference(x, layer.complex_weight.detach(), channels_last)
    seen = []
    orig = torch.matmul

    def spy(a, b):
        seen.append((a.dtype, b.dtype))
        return orig(a, b)
    for backend, tol in (('fft', 1e-6), ('matmul', HALF_TOL[dtype])):
        set_filter_backend(layer, backend).zero_grad()
        seen.clear()
        torch.matmul = spy
        try:
            with torch.autocast('cpu', dtype=dtype):
                out = layer(x)
        finally:
            torch.matmul = orig
        assert out.dtype == torch.float32 and _rel(out, ref) < tol, backend
        assert (backend == 'fft') == (not seen) and all(s == (dtype, dtype) for s in seen)
        out.square().mean().backward()
        assert torch.isfinite(layer.complex_weight.grad).all() and layer.complex_weight.grad.abs().sum() > 0
        half = copy.deepcopy(layer).to(dtype)
        with torch.no_grad():
            out = half(x.to(dtype))
        ref_half = _reference(x.to(dtype), half.complex_weight, channels_last)
        assert out.dtype == dtype and _rel(out, ref_half) < 2 * HALF_TOL[dtype], backend


# ---- compile, TorchScript, ONNX, torch.func

def test_compile_fullgraph_at_another_size():
    """inductor compiles the filter (auto: matmul) with the filter resampled in the graph, one graph."""
    layer = _layer(GlobalFilter3d, 'NCDHW', (2, 3, 4), dynamic_size=True)
    x = _input((3, 3, 5), 3, False, dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        expected = _interpolated(layer.complex_weight, (3, 3, 5), 'trilinear')
        torch.testing.assert_close(compiled(x).double(), _reference(x, expected, False), rtol=0, atol=5e-6)


def test_compiled_training_step_matches_eager():
    """AOT autograd traces forward and backward through the filter; values and gradients match eager fft."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(8), GlobalFilter(8, (6, 10)), nn.Linear(8, 3))
    x = torch.randn(2, 6, 10, 8)
    grads = []
    for run in (lambda t: set_filter_backend(model, 'fft')(t),
                torch.compile(lambda t: set_filter_backend(model, 'auto')(t), backend='aot_eager', fullgraph=True)):
        model.zero_grad(set_to_none=True)
        out = run(x)
        out.square().mean().backward()
        grads.append((out.detach(), *[p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('train', [False, True], ids=['inference', 'training'])
def test_compiled_model_has_no_graph_break_and_no_fft(train):
    model = timm.create_model('gfnet_h_ti', depth=(1, 1, 1, 1), dynamic_img_size=True).train(train)
    x = torch.randn(2, 3, 96, 128)
    fn = (lambda t: model(t).logsumexp(-1).mean()) if train else model
    with torch.set_grad_enabled(train):
        explained = torch._dynamo.explain(fn)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    # auto picks the real-valued backend under compile: nothing complex for inductor to fall back on
    for gm in explained.graphs:
        for node in gm.graph.nodes:
            val = node.meta.get('example_value')
            assert 'fft' not in str(node.target) and not (isinstance(val, torch.Tensor) and val.is_complex())


@pytest.mark.parametrize('cls,fmt,size,kwargs', [
    (GlobalFilter1d, 'NLC', (10,), {}),
    (GlobalFilter, 'NHWC', (4, 6), dict(filter_backend='fft')),
    (GlobalFilter3d, 'NCDHW', (3, 3, 5), dict(dynamic_size=True)),
], ids=['1d', '2d-fft', '3d-dynamic'])
def test_torchscript(cls, fmt, size, kwargs):
    built = (2, 3, 4) if cls is GlobalFilter3d else size
    layer = _layer(cls, fmt, built, **kwargs)
    scripted = torch.jit.script(layer)  # auto scripted: matmul
    channels_last = fmt.endswith('C')
    x = _input(size, 3, channels_last, dtype=torch.float32)
    expected = _interpolated(layer.complex_weight.detach(), size, LINEAR[len(size)])
    with torch.no_grad():
        torch.testing.assert_close(scripted(x).double(), _reference(x, expected, channels_last), rtol=0, atol=5e-6)
        if cls is GlobalFilter:
            tokens = x.reshape(2, -1, 3)
            torch.testing.assert_close(scripted(tokens, spatial_size=[4, 6]), layer(x).reshape(2, -1, 3))


@pytest.mark.parametrize('cls,fmt,size', [
    (GlobalFilter3d, 'NDHWC', (2, 3, 4)),
    pytest.param(GlobalFilter1d, 'NCL', (10,), marks=pytest.mark.slow),
])
def test_onnx_export_runs_in_onnxruntime(cls, fmt, size, tmp_path):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    layer = _layer(cls, fmt, size).eval()
    channels_last = fmt.endswith('C')
    x = _input(size, 3, channels_last, dtype=torch.float32)
    with torch.no_grad():
        program = torch.onnx.export(layer, (x,), dynamo=True, external_data=False, verbose=False,
                                    dynamic_shapes={'x': {0: torch.export.Dim('batch', min=1, max=64)}})
    path = tmp_path / 'filter.onnx'
    program.save(str(path))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert 'MatMul' in ops and not ops & {'DFT', 'STFT'}
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    y = _input(size, 3, channels_last, B=3, dtype=torch.float32, seed=5)  # a batch size not used for export
    got = session.run(None, {session.get_inputs()[0].name: y.numpy()})[0]
    np.testing.assert_allclose(got, _reference(y, layer.complex_weight.detach(), channels_last).numpy(),
                               rtol=0, atol=5e-6)


FUNC_LAYERS = [
    (lambda: GlobalFilter1d(4, 12, fmt='NCL'), (3, 2, 4, 12)),
    (lambda: GlobalFilter(4, (6, 10)), (3, 2, 6, 10, 4)),
    (lambda: GlobalFilter(4, (6, 10), fmt='NCHW', dynamic_size=True), (3, 2, 4, 7, 9)),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (3, 2, 2, 3, 4, 4)),
]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('frozen', [False, True], ids=['trainable', 'frozen'])
@pytest.mark.parametrize('make,shape', FUNC_LAYERS, ids=['1d', '2d', '2d-dynamic', '3d'])
def test_torch_func(make, shape, frozen, backend):
    """vmap, jvp and grad give what a loop over samples and autograd give."""
    torch.manual_seed(0)
    layer = set_filter_backend(make(), backend).requires_grad_(not frozen).double()
    x = torch.randn(shape, dtype=torch.float64)
    loop = torch.stack([layer(xi) for xi in x])
    torch.testing.assert_close(vmap(layer)(x), loop, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(vmap(layer)(x), loop, rtol=0, atol=1e-12)
    # the filter is linear in its input: the directional derivative is the filter of the direction
    t = torch.randn_like(x[0])
    _, dy = jvp(layer, (x[0],), (t,))
    torch.testing.assert_close(dy, layer(t), rtol=0, atol=1e-12)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    g = grad(lambda p, xx: functional_call(layer, p, (xx,)).square().sum())(params, x[0])
    w = layer.complex_weight.detach().clone().requires_grad_(True)
    functional_call(layer, {'complex_weight': w}, (x[0],)).square().sum().backward()
    torch.testing.assert_close(g['complex_weight'], w.grad, rtol=0, atol=1e-10)


# ---- the layer inside models

@pytest.mark.parametrize('name', MODEL_NAMES)
def test_backends_agree_on_every_variant(name):
    """Float32, the authors' weight scale: logits and features of the two backends within 1e-5."""
    model = timm.create_model(name, filter_backend='fft').eval()
    model.load_state_dict(checkpoint_filter_fn(authors_state_dict(name), model))
    x = input_batch()[:1]
    with torch.no_grad():
        ref_feat = model.forward_features(x)
        ref = model.forward_head(ref_feat)
        set_filter_backend(model, 'matmul')
        feat = model.forward_features(x)
        out = model.forward_head(feat)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feat, ref_feat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_autocast_every_variant(name, dtype):
    """bf16 / fp16 autocast, both backends, a grid that is not a power of two, forward and (scaled) backward; one
    block per stage, the variant's widths and stages."""
    # a trained layer scale, not the 1e-3 .. 1e-6 init: fp16 filter gradients under 1e-6 need a grown GradScaler
    kwargs = dict(depth=(1, 1, 1, 1), init_values=0.1) if name.startswith('gfnet_h') else dict(depth=1)
    model = timm.create_model(name, dynamic_img_size=True, dynamic_img_pad=True, filter_backend='fft', **kwargs)
    x = torch.randn(2, 3, 96, 160)  # token grids 6x10 (isotropic), 24x40 .. 3x5 (hierarchical)
    with torch.no_grad():
        ref = model.eval()(x)
    first = model.get_submodule('blocks.0.filter' if kwargs['depth'] == 1 else 'stages.0.blocks.0.filter')
    for backend in BACKENDS:
        set_filter_backend(model, backend).eval()
        with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
            out = model(x)
        assert out.dtype == dtype and torch.isfinite(out).all(), backend
        assert _rel(out.float(), ref.double()) < HALF_TOL[dtype], backend
        model.train()
        with torch.autocast('cpu', dtype=dtype):
            loss = model(x).float().logsumexp(-1).mean()
        (loss * 2 ** 10).backward()  # scaled as torch.amp.GradScaler does
        assert torch.isfinite(first.complex_weight.grad).all() and first.complex_weight.grad.abs().sum() > 0, backend
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('name,kwargs', [
    ('gfnet_ti', dict(img_size=32, depth=2, embed_dim=16, num_classes=5)),
    ('gfnet_h_ti', dict(img_size=64, depth=(1, 1, 1, 1), embed_dim=(8, 8, 16, 16), num_classes=5)),
])
def test_per_sample_gradients_through_models(name, kwargs, backend):
    """vmap(grad(...)): the per-sample gradients of every parameter, as a loop of backward passes gives them; forward
    mode through the whole model equals reverse mode."""
    torch.manual_seed(0)
    model = timm.create_model(name, filter_backend=backend, **kwargs).eval().double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 3, kwargs['img_size'], kwargs['img_size'], dtype=torch.float64)
    y = torch.tensor([0, 3, 4])

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, rtol=0, atol=1e-10, msg=k)
    t = torch.randn_like(x[:1])
    _, dy = jvp(model, (x[:1],), (t,))
    _, reverse = torch.autograd.functional.jvp(model, x[:1], t)
    torch.testing.assert_close(dy, reverse, rtol=0, atol=1e-10)


class _SequenceMixer(nn.Module):
    """A GFNet block for sequences: norm, 1-D global filter, norm, MLP, one residual."""

    def __init__(self, dim: int, length: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.filter = GlobalFilter1d(dim, length)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(self.filter(self.norm1(x))))


def _resnet_with_filter() -> nn.Module:
    model = timm.create_model('resnet10t', num_classes=10)
    model.layer3 = nn.Sequential(model.layer3, GlobalFilter(256, (4, 4), fmt='NCHW'))  # 64 px in: 4x4 at stride 16
    return model


@pytest.mark.parametrize('make,x,filters', [
    (_resnet_with_filter, torch.randn(2, 3, 64, 64), lambda m: [m.layer3[1]]),
    (lambda: nn.Sequential(nn.Embedding(100, 16), _SequenceMixer(16, 32), nn.Flatten(1), nn.Linear(32 * 16, 10)),
     torch.randint(0, 100, (2, 32)), lambda m: [m[1].filter]),
    (lambda: nn.Sequential(nn.Conv3d(1, 8, 4, stride=4), GlobalFilter3d(8, (2, 4, 4), fmt='NCDHW'), nn.GELU(),
                           nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(8, 10)),
     torch.randn(2, 1, 8, 16, 16), lambda m: [m[1]]),
], ids=['2d-in-a-timm-resnet', '1d-sequence-model', '3d-volume-model'])
def test_layers_train_inside_models(make, x, filters):
    """The README's examples, one SGD step each: every filter gets a gradient and changes."""
    torch.manual_seed(0)
    model = make()
    before = [f.complex_weight.detach().clone() for f in filters(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for f, b in zip(filters(model), before):
        assert f.complex_weight.grad.abs().sum() > 0 and not torch.equal(f.complex_weight, b)


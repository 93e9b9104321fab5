"""The global filter as a layer: 1-D, 2-D and 3-D, channels-last and channels-first, both backends, against a float64
FFT reference computed here; resampling against F.interpolate; errors; caches (moves, loads, copies, threads)."""
import copy
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_gfnet import GlobalFilter, GlobalFilter1d, GlobalFilter3d, clear_filter_caches, set_filter_backend
from timm_gfnet.dft import cached_sizes

# (class, fmt, size, channels_last): even and odd last axes, a size-1 axis
LAYOUTS = [
    (GlobalFilter1d, 'NLC', (9,), True), (GlobalFilter1d, 'NCL', (8,), False),
    (GlobalFilter, 'NHWC', (5, 6), True), (GlobalFilter, 'NCHW', (4, 7), False),
    (GlobalFilter3d, 'NDHWC', (3, 4, 5), True), (GlobalFilter3d, 'NCDHW', (2, 1, 6), False),
]
IDS = [f'{c.__name__}-{fmt}' for c, fmt, _, _ in LAYOUTS]


def _reference(x: torch.Tensor, weight: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The definition in float64 (independent of the package): rfftn over the spatial axes, product, irfftn."""
    xl = x.double() if channels_last else x.double().movedim(1, -1)
    dims = list(range(1, xl.dim() - 1))
    y = torch.fft.rfftn(xl, dim=dims, norm='ortho') * torch.view_as_complex(weight.double().contiguous())
    y = torch.fft.irfftn(y, s=xl.shape[1:-1], dim=dims, norm='ortho')
    return y if channels_last else y.movedim(-1, 1)


def _input(size, C, channels_last, B=2, dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (B, *size, C) if channels_last else (B, C, *size)
    return torch.randn(shape, generator=g, dtype=dtype)


def _layer(cls, fmt, size, C=3, **kwargs):
    layer = cls(C, size, fmt=fmt, **kwargs)
    with torch.no_grad():
        layer.complex_weight.normal_()  # O(1) outputs: absolute tolerances are meaningful
    return layer


@pytest.mark.parametrize('cls,fmt,size,channels_last', LAYOUTS, ids=IDS)
def test_values_and_gradients_equal_the_float64_fft(cls, fmt, size, channels_last):
    layer = _layer(cls, fmt, size).double()
    x = _input(size, 3, channels_last)
    # matmul in float64: the DFT itself, values and gradients (measured 1e-15 .. 1e-14)
    set_filter_backend(layer, 'matmul')
    xg = x.clone().requires_grad_()
    out = layer(xg)
    w = layer.complex_weight.detach().clone().requires_grad_()
    xr = x.clone().requires_grad_()
    ref = _reference(xr, w, channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    probe = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    (ref * probe).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.complex_weight.grad, w.grad, rtol=0, atol=1e-12)
    # float32, both backends: within float32 rounding of the definition (measured up to 1e-6)
    layer32 = layer.float()
    for backend in ('fft', 'matmul', 'auto'):
        set_filter_backend(layer32, backend)
        with torch.no_grad():
            out32 = layer32(x.float())
        assert out32.dtype == torch.float32 and out32.shape == x.shape
        torch.testing.assert_close(out32.double(), ref.detach(), rtol=0, atol=5e-6)


def test_shapes_of_the_learned_filter():
    assert GlobalFilter1d(8, 10).complex_weight.shape == (6, 8, 2)
    assert GlobalFilter1d(8, 11, fmt='NCL').complex_weight.shape == (6, 8, 2)
    assert GlobalFilter(8, (6, 10)).complex_weight.shape == (6, 6, 8, 2)
    assert GlobalFilter3d(8, (4, 6, 10)).complex_weight.shape == (4, 6, 6, 8, 2)
    assert GlobalFilter3d(8, 5, fmt='NCDHW').grid_size == (5, 5, 5)


def test_authors_signature_and_the_write_up_cnn_map():
    """`GlobalFilter(dim, h=14, w=8)` as in the authors' code; a (4, 384, 14, 14) CNN map straight in with
    fmt='NCHW', equal to the write-up's rearrange-to-tokens route."""
    authors = GlobalFilter(384, h=14, w=8)
    assert authors.grid_size == (14, 14) and authors.complex_weight.shape == (14, 8, 384, 2)
    cnn = GlobalFilter(384, h=14, w=8, fmt='NCHW')
    cnn.load_state_dict({'complex_weight': authors.complex_weight.detach()})  # the authors' state_dict key
    x = torch.randn(4, 384, 14, 14)
    with torch.no_grad():
        tokens = x.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        expected = authors(tokens).transpose(1, 2).reshape(4, 384, 14, 14)
        torch.testing.assert_close(cnn(x), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='^GlobalFilter takes grid_size=.* or the spectrum size h=, w=, not both.$'):
        GlobalFilter(8, (14, 14), h=14)


def _interpolated(weight: torch.Tensor, size, mode: str) -> torch.Tensor:
    """Reference resampling: real and imaginary parts as channels, F.interpolate with align_corners=True."""
    rank = weight.dim() - 2
    spec = (*size[:-1], size[-1] // 2 + 1)
    w = weight.reshape(*weight.shape[:rank], -1).movedim(-1, 0)[None]
    w = F.interpolate(w, size=spec, mode=mode, align_corners=True)[0].movedim(0, -1)
    return w.reshape(*spec, *weight.shape[rank:])


@pytest.mark.parametrize('cls,fmt,built,size,mode', [
    (GlobalFilter1d, 'NCL', (8,), (13,), 'linear'),
    (GlobalFilter, 'NHWC', (6, 10), (7, 9), 'bilinear'),
    (GlobalFilter3d, 'NCDHW', (3, 4, 6), (4, 3, 9), 'trilinear'),
])
def test_other_sizes_resample_the_filter(cls, fmt, built, size, mode):
    channels_last = fmt.endswith('C')
    layer = _layer(cls, fmt, built, dynamic_size=True)
    expected_filter = _interpolated(layer.complex_weight.detach(), size, mode)
    torch.testing.assert_close(layer.filter_for(size), expected_filter, rtol=0, atol=1e-6)
    x = _input(size, 3, channels_last, dtype=torch.float32)
    for backend in ('fft', 'matmul'):
        set_filter_backend(layer, backend)
        with torch.no_grad():
            out = layer(x)
        torch.testing.assert_close(out.double(), _reference(x, expected_filter, channels_last), rtol=0, atol=5e-6)


def test_bicubic_resampling_of_checkpoints():
    from timm_gfnet import resample_filter
    w = torch.randn(14, 8, 4, 2)
    torch.testing.assert_close(resample_filter(w, (24, 24)), _interpolated(w, (24, 24), 'bicubic'), rtol=0, atol=1e-6)
    message = r"^resample_filter cannot use mode='bicubic' for a 3-D filter: use 'linear'.$"
    with pytest.raises(ValueError, match=message):
        resample_filter(torch.randn(3, 4, 5, 2, 2), (4, 4, 8), mode='bicubic')


ERRORS = [
    (lambda: GlobalFilter1d(4, 8), (2, 4, 8, 1),
     'GlobalFilter1d expects (B, L, C) input, got a tensor of shape [2, 4, 8, 1].'),
    (lambda: GlobalFilter1d(4, 8, fmt='NCL'), (2, 8, 8),
     'GlobalFilter1d has 4 channels, got input with 8 (channels first).'),
    (lambda: GlobalFilter1d(4, 8), (2, 10, 4),
     'GlobalFilter1d was built for a 8 token grid and got 10: create the layer with dynamic_size=True to resample '
     'its filter to other sizes.'),
    (lambda: GlobalFilter(4, (6, 10), fmt='NCHW'), (4, 6, 10),
     'GlobalFilter expects (B, C, H, W) input, got a tensor of shape [4, 6, 10].'),
    (lambda: GlobalFilter(4, (6, 10), fmt='NCHW'), (2, 6, 10, 4),
     'GlobalFilter has 4 channels, got input with 6 (channels first).'),
    (lambda: GlobalFilter(4, (6, 10), fmt='NCHW'), (2, 4, 7, 10),
     'GlobalFilter was built for a 6x10 token grid and got 7x10: create the layer with dynamic_size=True to '
     'resample its filter to other sizes.'),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (2, 3, 4),
     'GlobalFilter3d got 3 tokens, which is not a cube grid: pass spatial_size=(D, H, W).'),
    (lambda: GlobalFilter3d(4, (2, 3, 4), fmt='NCDHW'), (2, 3, 4, 4),
     'GlobalFilter3d expects (B, C, D, H, W) input, got a tensor of shape [2, 3, 4, 4].'),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (1, 2, 3, 4, 5),
     'GlobalFilter3d has 4 channels, got input with 5 (channels last).'),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (1, 2, 3, 6, 4),
     'GlobalFilter3d was built for a 2x3x4 token grid and got 2x3x6: create the layer with dynamic_size=True to '
     'resample its filter to other sizes.'),
]


@pytest.mark.parametrize('make,shape,message', ERRORS, ids=[m for _, _, m in ERRORS])
def test_bad_input_is_one_line_value_error(make, shape, message):
    with pytest.raises(ValueError) as e:
        make()(torch.randn(shape))
    assert str(e.value) == message


def test_bad_arguments():
    with pytest.raises(ValueError, match="^GlobalFilter3d takes fmt='NDHWC' or 'NCDHW', got 'NCHW'.$"):
        GlobalFilter3d(4, 4, fmt='NCHW')
    with pytest.raises(ValueError, match=r'^GlobalFilter1d grid_size takes 1 positive whole number \(L,\), '
                                         r'got \(4, 4\).$'):
        GlobalFilter1d(4, (4, 4))
    # fractional, negative, zero and boolean sizes: refused, never truncated
    for bad in (3.5, (6, 3.5), (6, -10), 0, (6, 0), True, '6'):
        with pytest.raises(ValueError, match=r'^GlobalFilter grid_size takes 2 positive whole numbers \(H, W\), '):
            GlobalFilter(4, bad)
    with pytest.raises(ValueError, match=r'^GlobalFilter3d got 24 tokens but spatial_size 2x3x5 holds 30'):
        GlobalFilter3d(4, (2, 3, 4))(torch.randn(1, 24, 4), spatial_size=(2, 3, 5))
    from timm.layers import Format
    assert GlobalFilter(4, 6, fmt=Format.NCHW).fmt == 'NCHW'  # timm's format enum works too


def test_3d_tokens_with_spatial_size():
    layer = _layer(GlobalFilter3d, 'NDHWC', (2, 3, 4))
    x = torch.randn(2, 2, 3, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(layer(x.reshape(2, 24, 3), spatial_size=(2, 3, 4)), layer(x).reshape(2, 24, 3))


# ---- dynamic sizes: the filter is resampled from the weights as they are on every call (layers keep no cache)

def _dynamic(C=4):
    torch.manual_seed(0)
    return GlobalFilter(C, (6, 10), dynamic_size=True, fmt='NCHW').eval()


def test_dynamic_filter_follows_the_weights():
    """After a cast, new weights (load_state_dict, an in-place update) or a copy, a layer filters other sizes with
    the weights it has now."""
    layer, other = _dynamic(), GlobalFilter(4, (6, 10), dynamic_size=True, fmt='NCHW').eval()
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        layer(x)
        out = layer.double()(x.double())
        assert out.dtype == torch.float64
        # the new weights (the auto rule's float32 FFT: float32 rounding)
        torch.testing.assert_close(out, _reference(x, layer.filter_for(7, 9), False), rtol=0, atol=1e-6)
        layer.float()
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
        before = layer(x)
        layer.complex_weight.mul_(-1)  # an optimizer step, an EMA update
        torch.testing.assert_close(layer(x), -before, rtol=0, atol=1e-6)
        for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            twin.complex_weight.mul_(-1)
            torch.testing.assert_close(twin(x), before, rtol=0, atol=1e-6)


def test_returned_tensors_are_never_changed():
    """A hook (or caller) keeping an output or a filter sees it unchanged by later calls and cache clears."""
    layer = _dynamic()
    kept = []
    layer.register_forward_hook(lambda m, i, o: kept.append((o, o.clone())))
    with torch.no_grad():
        filt = layer.filter_for(7, 9)
        filt_copy = filt.clone()
        for size in [(7, 9), (8, 8), (7, 9), (5, 11)]:
            layer(torch.randn(2, 4, *size))
        layer.complex_weight.add_(1.)
        layer(torch.randn(2, 4, 7, 9))
        clear_filter_caches()
    assert torch.equal(filt, filt_copy)
    assert all(torch.equal(o, c) for o, c in kept)


def test_threads_sharing_a_layer():
    """Eight threads at five sizes sharing the module-level cache of DFT matrices while one of them keeps clearing
    it: no error, outputs equal to single-threaded ones."""
    layer = _dynamic(8)
    layer.filter_backend = 'matmul'
    sizes = [(6, 10), (7, 9), (5, 12), (8, 8), (9, 7)]
    inputs = {s: torch.randn(2, 8, *s) for s in sizes}
    with torch.no_grad():
        expected = {s: set_filter_backend(copy.deepcopy(layer), 'matmul')(x) for s, x in inputs.items()}
    errors, mismatches = [], []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            with torch.no_grad():
                for i in range(40):
                    s = sizes[rng.integers(len(sizes))]
                    out = layer(inputs[s])
                    if not torch.equal(out, expected[s]):  # matmul is deterministic
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


def test_set_backend_and_clear_caches_reach_every_layer():
    model = nn.ModuleDict({'a': GlobalFilter1d(4, 8, dynamic_size=True), 'b': GlobalFilter(4, 6, dynamic_size=True),
                           'c': GlobalFilter3d(4, 3, dynamic_size=True)}).eval()
    assert set_filter_backend(model, 'matmul') is model
    assert {m.filter_backend for m in model.values()} == {'matmul'}
    with torch.no_grad():
        model['a'](torch.randn(1, 10, 4))
        model['b'](torch.randn(1, 5, 7, 4))
        model['c'](torch.randn(1, 4, 3, 3, 4))
    assert len(cached_sizes()) > 0
    clear_filter_caches()
    assert cached_sizes() == []


# ---- autocast, TorchScript, torch.compile, ONNX for the new ranks

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('cls,fmt,size', [(GlobalFilter1d, 'NCL', (12,)), (GlobalFilter3d, 'NDHWC', (3, 4, 6))])
def test_autocast(cls, fmt, size, dtype):
    layer = _layer(cls, fmt, size, C=8)
    x = _input(size, 8, fmt.endswith('C'), dtype=torch.float32)
    with torch.no_grad():
        ref = _reference(x, layer.complex_weight, fmt.endswith('C'))
    # relative L2 error: fft computes in float32 under autocast (measured 1.2e-7); matmul in the autocast dtype
    # (measured bf16 <= 6.0e-3, fp16 <= 9.6e-4)
    tols = {'fft': 1e-6, 'matmul': {torch.bfloat16: 2e-2, torch.float16: 2.5e-3}[dtype]}
    for backend, tol in tols.items():
        set_filter_backend(layer, backend)
        with torch.autocast('cpu', dtype=dtype):
            out = layer(x.requires_grad_())
        assert out.dtype == torch.float32
        assert ((out.double() - ref).norm() / ref.norm()).item() < tol, backend
        out.square().mean().backward()
        assert torch.isfinite(layer.complex_weight.grad).all() and layer.complex_weight.grad.abs().sum() > 0
        layer.zero_grad()
        x.grad = None


def test_torchscript_new_ranks():
    for layer, x in ((_layer(GlobalFilter1d, 'NLC', (10,)), torch.randn(2, 10, 3)),
                     (_layer(GlobalFilter3d, 'NCDHW', (2, 3, 4), dynamic_size=True), torch.randn(2, 3, 3, 3, 5))):
        scripted = torch.jit.script(layer)  # scripted: the fixed rule's matmul
        with torch.no_grad():
            torch.testing.assert_close(scripted(x).double(), _reference(x, layer.filter_for(x.shape[2:]), False)
                                       if layer.fmt == 'NCDHW' else _reference(x, layer.complex_weight, True),
                                       rtol=0, atol=5e-6)


@pytest.mark.parametrize('cls,fmt,size', [
    (GlobalFilter3d, 'NCDHW', (2, 3, 4)),
    pytest.param(GlobalFilter1d, 'NLC', (10,), marks=pytest.mark.slow),
])
def test_compile_fullgraph(cls, fmt, size):
    layer = _layer(cls, fmt, size)
    x = _input(size, 3, fmt.endswith('C'), dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).double(), _reference(x, layer.complex_weight, fmt.endswith('C')),
                                   rtol=0, atol=5e-6)


@pytest.mark.parametrize('cls,fmt,size', [(GlobalFilter1d, 'NCL', (10,)), (GlobalFilter3d, 'NDHWC', (2, 3, 4))])
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
    ref = _reference(y, layer.complex_weight.detach(), channels_last).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=5e-6)

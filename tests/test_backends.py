"""Global filter backends: the DFT-as-matmul filter computes the authors' FFT filter; the auto rule, autocast,
torch.compile."""
import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from reference import MODEL_NAMES, authors_state_dict, input_batch
from timm_gfnet import filter_backends
from timm_gfnet.dft import dft_matrices
from timm_gfnet.filter_backends import global_filter, global_filter_fft, global_filter_matmul, resolve_backend
from timm_gfnet.gfnet import checkpoint_filter_fn
from timm_gfnet.global_filter import GlobalFilter, set_filter_backend

# even and odd sides, a single row or column, and sides that are not powers of two
SHAPES = [(2, 14, 14, 8), (1, 7, 7, 4), (2, 13, 21, 3), (1, 6, 10, 5), (1, 1, 1, 2), (1, 2, 2, 3), (3, 1, 8, 2),
          (1, 9, 1, 2), (1, 37, 18, 2)]


def _complex_filter(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The definition, in float64: rfft2, complex product, irfft2 (independent of the package's code)."""
    H, W = x.shape[1:3]
    y = torch.fft.rfft2(x.double(), dim=(1, 2), norm='ortho') * torch.view_as_complex(weight.double())
    return torch.fft.irfft2(y, s=(H, W), dim=(1, 2), norm='ortho')


@pytest.mark.parametrize('shape', SHAPES)
def test_matmul_is_the_real_dft(shape):
    B, H, W, C = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, W, C, dtype=torch.float64, generator=g)
    weight = torch.randn(H, W // 2 + 1, C, 2, dtype=torch.float64, generator=g)
    torch.testing.assert_close(global_filter_matmul(x, weight), _complex_filter(x, weight), rtol=0, atol=1e-12)
    # float32: both backends within float32 rounding of the definition
    x32, w32 = x.float(), weight.float()
    for fn in (global_filter_fft, global_filter_matmul):
        torch.testing.assert_close(fn(x32, w32).double(), _complex_filter(x, weight), rtol=0, atol=1e-5)


@pytest.mark.parametrize('W', [8, 9])
def test_dc_and_nyquist_bins_as_irfft(W):
    """irfft ignores the imaginary parts of the DC (and, for even W, Nyquist) bins; the c2r matrix must too."""
    H, C = 4, 3
    weight = torch.zeros(H, W // 2 + 1, C, 2, dtype=torch.float64)
    weight[..., 0] = 1.
    weight[:, 0, :, 1] = 5.  # imaginary gain on the DC column...
    if W % 2 == 0:
        weight[:, -1, :, 1] = -3.  # ...and on the Nyquist column
    x = torch.randn(2, H, W, C, dtype=torch.float64)
    torch.testing.assert_close(global_filter_matmul(x, weight), _complex_filter(x, weight), rtol=0, atol=1e-12)
    fw, fh, ih, iw = dft_matrices(H, W, dtype=torch.float64)
    wf = W // 2 + 1
    assert fw.shape == (2 * wf, W) and iw.shape == (W, 2 * wf) and fh.shape == ih.shape == (2 * H, 2 * H)
    assert (iw[:, wf] == 0).all() and (fw[wf] == 0).all()  # imaginary DC: exactly zero both ways
    if W % 2 == 0:
        assert (iw[:, -1] == 0).all() and (fw[-1] == 0).all()
    torch.testing.assert_close(ih @ fh, torch.eye(2 * H, dtype=torch.float64), rtol=0, atol=1e-12)


def test_gradients_agree():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 10, 4, dtype=torch.float64, generator=g)
    weight = torch.randn(6, 6, 4, 2, dtype=torch.float64, generator=g)
    grads = []
    for fn in (_complex_filter, global_filter_matmul):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        (fn(xi, wi) * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum().backward()
        grads.append((xi.grad, wi.grad))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)


def _model(name: str, backend: str, **kwargs) -> nn.Module:
    model = timm.create_model(name, filter_backend=backend, **kwargs).eval()
    model.load_state_dict(checkpoint_filter_fn(authors_state_dict(name), model))
    return model


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_backends_agree_on_every_variant(name):
    """Float32, the authors' weight scale: logits and features of the two backends within 1e-5."""
    model = _model(name, 'fft')
    x = input_batch()[:1]
    with torch.no_grad():
        ref_feat = model.forward_features(x)
        ref = model.forward_head(ref_feat)
        set_filter_backend(model, 'matmul')
        feat = model.forward_features(x)
        out = model.forward_head(feat)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feat, ref_feat, rtol=1e-5, atol=1e-5)


def _ops(fn, *args) -> set:
    """The counted aten ops fn(*args) runs (FlopCounterMode; the package registers formulas for the FFT ops)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return {str(op) for op in counter.get_flop_counts()['Global']}


@pytest.mark.parametrize('amp,bf16_units,expected', [
    (None, True, 'fft'), (None, False, 'fft'),
    (torch.bfloat16, True, 'matmul'), (torch.bfloat16, False, 'fft'),
    (torch.float16, True, 'fft'),  # fp16 matrix products are emulated on CPUs
], ids=['float32', 'float32-no-bf16-units', 'bf16', 'bf16-no-bf16-units', 'fp16'])
def test_auto_is_a_fixed_rule_in_eager_mode(amp, bf16_units, expected, monkeypatch):
    """Eager `auto`: the authors' fft, except under bf16 autocast on a CPU with bf16 matrix units, where the DFT
    matrix products run on them. No timing: exactly the bits of the backend the rule names, every call."""
    monkeypatch.setattr(filter_backends, 'cpu_has_bf16_units', lambda: bf16_units)
    layer = GlobalFilter(16, (6, 10))
    x = torch.randn(3, 6, 10, 16)
    with torch.no_grad(), torch.autocast('cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
        assert resolve_backend('auto', x) == expected
        out = layer(x)
        assert torch.equal(out, global_filter(x, layer.complex_weight, expected))
        assert torch.equal(layer(x), out)
        fft_ops = {'aten._fft_r2c', 'aten._fft_c2r'}
        assert (_ops(layer, x) == fft_ops) == (expected == 'fft')


def test_auto_is_matmul_when_traced():
    """jit tracing (as fvcore and the old ONNX exporter do) records the real-valued DFT, no FFT op."""
    layer = GlobalFilter(8, (6, 10))
    x = torch.randn(2, 6, 10, 8)
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert not {k for k in kinds if 'fft' in k} and 'aten::matmul' in kinds
    with torch.no_grad():
        torch.testing.assert_close(traced(x), global_filter_fft(x, layer.complex_weight), rtol=0, atol=1e-5)


def test_backend_errors():
    message = 'use one of auto, fft, matmul'
    with pytest.raises(ValueError, match=f"^Unknown filter_backend 'cufft': {message}.$"):
        GlobalFilter(8, filter_backend='cufft')
    with pytest.raises(ValueError, match=message):
        timm.create_model('gfnet_ti', filter_backend='FFT')
    with pytest.raises(ValueError, match=message):
        set_filter_backend(nn.Sequential(GlobalFilter(8)), 'dft')
    with pytest.raises(ValueError, match=f"^Unknown filter_backend 'auto ': {message}.$"):
        global_filter(torch.randn(1, 2, 2, 1), torch.randn(2, 2, 1, 2), 'auto ')


def test_checkpoints_do_not_depend_on_the_backend():
    """The DFT matrices are a cache, not state: same keys and shapes, loadable across backends."""
    a = timm.create_model('gfnet_ti', depth=2, filter_backend='fft')
    b = timm.create_model('gfnet_ti', depth=2, filter_backend='matmul')
    with torch.no_grad():
        b(torch.randn(1, 3, 224, 224))  # builds the matrices
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    assert sb['blocks.0.filter.complex_weight'].shape == (14, 8, 256, 2)
    b.load_state_dict(sa)


AMP_DTYPES = [torch.bfloat16, torch.float16]
# relative L2 error against float32, measured here (both backends, 7 variants x 2 seeds, and the layer alone):
# bf16 at most 5.9e-3, fp16 at most 7.8e-4; the bounds are about 3x that
AMP_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2.5e-3}


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_autocast_every_variant(name, dtype):
    """bf16 / fp16 autocast on CPU, both backends, a grid that is not a power of two, forward and backward.

    Depth is cut to one block per stage: the widths and stages are the variant's (bf16 matmuls are emulated on
    CPUs without bf16 units and would make the full models slow to test).
    """
    # a trained layer scale, not the 1e-3 .. 1e-6 init: fp16 filter gradients under 1e-6 need a grown GradScaler
    kwargs = dict(depth=(1, 1, 1, 1), init_values=0.1) if name.startswith('gfnet_h') else dict(depth=1)
    depth = kwargs['depth']
    model = timm.create_model(name, dynamic_img_size=True, dynamic_img_pad=True, filter_backend='fft', **kwargs)
    x = torch.randn(2, 3, 96, 160)  # token grids 6x10 (isotropic), 24x40 .. 3x5 (hierarchical)
    with torch.no_grad():
        ref = model.eval()(x)
    for backend in ('fft', 'matmul'):
        set_filter_backend(model, backend).eval()
        with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
            out = model(x)
        assert out.dtype == dtype and torch.isfinite(out).all(), backend
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < AMP_TOLERANCE[dtype], (backend, err)
        model.train()
        with torch.autocast('cpu', dtype=dtype):
            loss = model(x).float().logsumexp(-1).mean()
        (loss * 2 ** 10).backward()  # scaled as torch.amp.GradScaler does
        grad = model.get_submodule('blocks.0.filter' if depth == 1 else 'stages.0.blocks.0.filter').complex_weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, backend
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize('dtype', AMP_DTYPES, ids=['bf16', 'fp16'])
def test_matmul_runs_in_the_autocast_dtype(dtype):
    layer = GlobalFilter(8, (12, 20), filter_backend='matmul')
    x = torch.randn(2, 12, 20, 8)
    seen = []
    orig = torch.matmul

    def spy(a, b):
        seen.append((a.dtype, b.dtype))
        return orig(a, b)
    with torch.no_grad():
        ref = global_filter_fft(x, layer.complex_weight)
        torch.matmul = spy
        try:
            with torch.autocast('cpu', dtype=dtype):
                out = layer(x)
        finally:
            torch.matmul = orig
    assert seen and all(s == (dtype, dtype) for s in seen)
    assert out.dtype == x.dtype  # as the reference: the filter returns its input's dtype
    assert ((out - ref).norm() / ref.norm()).item() < AMP_TOLERANCE[dtype]


def _fft_or_complex_nodes(graphs):
    bad = []
    for gm in graphs:
        for node in gm.graph.nodes:
            val = node.meta.get('example_value')
            if 'fft' in str(node.target) or (isinstance(val, torch.Tensor) and val.is_complex()):
                bad.append(str(node.target))
    return bad


@pytest.mark.parametrize('train', [False, True], ids=['inference', 'training'])
def test_compile_has_no_graph_break_and_no_fft(train):
    model = timm.create_model('gfnet_h_ti', depth=(1, 1, 1, 1), dynamic_img_size=True).train(train)
    x = torch.randn(2, 3, 96, 128)
    fn = (lambda t: model(t).logsumexp(-1).mean()) if train else model
    with torch.set_grad_enabled(train):
        explained = torch._dynamo.explain(fn)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    # auto picks the real-valued backend under compile: nothing complex for inductor to fall back on
    assert not _fft_or_complex_nodes(explained.graphs)


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


def test_inductor_compiles_the_filter():
    layer = GlobalFilter(8, (6, 10), dynamic_size=True)
    x = torch.randn(2, 7, 9, 8)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), global_filter_fft(x, layer.filter_for(7, 9)), rtol=1e-5, atol=1e-6)

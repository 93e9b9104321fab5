"""torch.func over the global filter and the models, with both backends, trainable or frozen, with or without
grad mode: vmap, grad and jvp give what a loop over samples and autograd give."""
import pytest
import timm
import torch
from torch.func import functional_call, grad, jvp, vmap

from timm_gfnet import GlobalFilter, GlobalFilter1d, GlobalFilter3d, set_filter_backend

BACKENDS = ('fft', 'matmul')
LAYERS = [
    (lambda: GlobalFilter1d(4, 12, fmt='NCL'), (3, 2, 4, 12)),
    (lambda: GlobalFilter(4, (6, 10)), (3, 2, 6, 10, 4)),
    (lambda: GlobalFilter(4, (6, 10), fmt='NCHW', dynamic_size=True), (3, 2, 4, 7, 9)),
    (lambda: GlobalFilter3d(4, (2, 3, 4)), (3, 2, 2, 3, 4, 4)),
]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('frozen', [False, True], ids=['trainable', 'frozen'])
@pytest.mark.parametrize('make,shape', LAYERS, ids=['1d', '2d', '2d-dynamic', '3d'])
def test_layers(make, shape, frozen, backend):
    torch.manual_seed(0)
    layer = set_filter_backend(make(), backend).requires_grad_(not frozen)
    x = torch.randn(shape, dtype=torch.float64)
    layer.double()
    loop = torch.stack([layer(xi) for xi in x])
    torch.testing.assert_close(vmap(layer)(x), loop, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(vmap(layer)(x), loop, rtol=0, atol=1e-12)
    # the filter is linear in its input: the directional derivative is the filter of the direction
    t = torch.randn_like(x[0])
    y, dy = jvp(layer, (x[0],), (t,))
    torch.testing.assert_close(dy, layer(t), rtol=0, atol=1e-12)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    g = grad(lambda p, xx: functional_call(layer, p, (xx,)).square().sum())(params, x[0])
    w = layer.complex_weight.detach().clone().requires_grad_(True)
    functional_call(layer, {'complex_weight': w}, (x[0],)).square().sum().backward()
    torch.testing.assert_close(g['complex_weight'], w.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('name,kwargs', [
    ('gfnet_ti', dict(img_size=32, depth=2, embed_dim=16, num_classes=5)),
    ('gfnet_h_ti', dict(img_size=64, depth=(1, 1, 1, 1), embed_dim=(8, 8, 16, 16), num_classes=5)),
])
def test_per_sample_gradients(name, kwargs, backend):
    """vmap(grad(...)): the per-sample gradients of every parameter, as a loop of backward passes gives them."""
    torch.manual_seed(0)
    model = timm.create_model(name, filter_backend=backend, **kwargs).eval().double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 3, kwargs['img_size'], kwargs['img_size'], dtype=torch.float64)
    y = torch.tensor([0, 3, 4])

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi[None],))
        return torch.nn.functional.cross_entropy(logits, yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, rtol=0, atol=1e-10, msg=k)
    # forward mode through the whole model equals reverse mode (autograd's double-backward jvp); the fft backend
    # computes its FFTs in float32, as the authors do, hence its looser bound
    t = torch.randn_like(x[:1])
    _, dy = jvp(model, (x[:1],), (t,))
    _, reverse = torch.autograd.functional.jvp(model, x[:1], t)
    torch.testing.assert_close(dy, reverse, rtol=0, atol=1e-6 if backend == 'fft' else 1e-10)

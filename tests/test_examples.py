"""The README's layer examples, run as written: a global filter in a timm CNN, a 1-D sequence model and a 3-D
volume model, each trained for one step. Tiny sizes: they document shapes and that gradients reach the filter."""
import timm
import torch
import torch.nn as nn

from timm_gfnet import GlobalFilter, GlobalFilter1d, GlobalFilter3d


def _one_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, filters: list) -> torch.Tensor:
    """One SGD step; returns the loss. Every filter must get a gradient and change."""
    before = [f.complex_weight.detach().clone() for f in filters]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    for f in filters:
        assert f.complex_weight.grad is not None and f.complex_weight.grad.abs().sum() > 0
    opt.step()
    for f, b in zip(filters, before):
        assert not torch.equal(f.complex_weight, b)
    return loss.detach()


def test_global_filter_in_a_timm_resnet():
    # README: a global filter after a ResNet stage, on its NCHW map: no rearranging
    model = timm.create_model('resnet10t', num_classes=10)
    model.layer3 = nn.Sequential(model.layer3, GlobalFilter(256, (7, 7), fmt='NCHW'))  # 112 px in: 7x7 at stride 16
    x = torch.randn(2, 3, 112, 112)
    assert model.forward_features(x).shape == (2, 512, 4, 4)
    loss = _one_step(model, x, torch.tensor([1, 7]), [model.layer3[1]])
    assert torch.isfinite(loss)


class SequenceMixer(nn.Module):
    """A GFNet block for sequences: norm, 1-D global filter, norm, MLP, one residual."""

    def __init__(self, dim: int, length: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.filter = GlobalFilter1d(dim, length)  # (B, L, C), complex_weight (L // 2 + 1, C, 2)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm2(self.filter(self.norm1(x))))


def test_sequence_model():
    model = nn.Sequential(nn.Embedding(100, 32), SequenceMixer(32, 64), SequenceMixer(32, 64),
                          nn.LayerNorm(32), nn.Flatten(1), nn.Linear(64 * 32, 3))
    tokens = torch.randint(0, 100, (4, 64))
    assert model[:3](tokens).shape == (4, 64, 32)
    assert model[1].filter.complex_weight.shape == (33, 32, 2)
    loss = _one_step(model, tokens, torch.tensor([0, 1, 2, 0]), [model[1].filter, model[2].filter])
    assert torch.isfinite(loss)


def test_volume_model():
    model = nn.Sequential(
        nn.Conv3d(1, 8, kernel_size=4, stride=4),                 # (B, 1, 16, 32, 32) -> (B, 8, 4, 8, 8)
        GlobalFilter3d(8, (4, 8, 8), fmt='NCDHW'),                # complex_weight (4, 8, 5, 8, 2)
        nn.GELU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(8, 2),
    )
    x = torch.randn(2, 1, 16, 32, 32)
    assert model[:2](x).shape == (2, 8, 4, 8, 8) and model[1].complex_weight.shape == (4, 8, 5, 8, 2)
    loss = _one_step(model, x, torch.tensor([0, 1]), [model[1]])
    assert torch.isfinite(loss)

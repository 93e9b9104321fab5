"""Pictures of the learned global filters: magnitude spectra per layer, as in the GFNet paper's figure.

Each layer's filter is stored as the half spectrum (h, w // 2 + 1) of a real signal; the picture shows the whole
(h, w) spectrum (the missing half is the conjugate mirror, same magnitude) shifted so that the zero frequency is in
the centre, averaged over channels or for single channels.
"""
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .atomic import atomic_path
from .global_filter import GlobalFilter

__all__ = ['filter_spectra', 'full_magnitude', 'plot_filters', 'pyplot', 'save_figure']


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("Plots need matplotlib: pip install 'timm-gfnet[plot]'.") from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: Any, out: Union[str, Path], dpi: int) -> Path:
    """`fig.savefig` to exactly `out` (matplotlib would add '.png' to a name without a suffix), all or nothing."""
    out = Path(out)
    known = fig.canvas.get_supported_filetypes()
    fmt = out.suffix[1:].lower() if out.suffix[1:].lower() in known else 'png'
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return out


def full_magnitude(weight: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
    """|filter| over the whole centred (h, w, C) spectrum, from the stored (h, w // 2 + 1, C, 2) half."""
    h, w = grid_size
    half = torch.view_as_complex(weight.detach().float().contiguous()).abs()  # (h, wf, C)
    full = half.new_zeros(h, w, half.shape[-1])
    wf = half.shape[1]
    full[:, :wf] = half
    # X[kh, kw] = conj(X[-kh, -kw]) for a real signal: the columns past the half mirror both axes
    rest = torch.arange(wf, w)
    full[:, rest] = half[(-torch.arange(h)) % h][:, (-rest) % w]
    return torch.fft.fftshift(full, dim=(0, 1))


def filter_spectra(
        model: nn.Module,
        channels: Optional[int] = None,
) -> List[Tuple[str, torch.Tensor]]:
    """(layer name, spectra) for every GlobalFilter: (1, h, w) channel mean, or (channels, h, w) single channels."""
    out = []
    widths = [m.dim for m in model.modules() if isinstance(m, GlobalFilter)]
    if channels is not None and widths and not 1 <= channels <= min(widths):
        raise ValueError(f'channels={channels}: the narrowest filter layer has {min(widths)} channels; pass '
                         f'1 to {min(widths)}, or leave it out for the mean over channels.')
    for name, m in model.named_modules():
        if isinstance(m, GlobalFilter):
            mag = full_magnitude(m.complex_weight, m.grid_size)
            spec = mag.mean(-1, keepdim=True) if channels is None else mag[..., :channels]
            out.append((name, spec.permute(2, 0, 1)))
    if not out:
        raise ValueError('The model has no GlobalFilter layers: pass a GFNet model (see `timm-gfnet models`).')
    return out


def plot_filters(
        model: nn.Module,
        out: Union[str, Path],
        channels: Optional[int] = None,
        log: bool = False,
) -> Path:
    """Write a picture with one panel per layer (a row of `channels` panels per layer when given) to `out`, exactly
    that path, all or nothing; its format follows the suffix (PNG when it has none matplotlib knows)."""
    plt = pyplot()
    spectra = filter_spectra(model, channels)
    n = len(spectra)
    if channels is None:
        cols = min(n, 6)
        rows = -(-n // cols)
    else:
        cols, rows = spectra[0][1].shape[0], n
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for i, (name, spec) in enumerate(spectra):
        for j in range(spec.shape[0]):
            ax = axes[i // cols, i % cols] if channels is None else axes[i, j]
            img = spec[j].log() if log else spec[j]
            ax.imshow(img.numpy(), cmap='viridis', interpolation='nearest')
            label = name.replace('.filter', '').replace('stages.', 's').replace('blocks.', 'b')
            ax.set_title(label if channels is None else f'{label} c{j}', fontsize=7)
    fig.suptitle('learned global filters: |filter|, zero frequency at the centre', fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title
    out = save_figure(fig, out, dpi=110)
    plt.close(fig)
    return out

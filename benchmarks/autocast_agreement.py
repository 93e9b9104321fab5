"""How closely the filter backends agree under bf16 / fp16 autocast, for every variant.

Weights: the recipe of tests/reference.py (the authors' weight scale, the one the parity tests use); input: its
deterministic 2-image batch at 224. For each variant and autocast dtype, both backends run under the same autocast;
the table gives which one `auto` runs on this machine, each one's relative error of the logits against float32 (the
reference fft backend), the largest logit difference between the two backends, and whether they pick the same top-1
classes.

    python benchmarks/autocast_agreement.py [--device cpu|cuda] [--variants gfnet_ti ...]
"""
import argparse
import platform
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from reference import MODEL_NAMES, authors_state_dict, input_batch  # noqa: E402
from timm_gfnet import filter_backends  # noqa: E402 - the rule itself, to print what it picks
from timm_gfnet.gfnet import checkpoint_filter_fn  # noqa: E402
from timm_gfnet.global_filter import set_filter_backend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--variants', nargs='+', default=MODEL_NAMES)
    args = parser.parse_args()
    dev = torch.device(args.device)
    x = input_batch().to(dev)
    if dev.type == 'cuda':
        name = torch.cuda.get_device_name(dev)
    else:  # the CPU and the half-precision matrix instructions the `auto` rule looks for
        units = sorted(filter_backends._cpu_features() & set().union(*filter_backends._HALF_UNITS.values()))
        name = f"{platform.processor() or platform.machine()} ({', '.join(units) or 'no bf16 / fp16 matrix units'})"
    print(f'device: {name}, {torch.get_num_threads()} threads, torch {torch.__version__}')
    header = ('variant', 'autocast', 'auto runs', 'fft rel err', 'matmul rel err', 'max |fft - matmul|',
              'max |logit|', 'top-1')
    rows = []
    for name in args.variants:
        model = timm.create_model(name).eval()
        model.load_state_dict(checkpoint_filter_fn(authors_state_dict(name), model))
        model.to(dev)
        with torch.inference_mode():
            ref = set_filter_backend(model, 'fft')(x).float()
        for dtype in (torch.bfloat16, torch.float16):
            out = {}
            for backend in ('fft', 'matmul'):
                with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
                    out[backend] = set_filter_backend(model, backend)(x).float()
            err = {b: ((o - ref).norm() / ref.norm()).item() for b, o in out.items()}
            same = (out['fft'].argmax(-1) == out['matmul'].argmax(-1)).all().item()
            auto = filter_backends._auto_backend(x, dtype)
            rows.append((name, str(dtype).split('.')[-1], auto, f"{err['fft']:.2e}", f"{err['matmul']:.2e}",
                         f"{(out['fft'] - out['matmul']).abs().max().item():.2e}", f'{ref.abs().max().item():.2f}',
                         'same' if same else 'differs'))
            print(*rows[-1], sep='  ', file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, r in enumerate([header, *rows]):
        print(' | '.join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print(' | '.join('-' * w for w in widths))


if __name__ == '__main__':
    main()

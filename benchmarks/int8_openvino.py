"""int8 with NNCF's defaults against OpenVINO f32 and OpenVINO's own default precision (bf16 on CPUs with bf16 units),
on `export_onnx`'s file: accuracy against PyTorch float32 and latency, as a markdown table.

Weights: the recipe of tests/reference.py (the authors' weight scale); images: its 2-image batch and 14 random ones
(accuracy), 16 other random ones (NNCF's calibration set). Latency: batch 1, one inference thread, CPU time of the
process (time descheduled by other jobs on shared cores is not counted), the three compiled models in turn each round;
the ratio to f32 is the median of the per-round ratios.

    PYTHONPATH=. python benchmarks/int8_openvino.py [--variant gfnet_ti] [--rounds 40] [--out DIR]
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import timm
import torch

from timm_gfnet.onnx_export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from reference import authors_state_dict, input_batch  # noqa: E402


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cpu() -> str:
    info = dict(line.split(':', 1) for line in subprocess.run(['lscpu'], capture_output=True, text=True).stdout
                .splitlines() if ':' in line)
    flags = sorted(f for f in info.get('Flags', '').split() if f.startswith(('amx', 'avx512_bf16', 'avx512_fp16',
                                                                           'avx512_vnni', 'avx_vnni')))
    return f'{info.get("Model name", "?").strip()} ({", ".join(flags) or "no AMX / AVX512-BF16 / VNNI"})'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', default='gfnet_ti')
    parser.add_argument('--rounds', type=int, default=40)
    parser.add_argument('--out', default=None, help='folder for the ONNX file (default: a temporary one)')
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = timm.create_model(args.variant).eval()
    model.load_state_dict(authors_state_dict(args.variant))
    g = torch.Generator().manual_seed(0)
    images = torch.cat([input_batch(), torch.randn(14, 3, 224, 224, generator=g)])
    calib = torch.randn(16, 1, 3, 224, 224, generator=g)
    with torch.no_grad():
        ref = model(images).numpy()
    out = Path(args.out or tempfile.mkdtemp())
    path = export_onnx(model, out / f'{args.variant}.onnx')

    core = ov.Core()
    t = time.perf_counter()
    int8 = nncf.quantize(core.read_model(str(path)), nncf.Dataset([c.numpy() for c in calib]))  # NNCF's defaults
    quantize_s = time.perf_counter() - t
    one = {'INFERENCE_NUM_THREADS': 1}
    nets = {
        'f32': core.compile_model(str(path), 'CPU', {**one, 'INFERENCE_PRECISION_HINT': 'f32'}),
        'default': core.compile_model(str(path), 'CPU', one),
        'int8 (NNCF defaults)': core.compile_model(int8, 'CPU', one),
    }
    default = nets['default'].get_property('INFERENCE_PRECISION_HINT').to_string()
    nets[f'{default} (OpenVINO default)'] = nets.pop('default')
    x1 = images[:1].numpy()
    times = {k: [] for k in nets}
    for r in range(args.rounds + 3):  # 3 warm-up rounds
        for k, c in nets.items():
            t = time.process_time()
            c(x1)
            if r >= 3:
                times[k].append(time.process_time() - t)

    print(f'{args.variant} at 224, {_cpu()}, OpenVINO {ov.__version__.split("-")[0]}, NNCF {nncf.__version__}, '
          f'torch {torch.__version__}; nncf.quantize took {quantize_s:.0f} s')
    print(f'accuracy: {len(images)} images vs PyTorch float32; latency: batch 1, 1 thread, CPU time, {args.rounds} '
          f'interleaved rounds\n')
    print('| OpenVINO | rel. L2 of logits vs f32 | same top-1 | latency (median ms) | latency / f32 latency |')
    print('|---|---|---|---|---|')
    for k, c in nets.items():
        logits = np.concatenate([c(images[i:i + 1].numpy())[0] for i in range(len(images))])
        same = int((logits.argmax(1) == ref.argmax(1)).sum())
        ratio = statistics.median(a / b for a, b in zip(times[k], times['f32']))
        print(f'| {k} | {_rel(logits, ref):.1e} | {same}/{len(images)} | {statistics.median(times[k]) * 1e3:.1f} | '
              f'{ratio:.2f}x |')


if __name__ == '__main__':
    main()

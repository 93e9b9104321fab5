"""ONNX export of gfnet_ti with the prototype filter (full2d: DFT matrices as right operands of MatMul, the filter as
a Mul constant, no Gather on a weight), quantized by NNCF with its defaults; int8 vs f32 / bf16 OpenVINO.
Usage: nncf_proto.py [OUTDIR]. Weights: the authors' weight recipe (tests/reference.py)."""
import os
import statistics
import sys
import time

import numpy as np
import timm
import torch
from filters import _g4, _sep_t_matrices, full2d_matrices
from model import forward_fused

import timm_gfnet  # noqa: F401
from timm_gfnet.gfnet import checkpoint_filter_fn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tests'))
from reference import authors_state_dict, input_batch  # noqa: E402

torch.set_num_threads(1)


class Proto(torch.nn.Module):
    """The prototype forward with the DFT matrices as buffers: constants in the export (initializers that NNCF sees
    as MatMul weights), not a Cos / Sin subgraph traced from the builder."""
    def __init__(self, m, grid=(14, 14), separable=False):
        super().__init__()
        self.m = m
        self.separable = separable
        self.register_buffer('fwd', full2d_matrices(*grid, torch.float32)[0].clone())
        self.register_buffer('g4', _g4(*grid, torch.float32).clone())
        for name, t in zip(('fw', 'fh', 'ih4', 'iw'), _sep_t_matrices(*grid, torch.float32)):
            self.register_buffer(name, t.clone())

    def forward(self, x):
        if self.separable:  # filter_sep_t: four constant right operands per filter
            return forward_fused(self.m, x, full2d_max_tokens=0, sep_mats=(self.fw, self.fh, self.ih4, self.iw))
        return forward_fused(self.m, x, mats=(self.fwd, self.g4))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else '/tmp/perf_nncf'
    os.makedirs(out, exist_ok=True)
    m = timm.create_model('gfnet_ti').eval()
    m.load_state_dict(checkpoint_filter_fn(authors_state_dict('gfnet_ti'), m))
    separable = os.environ.get('FORM') == 'sep_t'
    p = Proto(m, separable=separable).eval()
    print('filter form:', 'sep_t (separable)' if separable else 'full2d')
    imgs = torch.cat([input_batch(), torch.randn(14, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    with torch.inference_mode():
        ref = m(imgs).numpy()  # main, float32 (fft backend): the authors' formulation
        print('proto fp32 vs main fp32 rel L2', rel(p(imgs).numpy(), ref))
    path = os.path.join(out, 'gfnet_ti_proto.onnx')
    torch.onnx.export(p, (imgs[:1],), path, dynamo=True, opset_version=18)
    import onnx
    g = onnx.load(path).graph
    ops = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print('onnx ops', ops)
    import nncf
    import openvino as ov
    core = ov.Core()
    ovm = core.read_model(path)
    calib = nncf.Dataset([imgs[i:i + 1].numpy() for i in range(imgs.shape[0])])
    t = time.time()
    q = nncf.quantize(ovm, calib)  # defaults
    print(f'nncf.quantize defaults: ok in {time.time() - t:.0f} s')
    ov.save_model(q, os.path.join(out, 'gfnet_ti_proto_int8.xml'))
    cfg = {'INFERENCE_NUM_THREADS': 1}
    nets = {
        'OpenVINO f32': core.compile_model(core.read_model(path), 'CPU', {**cfg, 'INFERENCE_PRECISION_HINT': 'f32'}),
        'OpenVINO default (bf16)': core.compile_model(core.read_model(path), 'CPU', cfg),
        'OpenVINO int8 (NNCF defaults)': core.compile_model(q, 'CPU', cfg),
    }
    for k, c in nets.items():
        o = np.concatenate([c(imgs[i:i + 1].numpy())[0] for i in range(imgs.shape[0])])
        top1 = int((o.argmax(1) == ref.argmax(1)).sum())
        print(f'{k}: rel L2 vs PyTorch f32 {rel(o, ref):.2e}, top-1 same on {top1}/{len(o)}')
    x1 = imgs[:1].numpy()
    times = {k: [] for k in nets}
    for _ in range(3):
        for c in nets.values():
            c(x1)
    for _ in range(40):
        for k, c in nets.items():
            t = time.process_time()
            c(x1)
            times[k].append(time.process_time() - t)
    base = times['OpenVINO f32']
    for k, v in times.items():
        ratio = statistics.median(a / b for a, b in zip(v, base))
        print(f'{k}: latency / f32 latency, median of per-round ratios {ratio:.2f}'
              f' (median {statistics.median(v) * 1e3:.1f} ms CPU, batch 1, 1 thread)')


if __name__ == '__main__':
    main()

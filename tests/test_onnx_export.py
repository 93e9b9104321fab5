"""`timm_gfnet.onnx_export` and `timm-gfnet export-onnx`: the graph has no FFT ops, the batch is dynamic, the opset is
the one asked for, and onnxruntime and OpenVINO match PyTorch within 1e-4."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from reference import authors_state_dict, input_batch, write_authors_checkpoint
from timm_gfnet.cli import main
from timm_gfnet.gfnet import checkpoint_filter_fn
from timm_gfnet.hub import save_for_hub
from timm_gfnet.onnx_export import check_openvino, export_onnx


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _assert_portable(path) -> None:
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {'DFT', 'STFT'}, ops  # the point of the matmul backend
    assert 'MatMul' in ops
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, 'the batch axis must be dynamic'


# small checkpoints of both families, as `convert` writes them (their architecture in config.json's model_args, which
# timm < 1.0.31's save_for_hf does not record): what `--checkpoint` takes
TINY = {
    'gfnet_ti': dict(depth=1, embed_dim=32, img_size=64, num_classes=5),
    'gfnet_h_ti': dict(depth=(1, 1, 1, 1), embed_dim=(8, 16, 24, 32), img_size=64, num_classes=5),
}


@pytest.mark.parametrize('name', list(TINY))
def test_export_cli(name, tmp_path, capsys):
    """`export-onnx --checkpoint`: checked in onnxruntime and OpenVINO by the command, then here in onnxruntime at a
    batch size the command did not use, against the model loaded back by plain timm."""
    save_for_hub(timm.create_model(name, **TINY[name]), tmp_path / 'ckpt')
    out = tmp_path / f'{name}.onnx'
    assert main(['export-onnx', '--checkpoint', str(tmp_path / 'ckpt'), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'onnxruntime matches PyTorch' in printed and 'OpenVINO matches PyTorch in f32: max abs diff ' in printed
    assert printed.endswith('input "input" (batch, 3, 64, 64) float32, dynamic batch; output "output"\n')
    _assert_portable(out)
    model = timm.create_model(f'local-dir:{tmp_path / "ckpt"}', pretrained=True).eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(_run(out, x), model(x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.slow  # the same resampling is checked in test_resolution / test_loader; the flag in test_kept
def test_export_cli_img_size_resamples_the_checkpoint(tmp_path, capsys):
    """--img-size: the model is created at that size and the checkpoint's filters and pos_embed resampled on load
    (bicubic, as the authors fine-tune at 384), then exported at that size."""
    ckpt = write_authors_checkpoint('gfnet_ti', tmp_path / 'ti.pth')
    out = tmp_path / 'ti256.onnx'
    assert main(['export-onnx', '--checkpoint', str(ckpt), '--img-size', '256', '--out', str(out), '--no-check']) == 0
    assert 'input "input" (batch, 3, 256, 256)' in capsys.readouterr().out
    assert [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 256, 256]
    # the reference: resampled here from the raw tensors with the authors' modes, not by our loader
    sd = authors_state_dict('gfnet_ti')
    pos = sd['pos_embed'].reshape(1, 14, 14, 256).permute(0, 3, 1, 2)
    pos = torch.nn.functional.interpolate(pos, size=(16, 16), mode='bicubic', align_corners=False)
    sd['pos_embed'] = pos.permute(0, 2, 3, 1).reshape(1, 256, 256)
    for k in [k for k in sd if k.endswith('complex_weight')]:
        w = sd[k].reshape(1, 14, 8, 512).permute(0, 3, 1, 2)
        w = torch.nn.functional.interpolate(w, size=(16, 9), mode='bicubic', align_corners=True)
        sd[k] = w.permute(0, 2, 3, 1).reshape(16, 9, 256, 2)
    model = timm.create_model('gfnet_ti', img_size=256).eval()
    model.load_state_dict(sd)
    x = torch.randn(3, 3, 256, 256)
    with torch.no_grad():
        np.testing.assert_allclose(_run(out, x), model(x).numpy(), rtol=0, atol=1e-4)


def test_the_opset_asked_for_or_one_line_error(tmp_path, capsys):
    """An opset is written as asked (the file says so, and onnxruntime runs it at batch sizes other than the example
    batch), or refused in one line with nothing written; torch alone would write opset 18 and only log it."""
    model = timm.create_model('gfnet_ti', **TINY['gfnet_ti']).eval()
    path = export_onnx(model, tmp_path / 'o21.onnx', opset=21)
    assert [(o.domain, o.version) for o in onnx.load(str(path)).opset_import if o.domain == ''] == [('', 21)]
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            np.testing.assert_allclose(_run(path, x), model(x).numpy(), rtol=0, atol=1e-4)
    assert main(['export-onnx', '--model', 'gfnet_ti', '--opset', '13', '--out', str(tmp_path / 'o13.onnx')]) == 1
    assert capsys.readouterr().err == ('timm-gfnet export-onnx: error: opset 13: the ONNX exporter writes opset 18 and '
                                       'newer; pass 18 or newer, or no opset for its default.\n')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['o21.onnx']


def test_export_cli_errors(tmp_path, capsys):
    assert main(['export-onnx', '--model', 'gfnet_nope', '--out', str(tmp_path / 'x.onnx')]) == 1
    assert "Unknown model 'gfnet_nope'" in capsys.readouterr().err
    assert main(['export-onnx', '--model', 'gfnet_ti', '--checkpoint', str(tmp_path / 'missing.pth'),
                 '--out', str(tmp_path / 'x.onnx')]) == 1
    assert 'No checkpoint file or folder at' in capsys.readouterr().err


def test_openvino_runs_the_export_and_says_what_its_default_precision_does(tmp_path):
    """OpenVINO itself, not our check: the file runs there in f32 within 1e-4; check_openvino names the precision
    OpenVINO picks on this CPU (what its own property says) and how far that moves the logits."""
    import openvino as ov

    model = timm.create_model('gfnet_ti', **TINY['gfnet_ti']).eval()
    path = export_onnx(model, tmp_path / 'ti.onnx')
    x = torch.randn(3, 3, 64, 64)
    compiled = ov.Core().compile_model(str(path), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy())[0], model(x).numpy(), rtol=0, atol=1e-4)
    info = check_openvino(model, path)
    default = ov.Core().compile_model(str(path), 'CPU').get_property('INFERENCE_PRECISION_HINT').to_string()
    assert info['default_precision'] == default and info['f32_max_abs_diff'] < 1e-4
    # f32 by default: the same numbers; a lower precision (bf16 on CPUs with bf16 units) moves them, measurably
    assert (info['default_max_abs_diff'] < 1e-4) == (default == 'f32')



# torch < 2.7 has no torch.compiler.is_exporting, and its exporter fails on the right-operand form: the export there
# keeps the eager form, which NNCF's defaults cannot quantize (docs/export.md)
needs_is_exporting = pytest.mark.skipif(not hasattr(torch.compiler, 'is_exporting'),
                                        reason='the NNCF-ready export needs torch >= 2.7 (torch.compiler.is_exporting)')


def _assert_nncf_ready(path) -> None:
    """What NNCF needs to scale constants: no Gather picking the filter's real / imaginary parts out of one weight
    initializer (its quantize raises a KeyError on them), and every MatMul's constant on the right (a constant left
    operand gets per-row scales, which OpenVINO's CPU plugin refuses to compile)."""
    graph = onnx.load(str(path)).graph
    consts = {i.name for i in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == 'Gather' and n.input[0] in consts]
    matmuls = [n for n in graph.node if n.op_type == 'MatMul']
    assert matmuls and not [n.name for n in matmuls if n.input[0] in consts]
    assert all(n.input[1] in consts for n in matmuls)  # the DFT matrices too: constants, not a Sin / Cos subgraph


def _int8(path, calib: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """NNCF's defaults on OpenVINO's reading of the file, compiled for the CPU: the int8 logits of `x`."""
    nncf = pytest.importorskip('nncf')
    import openvino as ov

    core = ov.Core()
    int8 = nncf.quantize(core.read_model(str(path)), nncf.Dataset([c[None].numpy() for c in calib]))
    return core.compile_model(int8, 'CPU')(x.numpy())[0]


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_is_exporting
def test_int8_with_nncf_defaults_within_3e_2_of_f32(tmp_path):
    """The issue's target on the model it was measured on: gfnet_ti at 224, the authors' weight scale, NNCF's
    defaults calibrated on 8 random images; OpenVINO compiles the result. Bound: 2.3e-2 here, on 16 other images
    (Xeon with AMX-INT8, OpenVINO 2026.4), and gfnet_s 2.5e-2 (docs/export.md): int8 rounding of 256-channel
    activations per tensor and weights per channel, 23% headroom; same top-1 on all 16."""
    model = timm.create_model('gfnet_ti').eval()
    model.load_state_dict(checkpoint_filter_fn(authors_state_dict('gfnet_ti'), model))
    path = export_onnx(model, tmp_path / 'ti.onnx')
    _assert_nncf_ready(path)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([input_batch(), torch.randn(14, 3, 224, 224, generator=g)])
    got = _int8(path, torch.randn(8, 3, 224, 224, generator=g), x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert _rel_l2(got, ref) < 3e-2 and (got.argmax(1) == ref.argmax(1)).all()


@needs_is_exporting
def test_hierarchical_export_is_what_nncf_quantizes(tmp_path):
    """The same for the hierarchical family (downsampling layers, four filter sizes), small. Bound: 8-32 channels and
    logits near 0.02 are too few and too small for int8 rounding noise to average out (2-12e-2 over seeds, mostly
    from the MLPs: leaving the filter's products in float32 changes it little); 0.25 still fails wrong scales (~1)."""
    torch.manual_seed(0)
    model = timm.create_model('gfnet_h_ti', **TINY['gfnet_h_ti']).eval()
    path = export_onnx(model, tmp_path / 'h_ti.onnx')
    _assert_nncf_ready(path)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 64, 64, generator=g)
    got = _int8(path, torch.randn(8, 3, 64, 64, generator=g), x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape and _rel_l2(got, ref) < 0.25

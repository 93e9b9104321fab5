"""ONNX export: the graph has no FFT ops, the batch is dynamic, and onnxruntime matches PyTorch within 1e-4."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from reference import input_batch, write_authors_checkpoint
from timm_gfnet.cli import main
from timm_gfnet.onnx_export import check_onnx, create_for_export, export_onnx

torch.set_num_threads(1)


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


def _cli_export(name: str, tmp_path, capsys):
    ckpt = write_authors_checkpoint(name, tmp_path / f'{name}.pth')
    out = tmp_path / f'{name}.onnx'
    assert main(['export-onnx', '--model', name, '--checkpoint', str(ckpt), '--out', str(out)]) == 0
    assert 'onnxruntime matches PyTorch' in capsys.readouterr().out
    _assert_portable(out)
    # independently of the command's own check: the authors' weights, a batch size not used at export
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    x = torch.cat([input_batch(), input_batch().flip(0), input_batch()[:1]])
    with torch.no_grad():
        np.testing.assert_allclose(_run(out, x), model(x).numpy(), rtol=0, atol=1e-4)


def test_export_cli_isotropic(tmp_path, capsys):
    _cli_export('gfnet_ti', tmp_path, capsys)


def test_export_cli_hierarchical(tmp_path, capsys):
    _cli_export('gfnet_h_ti', tmp_path, capsys)


def test_export_hierarchical_other_size(tmp_path):
    """The hierarchical family (one block per stage, the variant's widths) at a size the model was created for."""
    model = create_for_export('gfnet_h_ti', depth=(1, 1, 1, 1), img_size=160)
    path = export_onnx(model, tmp_path / 'h.onnx')
    _assert_portable(path)
    info = check_onnx(model, path, batch_sizes=(1, 4))
    assert info['max_abs_diff'] < 1e-4 and 'DFT' not in info['ops']
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, x), model(x).numpy(), rtol=0, atol=1e-4)


def test_export_refuses_a_size_the_model_does_not_take(tmp_path):
    model = create_for_export('gfnet_ti', depth=1)
    with pytest.raises(ValueError, match='created for 224x224 images, not 160x160: create it with img_size=160'):
        export_onnx(model, tmp_path / 'x.onnx', img_size=160)


def test_export_cli_errors(tmp_path, capsys):
    assert main(['export-onnx', '--model', 'gfnet_nope', '--out', str(tmp_path / 'x.onnx')]) == 1
    assert "Unknown model 'gfnet_nope'" in capsys.readouterr().err
    assert main(['export-onnx', '--model', 'gfnet_ti', '--checkpoint', str(tmp_path / 'missing.pth'),
                 '--out', str(tmp_path / 'x.onnx')]) == 1
    assert 'missing.pth does not exist' in capsys.readouterr().err

"""ONNX export of GFNet models, checked against PyTorch with onnxruntime (and OpenVINO, when installed).

The FFT ops of the authors' filter do not export (onnx/onnx#3573); under export the `auto` filter backend switches
to real DFT matrix products (`matmul`), so the graph holds only MatMul and element-wise ops that every runtime has.
The DFT matrices and the filters' real and imaginary parts are initializers of their own, each a MatMul's right
operand or a Mul's: what NNCF's `quantize` takes with its defaults (int8 for OpenVINO).
"""
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

__all__ = ['export_onnx', 'check_onnx', 'check_openvino']


def _input_size(model: nn.Module) -> tuple:
    """(C, H, W) the model was created for: what is exported (a dynamic-size model is specialised to it)."""
    return (model.in_chans, *model.patch_embed.img_size)


def export_onnx(model: nn.Module, out: Union[str, Path], opset: Optional[int] = None) -> Path:
    """Export `model` (NCHW float32 input named 'input', output 'output') to `out`, at `opset` (default: the
    exporter's) or a ValueError.

    The batch axis is dynamic; height and width are the model's input size (`timm.create_model(..., img_size=N)`
    for another one). A model created with dynamic_img_size=True is still exported at that one size: the filter and
    position-embedding resampling is specialised to it.
    """
    import onnxscript.optimizer

    if opset is not None and opset < 18:  # torch's exporter writes 18 up; its conversion down fails on our graph
        raise ValueError(f'opset {opset}: the ONNX exporter writes opset 18 and newer; pass 18 or newer, or no opset '
                         f'for its default.')
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # an example batch of 2: torch.export would specialise a batch of 1 to a fixed size
    x = torch.randn(2, *_input_size(model))
    # positional: torch < 2.7 renames a dict of them after input_names and then fails to find 'x'
    with torch.no_grad():
        program = torch.onnx.export(
            model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=4096)},),
            opset_version=opset, input_names=['input'], output_names=['output'], external_data=False, verbose=False)
    # fold constants of any size (torch folds those up to 8192 elements): the filters' real and imaginary parts become
    # initializers of their own, which NNCF quantizes around (a Gather from one weight initializer stops it)
    program.model = onnxscript.optimizer.optimize(program.model, input_size_limit=2 ** 31, output_size_limit=2 ** 31)
    written = program.model.opset_imports['']
    if opset is not None and written != opset:  # torch would only log it
        raise ValueError(f'opset {opset}: the ONNX exporter could not write it (it made opset {written}); pass '
                         f'opset {written}, or no opset for its default.')
    program.save(str(out))
    return out


def _max_diff(model: nn.Module, run, batch_sizes: tuple, seed: int) -> float:
    """Largest |difference| between PyTorch (float32) and `run(numpy batch) -> numpy logits` on random inputs."""
    g = torch.Generator().manual_seed(seed)
    diff = 0.
    for b in batch_sizes:
        x = torch.randn(b, *_input_size(model), generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = run(x.numpy())
        if got.shape != ref.shape:
            raise RuntimeError(f'the exported model gave an output of shape {got.shape} for batch {b}, PyTorch '
                               f'{ref.shape}.')
        diff = max(diff, float(abs(got - ref).max()))
    return diff


def check_onnx(
        model: nn.Module,
        path: Union[str, Path],
        batch_sizes: tuple = (1, 3),
        seed: int = 0,
) -> Dict[str, Any]:
    """Run the ONNX file in onnxruntime on random inputs and compare with PyTorch (float32).

    Returns {'max_abs_diff', 'batch_sizes', 'ops'}: the largest difference over the batch sizes tried and the
    set of ONNX op types in the graph (no DFT among them).
    """
    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    diff = _max_diff(model, lambda x: session.run(None, {name: x})[0], batch_sizes, seed)
    ops = sorted({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node})
    return {'max_abs_diff': diff, 'batch_sizes': batch_sizes, 'ops': ops}


def check_openvino(
        model: nn.Module,
        path: Union[str, Path],
        batch_sizes: tuple = (1, 3),
        seed: int = 0,
) -> Optional[Dict[str, Any]]:
    """Run the ONNX file in OpenVINO (CPU) in float32 and in the precision OpenVINO picks by itself on this machine
    (bf16 on CPUs with bf16 units, for one), against PyTorch. None when OpenVINO is not installed.

    Returns {'f32_max_abs_diff', 'default_precision', 'default_max_abs_diff'}.
    """
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    out: Dict[str, Any] = {}
    for hint in ('f32', None):
        compiled = core.compile_model(str(path), 'CPU', {'INFERENCE_PRECISION_HINT': hint} if hint else {})
        diff = _max_diff(model, lambda x, c=compiled: c(x)[0], batch_sizes, seed)
        if hint:
            out['f32_max_abs_diff'] = diff
        else:
            out['default_precision'] = compiled.get_property('INFERENCE_PRECISION_HINT').to_string()
            out['default_max_abs_diff'] = diff
    return out

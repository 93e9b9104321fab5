"""Checkpoints: read them safely, recognise the GFNet they hold, check they fit a model, and the one loader.

The authors' released files are full training checkpoints: weights under "model", optimizer state, and an
`argparse.Namespace` under "args". Nothing in them may run code on load, so the only type allowed beyond what
`weights_only` accepts is `argparse.Namespace` (a plain attribute bag).

`load_model` is how every command (convert, predict, export-onnx, viz, push) and the Python API get a model from
any source: an authors' `.pth`, our `.safetensors`, a folder from `convert` / timm's `save_for_hf`, `hf-hub:` /
`local-dir:`, or a registered name's pretrained weights. A checkpoint keeps its own classifier unless the caller
asks for another `num_classes`.

timm is imported where it is used: the plugin autoload imports `timm_gfnet.gfnet` (which imports this module)
while `import timm` runs.
"""
import argparse
import functools
import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'CheckpointError', 'WEIGHT_FILES', 'read_checkpoint', 'read_weights', 'unwrap_state_dict', 'checkpoint_arch',
    'describe_arch', 'infer_variant', 'check_architecture', 'check_values', 'check_fits', 'load_model',
    'weights_digest',
]

# "model" first: the authors evaluate and publish those weights, not the EMA ones
_WEIGHT_KEYS = ('model', 'state_dict', 'model_ema', 'state_dict_ema')
# timm adapts these itself afterwards (num_classes, in_chans): they may differ from the model
_ADAPTED = ('head.', 'patch_embed.proj.')

Arch = Tuple[Tuple[int, ...], Tuple[int, ...]]


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint."""


def weights_digest(state_dict: Dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict's keys, dtypes, shapes and values (sorted keys): recorded when the authors' released
    weights are loaded, so that a card claims their published results only for those very tensors."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f'{k}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: the authors' "model" entry (or timm's "state_dict"), `module.` prefixes removed."""
    if isinstance(checkpoint, dict):
        for key in _WEIGHT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'Expected a state_dict (a dict of tensors), got {type(checkpoint).__name__}.')
    tensors = {k.removeprefix('module.'): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f'No tensors found: this is not a model checkpoint (top-level keys: {", ".join(map(str, checkpoint))}).')
    return tensors


def _is_safetensors(path: Path) -> bool:
    if path.suffix == '.safetensors':
        return True
    with path.open('rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{'  # 8-byte header length, then the JSON header


# what timm's save_for_hf writes (and `convert`), in the order timm prefers them
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def _weights_file(path: Path) -> Path:
    """The file to read: `path` itself, or the weights file of a folder from `convert` / timm's `save_for_hf`."""
    if path.is_dir():
        found = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if found is None:
            raise FileNotFoundError(f'{path} holds no weights file ({" or ".join(WEIGHT_FILES)}): pass a folder '
                                    f'written by `timm-gfnet convert` or timm\'s save_for_hf, or a checkpoint file.')
        return found
    if not path.is_file():
        raise FileNotFoundError(f'No checkpoint file at {path}.')
    return path


def read_weights(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Optional[Tuple[int, int]]]:
    """(weights, training image size) of a checkpoint file or folder, read without unpickling arbitrary objects.

    The image size is the authors' `args.input_size` when their file carries it, else None (the shapes say the rest:
    see `gfnet.checkpoint_grid`)."""
    path = _weights_file(Path(path))
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return unwrap_state_dict(load_file(str(path))), None
        except SafetensorError as e:
            raise CheckpointError(f'{path} is not a valid safetensors file ({e}).') from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _reason(e)
        if 'GLOBAL' in reason:  # a reference to a function or class: what a pickle runs code with
            raise CheckpointError(
                f'{path} was not loaded: it holds objects other than tensors and plain training state, and '
                f'unpickling them could run code ({reason}). Re-save its weights with torch.save(model.state_dict()) '
                f'or as safetensors.') from None
        raise CheckpointError(f'{path} is not a PyTorch checkpoint ({reason}).') from None
    except Exception as e:  # torch.load fails in many ways on truncated or foreign files
        raise CheckpointError(
            f'{path} is not a readable PyTorch checkpoint: truncated, or another kind of file '
            f'({_reason(e)}).') from None
    size = getattr(checkpoint.get('args'), 'input_size', None) if isinstance(checkpoint, dict) else None
    return unwrap_state_dict(checkpoint), (size, size) if isinstance(size, int) and size > 0 else None


def read_checkpoint(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The weights of a `.safetensors` or PyTorch checkpoint file (or a converted folder), read safely."""
    return read_weights(path)[0]


def _reason(e: Exception) -> str:
    """The informative part of torch.load's messages (which advise weights_only=False: not for untrusted files)."""
    found = re.search(r'WeightsUnpickler error: ([^\n]+)', str(e))  # torch < 2.7 puts it inside its advice line
    if found:
        return found.group(1).split('. ')[0].rstrip('.')
    skip = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(skip)]
    reason = lines[0].split('. ')[0].rstrip('.') if lines else ''
    return reason if any(c.isalpha() for c in reason) else type(e).__name__


# a block's first norm in every layout: ours (`blocks.j`, `stages.i.blocks.j`) and the authors' (`blocks.i.j`)
_BLOCK_NORM = re.compile(r'^(?:stages\.(\d+)\.blocks\.|blocks\.(?:(\d+)\.)?)(\d+)\.norm1\.weight$')


def checkpoint_arch(state_dict: Dict[str, torch.Tensor]) -> Arch:
    """(blocks per stage, width per stage) of a GFNet state_dict in our or the authors' layout (isotropic: 1 stage)."""
    blocks: Dict[int, Dict[int, int]] = {}
    for k, v in state_dict.items():
        m = _BLOCK_NORM.match(k)
        if m:
            stage = int(m.group(1) or m.group(2) or 0)
            blocks.setdefault(stage, {})[int(m.group(3))] = v.shape[0]
    stages = [blocks[s] for s in sorted(blocks)]
    return tuple(len(s) for s in stages), tuple(next(iter(s.values())) for s in stages)


def describe_arch(arch: Arch) -> str:
    depths, dims = arch
    if not depths:
        return 'no GFNet blocks'
    if len(depths) == 1:
        return f'{depths[0]} blocks of width {dims[0]}'
    return f'stages of {", ".join(map(str, depths))} blocks, widths {", ".join(map(str, dims))}'


@functools.lru_cache(maxsize=None)
def _registered_arch(name: str) -> Arch:
    import timm
    with torch.device('meta'):  # shapes only: no memory, no init
        return checkpoint_arch(timm.create_model(name).state_dict())


def _gfnet_names() -> list:
    import timm
    return timm.list_models('gfnet*')


def infer_variant(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """Name of the registered GFNet whose architecture matches the checkpoint's shapes, else None."""
    arch = checkpoint_arch(unwrap_state_dict(state_dict))
    return next((name for name in _gfnet_names() if _registered_arch(name) == arch), None)


def check_architecture(state_dict: Dict[str, torch.Tensor], name: str, arch: Arch) -> None:
    """Refuse the checkpoint of another architecture than `arch` (model `name`'s), naming what it is and the model
    that fits it."""
    found = checkpoint_arch(state_dict)
    if found != arch:
        other = infer_variant(state_dict)
        what = f'{other} ({describe_arch(found)})' if other else describe_arch(found)
        raise CheckpointError(
            f'This checkpoint is {what}; {name} has {describe_arch(arch)}. '
            f'Create the model that matches the checkpoint' + (f" (timm.create_model('{other}'))." if other else '.'))


def check_values(state_dict: Dict[str, torch.Tensor]) -> None:
    """One error naming every tensor that is not floating point or not finite: either would load without a word
    (integers cast, NaN copied) and make every output wrong. Other float precisions are fine (cast on copy)."""
    dtypes = [f'{k} {v.dtype}' for k, v in state_dict.items() if not v.is_floating_point()]
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if dtypes or non_finite:
        raise CheckpointError(
            'Checkpoint weights are unusable.'
            + (f' Not floating point: {", ".join(dtypes)}.' if dtypes else '')
            + (f' Non-finite values (NaN/inf) in: {", ".join(non_finite)}.' if non_finite else ''))


def check_fits(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """One error naming every key that is missing, unexpected or of the wrong shape; returns `state_dict`.

    `state_dict` is in the model's layout (after `checkpoint_filter_fn`). The classifier and the first conv are
    left to timm, which adapts them to `num_classes` and `in_chans`.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict and not k.startswith(_ADAPTED)]
    unexpected = [k for k in state_dict if k not in target and not k.startswith(_ADAPTED)]
    wrong = [f'{k} {tuple(v.shape)} (model {tuple(target[k].shape)})' for k, v in state_dict.items()
             if k in target and not k.startswith(_ADAPTED) and v.shape != target[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            'Checkpoint does not fit the model.'
            + (f' Missing keys: {", ".join(missing)}.' if missing else '')
            + (f' Unexpected keys: {", ".join(unexpected)}.' if unexpected else '')
            + (f' Wrong shapes: {", ".join(wrong)}.' if wrong else ''))
    return state_dict


def _folder_architecture(path: Path) -> str:
    config_file = path / 'config.json'
    if not config_file.is_file():
        raise FileNotFoundError(
            f'{path} has no config.json: pass a folder written by `timm-gfnet convert CKPT --out DIR` '
            f"(or timm's save_for_hf), or the checkpoint file itself.")
    return json.loads(config_file.read_text()).get('architecture')


def load_model(
        source: Union[str, Path],
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        **kwargs: Any,
) -> nn.Module:
    """A GFNet holding the weights of `source`; the one loader of every command.

    Args:
        source: a checkpoint file (the authors' `.pth` release format, or a state_dict as `.pth` / `.safetensors`),
            a folder with `config.json` and weights (`timm-gfnet convert`, timm's `save_for_hf`), `hf-hub:ORG/REPO`
            or `local-dir:PATH`, or a registered model name (`gfnet_s`, `gfnet_s.in1k`) for its pretrained weights.
        model_name: the variant a checkpoint file holds; recognised from its shapes when omitted (and checked when
            given).
        num_classes: classifier size; by default the checkpoint's own (a fine-tuned head is kept). Another size
            gets a new head, as timm does.
        **kwargs: passed to `timm.create_model` (e.g. `img_size=384`: filters and pos_embed are resampled).
    """
    import timm
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    gfnets = _gfnet_names()
    text = str(source)
    if text.startswith(('hf-hub:', 'local-dir:')):
        return timm.create_model(text, pretrained=True, **kwargs)
    path = Path(source)
    if path.is_dir():
        architecture = _folder_architecture(path)
        if architecture not in gfnets:
            raise ValueError(f'{path / "config.json"} describes {architecture!r}, not a GFNet ({", ".join(gfnets)}).')
        return timm.create_model(f'local-dir:{path}', pretrained=True, **kwargs)
    if not path.is_file():
        if model_name is None and (text in gfnets or text in timm.list_pretrained('gfnet*')):  # a registered name
            return timm.create_model(text, pretrained=True, **kwargs)
        raise FileNotFoundError(
            f'No checkpoint file or folder at {path} (and it is not a GFNet name: {", ".join(gfnets)}).')
    state_dict, img_size = read_weights(path)
    if model_name is None:
        model_name = infer_variant(state_dict)
        if model_name is None:
            raise CheckpointError(
                f'{path} matches no GFNet variant ({describe_arch(checkpoint_arch(state_dict))}); pass the model '
                f'name it was trained as (--model NAME, or model_name=).')
    elif model_name not in gfnets:
        raise ValueError(f'{model_name!r} is not a GFNet model; choose one of {", ".join(gfnets)}.')
    # read once: the model is built from these weights (at their size, with their classifier unless asked otherwise)
    overlay = dict(state_dict=state_dict, **({'input_size': (3, *img_size)} if img_size else {}))
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)

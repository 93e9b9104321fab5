"""Checkpoints: read them safely, recognise the GFNet they hold, check they fit a model, and the one loader.

The authors' released files are full training checkpoints: weights under "model" (also the EMA weights under
"model_ema", which are not the ones they published), optimizer state, and an `argparse.Namespace` under "args".
Nothing in them may run code on load, so the only type allowed beyond what `weights_only` accepts is
`argparse.Namespace` (a plain attribute bag). timm reads them through `load_pretrained` (its `custom_load`), other
sources (`hf-hub:`, `local-dir:`, a state_dict) through `gfnet.checkpoint_filter_fn`: both check with
`check_weights`.

`load_model` is how every command (convert, predict, export-onnx, viz, push) and the Python API get a model from
any source, keeping a checkpoint's own image size, classifier and input channels.

timm is imported where it is used: the plugin autoload imports `timm_gfnet.gfnet` (which imports this module)
while `import timm` runs.
"""
import argparse
import functools
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union
from urllib.error import HTTPError, URLError

import torch
import torch.nn as nn

__all__ = [
    'CheckpointError', 'PretrainedUnavailableError', 'read_checkpoint', 'unwrap_state_dict', 'infer_variant',
    'check_weights', 'load_pretrained', 'load_model', 'weights_digest', 'recorded_digest',
]

_logger = logging.getLogger(__name__)

# "model" first: the authors evaluate and publish those weights, not the EMA ones
_WEIGHT_KEYS = ('model', 'state_dict', 'model_ema', 'state_dict_ema')
# timm adapts these to the model (num_classes, in_chans): they may differ from it
_ADAPTED = ('head.', 'patch_embed.proj.')
# what timm's save_for_hf writes (and `convert`), in the order timm prefers them
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')

_DIGEST = 'weights_digest: '  # the note that records the authors' released tensors (`recorded_digest`)

Arch = Tuple[Tuple[int, ...], Tuple[int, ...]]


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint."""


class PretrainedUnavailableError(RuntimeError):
    """A registered model's pretrained weights could not be fetched (offline, unreachable, or refused)."""


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
        checkpoint = next((checkpoint[k] for k in _WEIGHT_KEYS if isinstance(checkpoint.get(k), dict)), checkpoint)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'Expected a state_dict (a dict of tensors), got {type(checkpoint).__name__}.')
    tensors = {k.removeprefix('module.'): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f'No tensors found: this is not a model checkpoint (top-level keys: {", ".join(map(str, checkpoint))}).')
    return tensors


def _reason(e: Exception) -> str:
    """The informative part of torch.load's messages (which advise weights_only=False: not for untrusted files)."""
    found = re.search(r'WeightsUnpickler error: ([^\n]+)', str(e))  # torch < 2.7 puts it inside its advice line
    if found:
        return found.group(1).split('. ')[0].rstrip('.')
    skip = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(skip)]
    reason = lines[0].split('. ')[0].rstrip('.') if lines else ''
    return reason if any(c.isalpha() for c in reason) else type(e).__name__


def read_checkpoint(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The weights of a `.safetensors` or PyTorch checkpoint file, or of the weights file of a folder from `convert`
    / timm's `save_for_hf`, read without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        found = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if found is None:
            raise FileNotFoundError(f'{path} holds no weights file ({" or ".join(WEIGHT_FILES)}): pass a folder '
                                    f'written by `timm-gfnet convert` or timm\'s save_for_hf, or a checkpoint file.')
        path = found
    with path.open('rb') as f:
        head = f.read(16)
    if head[8:9] == b'{':  # safetensors: an 8-byte header length, then the JSON header
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return unwrap_state_dict(load_file(str(path)))
        except SafetensorError as e:
            raise CheckpointError(f'{path} is not a valid safetensors file ({e}).') from None
    if head.lstrip().startswith(b'<'):  # what an expired share link answers
        raise CheckpointError(f'{path} is an HTML page, not a checkpoint (starting {head!r}).')
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
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint: truncated, or another kind of file '
                              f'({_reason(e)}).') from None
    return unwrap_state_dict(checkpoint)


def _authors_to_timm_key(k: str) -> str:
    """Key of the authors' GFNetPyramid state_dict -> ours (isotropic keys are the same in both)."""
    k = re.sub(r'^patch_embed\.0\.', 'patch_embed.', k)
    k = re.sub(r'^patch_embed\.(\d+)\.', r'stages.\1.downsample.', k)
    return re.sub(r'^blocks\.(\d+)\.(\d+)\.', r'stages.\1.blocks.\2.', k)


def checkpoint_grid(state_dict: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """The stem's token grid of a checkpoint (our key layout): its height is the first block's filter height, its
    width what pos_embed's tokens leave."""
    n = state_dict['pos_embed'].shape[1]
    first = state_dict.get('blocks.0.filter.complex_weight', state_dict.get('stages.0.blocks.0.filter.complex_weight'))
    h = first.shape[0] if first is not None else round(n ** 0.5)
    return h, n // h


# a block's first norm in every layout: ours (`blocks.j`, `stages.i.blocks.j`) and the authors' (`blocks.i.j`)
_BLOCK_NORM = re.compile(r'^(?:stages\.(\d+)\.blocks\.|blocks\.(?:(\d+)\.)?)(\d+)\.norm1\.weight$')


def _arch(state_dict: Dict[str, torch.Tensor]) -> Arch:
    """(blocks per stage, width per stage) of a GFNet state_dict in our or the authors' layout (isotropic: 1 stage)."""
    blocks: Dict[int, Dict[int, int]] = {}
    for k, v in state_dict.items():
        m = _BLOCK_NORM.match(k)
        if m:
            blocks.setdefault(int(m.group(1) or m.group(2) or 0), {})[int(m.group(3))] = v.shape[0]
    stages = [blocks[s] for s in sorted(blocks)]
    return tuple(len(s) for s in stages), tuple(next(iter(s.values())) for s in stages)


def _describe(arch: Arch) -> str:
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
        return _arch(timm.create_model(name).state_dict())


def infer_variant(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """Name of the registered GFNet whose architecture matches the checkpoint's shapes, else None."""
    import timm
    arch = _arch(unwrap_state_dict(state_dict))
    return next((name for name in timm.list_models('gfnet*') if _registered_arch(name) == arch), None)


def check_weights(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """`_check_weights`, naming the Hub repository the weights came from (`hf-hub:`)."""
    try:
        _check_weights(state_dict, model)
    except CheckpointError as e:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        if cfg.get('source') != 'hf-hub':
            raise
        raise CheckpointError(f'{e} It came from Hub repository {cfg["hf_hub_id"]} (through the huggingface_hub '
                              f'cache): fix the repository, or load another one.') from None


def _check_weights(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """One error naming every problem of `state_dict` (in the model's key layout) for `model`: tensors that are not
    floating point or not finite (either would load without a word), the checkpoint of another variant, then every
    missing, unexpected or wrongly shaped key. The classifier, the stem's channels and the token grids may differ:
    they are adapted (timm) or resampled (`checkpoint_filter_fn`)."""
    dtypes = [f'{k} {v.dtype}' for k, v in state_dict.items() if not v.is_floating_point()]
    non_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if dtypes or non_finite:
        raise CheckpointError(
            'Checkpoint weights are unusable.'
            + (f' Not floating point: {", ".join(dtypes)}.' if dtypes else '')
            + (f' Non-finite values (NaN/inf) in: {", ".join(non_finite)}.' if non_finite else ''))
    target = model.state_dict()
    arch, found = _arch(target), _arch(state_dict)
    if found != arch:
        other = infer_variant(state_dict)
        what = f'{other} ({_describe(found)})' if other else _describe(found)
        name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        raise CheckpointError(
            f'This checkpoint is {what}; {name} has {_describe(arch)}. Create the model that matches the checkpoint'
            + (f" (timm.create_model('{other}'))." if other else '.'))
    resampled = [k for k in target if k == 'pos_embed' or k.endswith('filter.complex_weight')]
    missing = [k for k in target if k not in state_dict and not k.startswith(_ADAPTED)]
    unexpected = [k for k in state_dict if k not in target and not k.startswith(_ADAPTED)]
    wrong = [f'{k} {tuple(v.shape)} (model {tuple(target[k].shape)})' for k, v in state_dict.items()
             if k in target and not k.startswith(_ADAPTED) and k not in resampled and v.shape != target[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            'Checkpoint does not fit the model.'
            + (f' Missing keys: {", ".join(missing)}.' if missing else '')
            + (f' Unexpected keys: {", ".join(unexpected)}.' if unexpected else '')
            + (f' Wrong shapes: {", ".join(wrong)}.' if wrong else ''))


def _load_into(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Map, check and resample (`checkpoint_filter_fn`), adapt the stem to the model's input channels as timm does,
    and load."""
    from timm.models import adapt_input_conv

    from .gfnet import checkpoint_filter_fn
    state_dict = checkpoint_filter_fn(state_dict, model)
    stem = state_dict.get('patch_embed.proj.weight')
    if stem is not None and stem.shape[1] != model.in_chans:
        _logger.info(f'Converted the stem from {stem.shape[1]} to {model.in_chans} input channels.')
        state_dict['patch_embed.proj.weight'] = adapt_input_conv(model.in_chans, stem)
    model.load_state_dict(state_dict)


def load_pretrained(model: nn.Module, checkpoint_path: str) -> None:
    """timm's `custom_load` for GFNet (`pretrained=True` from a file or the authors' download link): read safely,
    checked, mapped onto the model. A download from the registered link records the digest of the authors' tensors
    (`recorded_digest`); an error about a download names the cached file and how to clear it."""
    import timm
    cfg = model.pretrained_cfg
    downloaded = not cfg.get('file')  # else timm fetched cfg['url'] into its cache
    try:
        state_dict = read_checkpoint(checkpoint_path)
        _load_into(model, state_dict)
    except CheckpointError as e:
        if not downloaded:
            raise
        raise CheckpointError(f'{e} It came from the download cached at {checkpoint_path}: delete that file to '
                              f'fetch it again.') from None
    registered = timm.models.get_pretrained_cfg(f"{cfg['architecture']}.{cfg['tag']}") if cfg.get('tag') else None
    if downloaded and registered is not None and tuple(cfg['url']) == tuple(registered.url):
        digest = weights_digest({_authors_to_timm_key(k): v for k, v in state_dict.items()})
        # in `notes`, a field of timm's PretrainedCfg: save_for_hf writes it and every timm loader reads it back (a
        # key of our own would make `local-dir:` / `hf-hub:` loading fail on PretrainedCfg(**cfg))
        cfg['notes'] = (*(cfg.get('notes') or ()), f'{_DIGEST}{digest}')


def recorded_digest(model: nn.Module) -> Optional[str]:
    """The digest of the authors' released tensors recorded when `model` got them from their registered download
    (kept by save_for_hf and `local-dir:` / `hf-hub:` loading), else None. Compare with `weights_digest` of the
    model's current tensors to know they are still the authors' weights."""
    notes = (getattr(model, 'pretrained_cfg', None) or {}).get('notes') or ()
    return next((n[len(_DIGEST):] for n in notes if isinstance(n, str) and n.startswith(_DIGEST)), None)


def _from_registered_link(name: str, kwargs: Dict[str, Any]) -> nn.Module:
    """`pretrained=True` of a registered name, with one-line errors when its download is unavailable."""
    import huggingface_hub.constants
    import timm
    from timm.models._hub import get_cache_dir

    url, filename = timm.models.get_pretrained_cfg(name).url
    cached = Path(kwargs.get('cache_dir') or get_cache_dir()) / filename
    how = (f'put the authors\' file at {cached}, or load a local copy with load_model(PATH) (or '
           f'--checkpoint PATH).')
    if huggingface_hub.constants.HF_HUB_OFFLINE and not cached.is_file():
        raise PretrainedUnavailableError(f'Offline mode is on (HF_HUB_OFFLINE) and the weights of {name} are not '
                                         f'cached: {how}')
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except URLError as e:  # HTTPError included (404, 403 of an expired link, ...)
        reason = f'{e.code} {e.reason}' if isinstance(e, HTTPError) else e.reason
        raise PretrainedUnavailableError(f'Could not download the weights of {name} from {url} ({reason}): '
                                         f'{how}') from None


def _build_for(name: str, state_dict: Dict[str, torch.Tensor], kwargs: Dict[str, Any]) -> nn.Module:
    """`name` built for the checkpoint's own image size, input channels and classes (unless `kwargs` ask for others:
    then it is resampled or adapted), holding its weights."""
    import timm
    from timm.layers import to_2tuple
    keys = {_authors_to_timm_key(k): v for k, v in state_dict.items()}
    stem, head = keys.get('patch_embed.proj.weight'), keys.get('head.weight')
    if stem is not None and 'pos_embed' in keys:  # else check_weights names what is missing
        grid = checkpoint_grid(keys)
        kwargs = dict(dict(img_size=(grid[0] * stem.shape[2], grid[1] * stem.shape[3]), in_chans=stem.shape[1],
                           num_classes=head.shape[0] if head is not None else 0), **kwargs)
        # what timm's data config and save_for_hf read: the model's own input size and classes
        overlay = dict(input_size=(kwargs['in_chans'], *to_2tuple(kwargs['img_size'])),
                       num_classes=kwargs['num_classes'])
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, **overlay)
    model = timm.create_model(name, **kwargs)
    _load_into(model, state_dict)
    return model


def load_model(
        source: Union[str, Path],
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        **kwargs: Any,
) -> nn.Module:
    """A GFNet holding the weights of `source`; the one loader of every command.

    Args:
        source: a registered model name (`gfnet_s`, `gfnet_s.in1k`: its pretrained weights, whatever the working
            directory holds), `hf-hub:ORG/REPO` or `local-dir:PATH`, or a path: a checkpoint file (the authors'
            `.pth` release format, or a state_dict as `.pth` / `.safetensors`) or a folder with `config.json` and
            weights (`timm-gfnet convert`, timm's `save_for_hf`).
        model_name: the variant a checkpoint file holds; recognised from its shapes when omitted (and checked when
            given).
        num_classes: classifier size; by default the checkpoint's own (a fine-tuned head is kept). Another size
            gets a new head, as timm does.
        **kwargs: passed to `timm.create_model` (e.g. `img_size=384`: filters and pos_embed are resampled).
    """
    import timm
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    gfnets = timm.list_models('gfnet*')
    text = str(source)
    if text.startswith(('hf-hub:', 'local-dir:')):
        return timm.create_model(text, pretrained=True, **kwargs)
    # a name is a name: a file or folder of that name in the working directory is reached as './NAME'
    if isinstance(source, str) and model_name is None and source in gfnets + timm.list_pretrained('gfnet*'):
        return _from_registered_link(source, kwargs)
    path = Path(source)
    if path.is_dir():
        config_file = path / 'config.json'
        architecture = json.loads(config_file.read_text()).get('architecture') if config_file.is_file() else None
        if architecture not in gfnets:
            what = f'describes {architecture!r}, not a GFNet' if config_file.is_file() else 'has no config.json'
            raise ValueError(f'{path} {what}: pass a folder written by `timm-gfnet convert CKPT --out DIR` or timm\'s '
                             f'save_for_hf, or a checkpoint file.')
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if 'img_size' not in kwargs and 'model_args' not in json.loads(config_file.read_text()) and weights:
            # timm < 1.0.31's save_for_hf records no input size: the weights' own grid says it
            keys = {_authors_to_timm_key(k): v for k, v in read_checkpoint(weights).items()}
            stem, grid = keys.get('patch_embed.proj.weight'), checkpoint_grid(keys) if 'pos_embed' in keys else None
            if stem is not None and grid is not None:
                kwargs['img_size'] = (grid[0] * stem.shape[2], grid[1] * stem.shape[3])
        return timm.create_model(f'local-dir:{path}', pretrained=True, **kwargs)
    if not path.is_file():
        raise FileNotFoundError(
            f'No checkpoint file or folder at {path} (and it is not a GFNet name: {", ".join(gfnets)}).')
    state_dict = read_checkpoint(path)
    if model_name is None:
        model_name = infer_variant(state_dict)
        if model_name is None:
            raise CheckpointError(
                f'{path} matches no GFNet variant ({_describe(_arch(state_dict))}); pass the model name it was '
                f'trained as (--model NAME, or model_name=).')
    elif model_name not in gfnets:
        raise ValueError(f'{model_name!r} is not a GFNet model; choose one of {", ".join(gfnets)}.')
    return _build_for(model_name, state_dict, kwargs)

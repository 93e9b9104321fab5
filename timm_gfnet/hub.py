"""Publishing GFNet weights on the Hugging Face Hub, for anyone to load with plain timm (`hf-hub:` / `local-dir:`) or
with transformers (`AutoModelForImageClassification`, whose `TimmWrapper` calls timm).

A pushed repository holds what both read, and nothing unsafe: `config.json` (architecture, num_classes, the model's
own class names, the pretrained cfg and architecture changes as `model_args`, written by timm's `save_for_hf`),
`model.safetensors` (no pickle files) and the model card as `README.md` (`cards.generate_card`). The upload is a
single commit through huggingface_hub (`HfApi.upload_folder`), which shows its own progress bars. Hub failures become
`HubError`s with one line that names the problem and the fix.
"""
import json
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Dict, Optional, Union

import timm
import torch
import torch.nn as nn
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import save_for_hf

from . import __version__
from .cards import generate_card
from .checkpoint import load_model, recorded_digest, weights_digest

__all__ = ['HubError', 'save_for_hub', 'export_for_hub', 'push_to_hub']

# the fix for what the Hub answered, by status
_FIXES = {
    401: 'pass a token with write access (--token or HF_TOKEN, or `hf auth login`)',
    403: 'use a token with write access to {owner!r}, or push to a namespace you own',
    404: 'check REPO_ID and --revision, or leave out --no-create to create them',
}


class HubError(RuntimeError):
    """A Hub request failed; the message is one line naming the problem and the fix."""


def _label_config(model: nn.Module) -> Dict[str, Any]:
    """The model's class names for config.json, where transformers reads them. None for ImageNet's synsets: both
    timm and transformers infer those from the class count, and transformers then labels with the descriptions
    ('tabby, tabby cat'), where stored synsets would make its labels 'n02123045'."""
    cfg = model.pretrained_cfg
    names = cfg.get('label_names')
    if not names or len(names) != model.num_classes:
        return {}
    subset = infer_imagenet_subset(model)
    if subset and list(names) == ImageNetInfo(subset).label_names():
        return {}
    return {k: cfg[k] for k in ('label_names', 'label_descriptions') if cfg.get(k)}


def _shape_args(model: nn.Module) -> Dict[str, Any]:
    """The constructor arguments that give a GFNet its shapes, as it is now (after `set_input_size` too)."""
    pe, stages = model.patch_embed, getattr(model, 'stages', None)
    fc1 = (stages[0] if stages is not None else model).blocks[0].mlp.fc1
    return dict(
        img_size=list(pe.img_size), patch_size=pe.patch_size[0], in_chans=model.in_chans,
        global_pool=model.global_pool, mlp_ratio=fc1.out_features / fc1.in_features,
        dynamic_img_size=model.dynamic_img_size, dynamic_img_pad=pe.dynamic_img_pad,
        embed_dim=[f['num_chs'] for f in model.feature_info] if stages is not None else model.num_features,
        depth=[len(s.blocks) for s in stages] if stages is not None else len(model.blocks))


def _architecture_args(model: nn.Module) -> Dict[str, Any]:
    """The constructor arguments in which `model` differs from its registered variant, e.g. `img_size`.

    timm's own Hub configs keep only these in `model_args`: `num_classes` has its own key, and clients such as
    transformers' TimmWrapper pass it to `create_model` themselves (a second copy fails there).
    """
    with torch.device('meta'):
        default = _shape_args(timm.create_model(model.pretrained_cfg['architecture']))
    return {k: v for k, v in _shape_args(model).items() if default.get(k) != v}


def save_for_hub(model: nn.Module, out_dir: Union[str, Path]) -> Path:
    """`model.safetensors` and `config.json` (timm's `save_for_hf`, with `model_args` reduced to architecture
    changes) in `out_dir`: a folder that timm (`local-dir:`) and transformers (`from_pretrained`) both load."""
    out_dir = Path(out_dir)
    save_for_hf(model, str(out_dir), model_config=_label_config(model), safe_serialization=True)
    config_file = out_dir / 'config.json'
    config = json.loads(config_file.read_text())
    config.pop('model_args', None)
    # a plain state_dict: the registry's custom_load (for the authors' training checkpoints) does not apply here, and
    # timm < 1.0.31 would hand an hf-hub: source to it
    config['pretrained_cfg']['custom_load'] = False
    args = _architecture_args(model)
    if args:
        config['model_args'] = args
    config_file.write_text(json.dumps(config, indent=2))
    return out_dir


def _authors_weights(model: nn.Module) -> bool:
    """The model holds the authors' released tensors, unchanged: the digest recorded when they were loaded from the
    registered download (`recorded_digest`) is that of its weights now."""
    digest = recorded_digest(model)
    return digest is not None and digest == weights_digest(model.state_dict())


def export_for_hub(
        model: nn.Module,
        out_dir: Union[str, Path],
        repo_id: Optional[str] = None,
        card: Optional[Union[str, Path]] = None,
) -> Path:
    """Write `config.json`, `model.safetensors` and `README.md` for `model` to `out_dir`: what `push_to_hub` uploads
    and `local-dir:` loads.

    The card is generated for the model's `architecture.tag` (snippets loading `hf-hub:<repo_id>` when given), with
    the authors' published results only for their own weights; `card` names a README to use instead.
    """
    out_dir = save_for_hub(model, out_dir)
    if card is not None:
        text = Path(card).read_text(encoding='utf-8')
    else:
        cfg = model.pretrained_cfg
        name = '.'.join(filter(None, (cfg['architecture'], cfg.get('tag'))))
        model_args = dict(_architecture_args(model), num_classes=model.num_classes)
        text = str(generate_card(name, repo_id=repo_id, model_args=model_args, authors_weights=_authors_weights(model)))
    (out_dir / 'README.md').write_text(text, encoding='utf-8')
    return out_dir


def push_to_hub(
        source: Union[str, Path, nn.Module],
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        create: bool = True,
        card: Optional[Union[str, Path]] = None,
) -> Any:
    """Upload `source` (a model, a `local-dir:` folder or a checkpoint file) to the Hub repository `repo_id`.

    The repository (and the `revision` branch) are created when missing, unless `create=False`, which only pushes
    to an existing one. `private` applies to a new repository. Returns huggingface_hub's `CommitInfo`.
    """
    if constants.HF_HUB_OFFLINE:
        raise HubError('HF_HUB_OFFLINE is set, so nothing can be pushed; unset HF_HUB_OFFLINE.')
    # local input is checked first (a bad file creates no repository), the Hub is asked before the export work
    if card is not None and not Path(card).is_file():
        raise FileNotFoundError(f'No model card file at {card}.')
    model = source if isinstance(source, nn.Module) else load_model(source)
    api = HfApi(token=token, library_name='timm-gfnet', library_version=__version__)
    try:
        if create:
            repo_id = api.create_repo(repo_id, private=True if private else None, exist_ok=True).repo_id
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
        else:
            api.repo_info(repo_id, revision=revision)
        with TemporaryDirectory() as tmp:
            export_for_hub(model, tmp, repo_id=repo_id, card=card)
            return api.upload_folder(
                repo_id=repo_id, folder_path=tmp, revision=revision,
                commit_message=f'Add {model.pretrained_cfg["architecture"]} weights (timm-gfnet {__version__})',
            )
    except HfHubHTTPError as e:  # one line with what the Hub said, where huggingface_hub's message has several
        if e.response is None:
            raise
        status = e.response.status_code
        said = ' '.join(str(e.server_message or e.response.reason_phrase).split())
        fix = _FIXES.get(status, 'try again later' if status >= 500 else 'correct what the Hub names')
        fix = fix.format(owner=repo_id.split('/')[0])
        raise HubError(f'the Hub at {api.endpoint} refused the push to {repo_id} ({status}: {said}); {fix}.') from None
    except Exception as e:
        # huggingface_hub 0.x raises requests' ConnectionError, 1.x+ httpx's TransportError: matched by name, not by
        # importing the HTTP library of one version
        if not {c.__name__ for c in type(e).__mro__} & {'ConnectionError', 'TransportError', 'Timeout'}:
            raise
        raise HubError(f'cannot reach the Hub at {api.endpoint} ({str(e) or type(e).__name__}); check the network, '
                       f'proxy settings or HF_ENDPOINT.') from None

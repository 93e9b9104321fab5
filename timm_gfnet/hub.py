"""Publishing GFNet weights on the Hugging Face Hub, for anyone to load with plain timm (`hf-hub:` / `local-dir:`) or
with transformers (`AutoModelForImageClassification`, whose `TimmWrapper` calls timm).

A pushed repository holds what both read, and nothing unsafe: `config.json` (architecture, num_classes, the
pretrained cfg and architecture changes as `model_args`, written by timm's `save_for_hf`), `model.safetensors` (no
pickle files) and the model card as `README.md` (`cards.generate_card`). The upload is a single commit through
huggingface_hub (`HfApi.upload_folder`), which shows its own progress bars. Hub failures become `HubError`s with a
one-line message that names the problem and the fix.
"""
import json
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Dict, Optional, Union

import timm
import torch
import torch.nn as nn
from timm.data import infer_imagenet_subset
from timm.models import save_for_hf

from .cards import generate_card
from .checkpoint import load_model

__all__ = ['HUB_FILES', 'HubError', 'save_for_hub', 'export_for_hub', 'push_to_hub']

HUB_FILES = ('config.json', 'model.safetensors', 'README.md')


class HubError(RuntimeError):
    """A Hub request failed; the message is one line naming the problem and the fix."""


def _label_config(model: nn.Module) -> Dict[str, Any]:
    """Class names for config.json: the source's own for its head. None for an ImageNet-1k head: timm and
    transformers both infer ImageNet-1k from 1000 classes, and transformers then labels with the class
    descriptions ('tabby, tabby cat'), where stored synsets would make its labels 'n02123045'."""
    cfg = model.pretrained_cfg
    if cfg.get('label_names') and cfg.get('num_classes') == model.num_classes \
            and infer_imagenet_subset(model) != 'imagenet-1k':
        return {k: cfg[k] for k in ('label_names', 'label_descriptions') if cfg.get(k)}
    return {}


def _architecture_args(model: nn.Module) -> Dict[str, Any]:
    """The constructor arguments in which `model` differs from its registered variant, e.g. `img_size`.

    timm's own Hub configs keep only these in `model_args`: `num_classes` has its own key, and clients such as
    transformers' TimmWrapper pass it to `create_model` themselves (a second copy fails there).
    """
    with torch.device('meta'):
        default = timm.create_model(model.pretrained_cfg['architecture']).architecture_args()
    return {k: v for k, v in model.architecture_args().items() if default.get(k) != v}


def save_for_hub(model: nn.Module, out_dir: Union[str, Path]) -> Path:
    """`model.safetensors` and `config.json` (timm's `save_for_hf`, with `model_args` reduced to architecture
    changes) in `out_dir`: a folder that timm (`local-dir:`) and transformers (`from_pretrained`) both load."""
    out_dir = Path(out_dir)
    save_for_hf(model, str(out_dir), model_config=_label_config(model), safe_serialization=True)
    config_file = out_dir / 'config.json'
    config = json.loads(config_file.read_text())
    config.pop('model_args', None)
    args = _architecture_args(model)
    if args:
        config['model_args'] = args
    config_file.write_text(json.dumps(config, indent=2))
    return out_dir


def export_for_hub(
        model: nn.Module,
        out_dir: Union[str, Path],
        repo_id: Optional[str] = None,
        card: Optional[Union[str, Path]] = None,
) -> Path:
    """Write `HUB_FILES` for `model` to `out_dir`: what `push_to_hub` uploads and `local-dir:` loads.

    The card is generated for the model's `architecture.tag` (snippets loading `hf-hub:<repo_id>` when given),
    unless `card` names a README to use instead.
    """
    out_dir = save_for_hub(model, out_dir)
    if card is not None:
        text = Path(card).read_text(encoding='utf-8')
    else:
        config = json.loads((out_dir / 'config.json').read_text())
        tag = config['pretrained_cfg'].get('tag')
        name = f"{config['architecture']}.{tag}" if tag else config['architecture']
        model_args = dict(config.get('model_args', {}), num_classes=config['num_classes'])
        text = str(generate_card(name, repo_id=repo_id, model_args=model_args))
    (out_dir / 'README.md').write_text(text, encoding='utf-8')
    return out_dir


def _one_line(text: str) -> str:
    return ' '.join(str(text).split())


def _is_network_error(e: BaseException) -> bool:
    # huggingface_hub 1.x+ raises httpx(2) transport errors, 0.x requests' ConnectionError: match them by class
    # name rather than importing the HTTP library of one particular version
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {'TransportError', 'ConnectionError', 'TimeoutException', 'Timeout'})


def _hub_error(
        e: BaseException,
        repo_id: str,
        endpoint: str,
        has_token: bool,
        create: bool,
        revision: Optional[str],
) -> Optional[HubError]:
    """The one-line HubError for a failure talking to the Hub, or None for errors of other kinds."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError

    if isinstance(e, OfflineModeIsEnabled):
        return HubError('offline mode is on (HF_HUB_OFFLINE), so nothing can be pushed; unset HF_HUB_OFFLINE.')
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        said = _one_line(e.server_message or e.response.reason_phrase or '')
        said = f': {said}' if said else ''
        if status == 401 and not has_token:
            return HubError(f'the Hub at {endpoint} needs a token to push (401 Unauthorized{said}); pass --token, '
                            f'set HF_TOKEN, or log in with `hf auth login`.')
        if status == 401:
            return HubError(f'the Hub at {endpoint} rejected the token (401 Unauthorized{said}); pass a valid token '
                            f'with write access (--token or HF_TOKEN, or `hf auth login`).')
        if status == 403:
            return HubError(f'the token may not write to {repo_id} (403 Forbidden{said}); use a token with write '
                            f'access to {repo_id.split("/")[0]!r}, or push to a namespace you own.')
        if isinstance(e, RevisionNotFoundError):
            return HubError(f'branch {revision!r} does not exist in {repo_id} (404); push to an existing branch, '
                            f'or leave out --no-create to create it.')
        if status == 404:
            fix = 'check REPO_ID, or leave out --no-create to create it' if not create else \
                'check REPO_ID and that the token may see it'
            return HubError(f'repository {repo_id} not found on {endpoint} (404{said}); {fix}.')
        return HubError(f'the Hub at {endpoint} answered {status}{said} ({e.request.method} {e.request.url}).')
    if _is_network_error(e):
        reason = _one_line(str(e)) or type(e).__name__
        return HubError(f'cannot reach the Hub at {endpoint} ({reason}); check the network connection, proxy '
                        f'settings or HF_ENDPOINT.')
    if isinstance(e, ValueError):  # e.g. the Hub refused the card's metadata, or an invalid repo id
        return HubError(_one_line(str(e)))
    return None


def push_to_hub(
        source: Union[str, Path, nn.Module],
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        create: bool = True,
        card: Optional[Union[str, Path]] = None,
        commit_message: Optional[str] = None,
) -> Any:
    """Upload `source` (a model, a `local-dir:` folder or a checkpoint file) to the Hub repository `repo_id`.

    The repository (and the `revision` branch) are created when missing, unless `create=False`, which only pushes
    to an existing one. `private` applies to a new repository. Returns huggingface_hub's `CommitInfo`.
    """
    from huggingface_hub import HfApi, get_token

    from . import __version__

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
            name = json.loads((Path(tmp) / 'config.json').read_text())['architecture']
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                allow_patterns=list(HUB_FILES),
                commit_message=commit_message or f'Add {name} weights (timm-gfnet {__version__})',
            )
    except Exception as e:
        error = _hub_error(e, repo_id, api.endpoint, bool(token or get_token()), create, revision)
        if error is None:
            raise
        raise error from None

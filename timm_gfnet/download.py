"""Where `pretrained=True` gets its weights.

Order: an explicit file / state_dict / `hf-hub:` / `local-dir:` source; a Hugging Face Hub repository of converted
weights (the cfg's `hf_hub_id`, or `TIMM_GFNET_HF_HUB_ORG=<org>` for `<org>/<model>.<tag>`); else the authors' direct
download link, fetched once into timm's cache under a proper file name and converted when loaded.
"""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union
from urllib.error import URLError

from timm.models import resolve_pretrained_cfg
from timm.models._hub import download_cached_file, get_cache_dir

__all__ = ['resolve_pretrained_source', 'download_authors_checkpoint', 'PretrainedUnavailableError']

HUB_ORG_ENV = 'TIMM_GFNET_HF_HUB_ORG'


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (offline, unreachable, or refused)."""


def _offline() -> bool:
    return any(os.environ.get(v, '').lower() in ('1', 'true', 'yes', 'on') for v in ('HF_HUB_OFFLINE', 'TIMM_OFFLINE'))


def download_authors_checkpoint(url: str, filename: str, cache_dir: Optional[Union[str, Path]] = None) -> str:
    """Fetch an authors' checkpoint once into the cache (their links end in `/?dl=1`, so we name the file)."""
    cached = Path(cache_dir or get_cache_dir()) / filename
    if cached.is_file():
        return str(cached)
    how_to_proceed = (
        f'To proceed: put the file at {cached}, or pass pretrained_cfg_overlay=dict(file=PATH) with a local copy, '
        f"or load converted weights with timm.create_model('hf-hub:ORG/REPO', pretrained=True).")
    if _offline():
        raise PretrainedUnavailableError(f'Offline mode is on and {filename} is not cached. {how_to_proceed}')
    try:
        # torch writes to a temporary file and moves it into place: a cut download leaves no half file
        return download_cached_file((url, filename), check_hash=False, progress=True, cache_dir=cache_dir)
    except (URLError, OSError, TimeoutError) as e:
        reason = getattr(e, 'reason', None) or getattr(e, 'code', None) or e
        raise PretrainedUnavailableError(f'Could not download {filename} from {url} ({reason}). {how_to_proceed}') \
            from None


def resolve_pretrained_source(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Model kwargs whose `pretrained_cfg_overlay` names where the weights come from."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    if cfg.source in ('hf-hub', 'local-dir') or cfg.state_dict is not None:
        return kwargs
    if cfg.file:
        # timm resets custom_load for a file source; ours reads authors' files safely and prefers "model" to EMA
        overlay.setdefault('custom_load', True)
        return dict(kwargs, pretrained_cfg_overlay=overlay)
    org = os.environ.get(HUB_ORG_ENV)
    if org:
        overlay['hf_hub_id'] = f'{org}/{cfg.architecture}.{cfg.tag}' if cfg.tag else f'{org}/{cfg.architecture}'
    elif not cfg.hf_hub_id:
        if not cfg.url:
            return kwargs  # timm reports that no weights exist
        overlay['file'] = download_authors_checkpoint(cfg.url, f'{cfg.architecture}.{cfg.tag or "default"}.pth')
        overlay['custom_load'] = True
    return dict(kwargs, pretrained_cfg_overlay=overlay)

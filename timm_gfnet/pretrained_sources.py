"""Where `pretrained=True` gets its weights.

Order: an explicit file / state_dict / `hf-hub:` / `local-dir:` source; a Hugging Face Hub repository of converted
weights (the cfg's `hf_hub_id`, or `TIMM_GFNET_HF_HUB_ORG=<org>` for `<org>/<model>.<tag>`), falling back to the
authors' link while that repository does not exist; else the authors' direct download link, fetched once into
timm's cache (`$TORCH_HOME/hub/checkpoints`, or `cache_dir=`) under a proper file name and converted when loaded.
"""
import http.client
import logging
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from timm.models import resolve_pretrained_cfg
from timm.models._hub import get_cache_dir, hf_split

__all__ = ['resolve_pretrained_source', 'download_authors_checkpoint', 'PretrainedUnavailableError']

_logger = logging.getLogger(__name__)

HUB_ORG_ENV = 'TIMM_GFNET_HF_HUB_ORG'
HUB_FILENAME = 'model.safetensors'
TIMEOUT_S = 60.  # per socket operation: a stalled server fails instead of hanging forever


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (offline, unreachable, or refused)."""


def _offline() -> bool:
    return any(os.environ.get(v, '').lower() in ('1', 'true', 'yes', 'on') for v in ('HF_HUB_OFFLINE', 'TIMM_OFFLINE'))


def _how_to_proceed(cached: Path | None = None) -> str:
    return ('To proceed: ' + (f'put the file at {cached}, or ' if cached else '')
            + 'pass pretrained_cfg_overlay=dict(file=PATH) with a local copy, '
            "or load converted weights with timm.create_model('hf-hub:ORG/REPO', pretrained=True).")


def _fetch(url: str, dst: Path, progress: bool = True) -> None:
    """Download to a temporary file beside `dst` and move it into place only when complete and plausible."""
    from tqdm import tqdm

    tmp = dst.with_name(f'{dst.name}.{uuid.uuid4().hex}.partial')
    try:
        with urlopen(Request(url, headers={'User-Agent': 'timm-gfnet'}), timeout=TIMEOUT_S) as response:
            total = int(response.headers.get('Content-Length') or 0) or None
            with tmp.open('wb') as f, tqdm(
                    total=total, disable=not progress, unit='B', unit_scale=True, unit_divisor=1024,
                    desc=dst.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        size = tmp.stat().st_size
        # urllib ends a read quietly when the connection closes early: check the length ourselves
        if total is not None and size != total:
            raise OSError(f'the connection closed after {size} of {total} bytes')
        with tmp.open('rb') as f:
            head = f.read(16)
        # a zip (torch.save), a legacy pickle, or safetensors (8-byte header length, then JSON)
        if not (head.startswith((b'PK\x03\x04', b'\x80')) or head[8:9] == b'{'):
            raise OSError(f'the server sent something that is not a checkpoint (starting {head[:16]!r})')
        os.replace(tmp, dst)  # atomic: concurrent processes (DDP ranks) never see a half file
    finally:
        tmp.unlink(missing_ok=True)


def download_authors_checkpoint(
        url: str,
        filename: str,
        cache_dir: str | Path | None = None,
        progress: bool = True,
) -> str:
    """Fetch an authors' checkpoint once into the cache (their links end in `/?dl=1`, so we name the file)."""
    cache_dir = Path(cache_dir or get_cache_dir())
    cached = cache_dir / filename
    if cached.is_file():
        return str(cached)
    if _offline():
        raise PretrainedUnavailableError(
            f'Offline mode is on (HF_HUB_OFFLINE / TIMM_OFFLINE) and {filename} is not cached. '
            f'{_how_to_proceed(cached)}')
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _fetch(url, cached, progress=progress)
    except HTTPError as e:
        refused = ' (access refused: the link may have expired)' if e.code in (401, 403) else ''
        raise PretrainedUnavailableError(
            f'Could not download {filename} from {url}: the server answered {e.code} {e.reason}{refused}. '
            f'{_how_to_proceed(cached)}') from None
    except (URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, 'reason', None) or str(e) or type(e).__name__
        raise PretrainedUnavailableError(
            f'Could not download {filename} from {url} ({reason}). {_how_to_proceed(cached)}') from None
    return str(cached)


def _hub_checkpoint(hub_id: str, cache_dir: str | Path | None) -> str:
    """Path of the converted weights in a Hub repository (via the Hub cache), or PretrainedUnavailableError."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from . import __version__
    repo_id, revision = hf_split(hub_id)
    try:
        return hf_hub_download(
            repo_id, HUB_FILENAME, revision=revision, cache_dir=cache_dir,
            library_name='timm-gfnet', library_version=__version__)
    except (OSError, EntryNotFoundError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedUnavailableError(f'No {HUB_FILENAME} from Hub repository {hub_id} ({reason}).') from None


def resolve_pretrained_source(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Model kwargs whose `pretrained_cfg_overlay` names the local file the weights come from."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=overlay)
    if cfg.source in ('hf-hub', 'local-dir') or cfg.state_dict is not None:
        return kwargs
    # timm resets custom_load for a file source; ours reads authors' files safely and prefers "model" to EMA
    overlay['custom_load'] = True
    if cfg.file:
        return dict(kwargs, pretrained_cfg_overlay=overlay)

    cache_dir = kwargs.get('cache_dir')
    org = os.environ.get(HUB_ORG_ENV)
    hub_id = f'{org}/{cfg.architecture}.{cfg.tag}' if org and cfg.tag else f'{org}/{cfg.architecture}' if org \
        else cfg.hf_hub_id
    if hub_id:
        try:
            overlay['file'] = _hub_checkpoint(hub_id, cache_dir)
            return dict(kwargs, pretrained_cfg_overlay=overlay)
        except PretrainedUnavailableError as e:
            if not cfg.url:
                raise PretrainedUnavailableError(f'{e} {_how_to_proceed()}') from None
            _logger.warning(f"{e} Using the authors' release instead.")
    if not cfg.url:
        return kwargs  # timm reports that no weights exist
    overlay['file'] = download_authors_checkpoint(
        cfg.url, f'{cfg.architecture}.{cfg.tag or "default"}.pth', cache_dir=cache_dir)
    return dict(kwargs, pretrained_cfg_overlay=overlay)

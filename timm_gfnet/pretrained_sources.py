"""Where `pretrained=True` gets its weights, read and checked once for every source.

Order: an explicit state_dict / file / `hf-hub:` / `local-dir:` source; a Hugging Face Hub repository of converted
weights (the cfg's `hf_hub_id`, or `TIMM_GFNET_HF_HUB_ORG=<org>` for `<org>/<model>.<tag>`), falling back to the
authors' link while that repository does not exist; else the authors' direct download link, fetched once into
timm's cache (`$TORCH_HOME/hub/checkpoints`, or `cache_dir=`) under a name made from the link (another link is
another file) and converted when loaded.
"""
import hashlib
import http.client
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import torch
from timm.models import resolve_pretrained_cfg
from timm.models._hub import get_cache_dir, hf_split

from .checkpoint import (
    WEIGHT_FILES,
    Arch,
    CheckpointError,
    check_architecture,
    check_values,
    read_weights,
    unwrap_state_dict,
)

__all__ = ['PretrainedWeights', 'pretrained_weights', 'download_authors_checkpoint', 'authors_cache_name',
           'PretrainedUnavailableError']

_logger = logging.getLogger(__name__)

HUB_ORG_ENV = 'TIMM_GFNET_HF_HUB_ORG'
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


def authors_cache_name(url: str, architecture: str, tag: str) -> str:
    """The cache file of an authors' link: named for the model and keyed by the link itself, so another link (a
    `pretrained_cfg_overlay` url, a mirror) is another file, never the one cached for the first."""
    return f'{architecture}.{tag or "default"}-{hashlib.sha256(url.encode()).hexdigest()[:12]}.pth'


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
    for filename in WEIGHT_FILES:  # safetensors first, as timm does; pytorch_model.bin from older pushes
        try:
            return hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir,
                library_name='timm-gfnet', library_version=__version__)
        except EntryNotFoundError:
            continue
        except OSError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PretrainedUnavailableError(f'No {filename} from Hub repository {hub_id} ({reason}).') from None
    raise PretrainedUnavailableError(f'Hub repository {hub_id} holds no weights ({" or ".join(WEIGHT_FILES)}).')


def _locate(cfg: Any, cache_dir: str | Path | None) -> Tuple[Optional[Path], bool]:
    """(local file or folder of the weights, whether it is a download this package cached) for a resolved cfg."""
    if cfg.source == 'local-dir':
        return Path(cfg.file), False
    if cfg.source == 'hf-hub':
        return Path(_hub_checkpoint(cfg.hf_hub_id, cache_dir)), True
    if cfg.file:
        return Path(cfg.file), False
    org = os.environ.get(HUB_ORG_ENV)
    hub_id = f'{org}/{cfg.architecture}.{cfg.tag}' if org and cfg.tag else f'{org}/{cfg.architecture}' if org \
        else cfg.hf_hub_id
    if hub_id:
        try:
            return Path(_hub_checkpoint(hub_id, cache_dir)), True
        except PretrainedUnavailableError as e:
            if not cfg.url:
                raise PretrainedUnavailableError(f'{e} {_how_to_proceed()}') from None
            _logger.warning(f"{e} Using the authors' release instead.")
    if not cfg.url:
        return None, False  # timm reports that no weights exist
    name = authors_cache_name(cfg.url, cfg.architecture, cfg.tag)
    return Path(download_authors_checkpoint(cfg.url, name, cache_dir=cache_dir)), True


@dataclass
class PretrainedWeights:
    state_dict: Dict[str, torch.Tensor]
    # the image size the source says the weights were trained at (the authors' args.input_size, else the cfg's)
    img_size: Optional[Tuple[int, int]]
    # the downloaded file they were read from, when this package's download or the Hub's cache holds it
    cached: Optional[Path] = None

    def blame_cache(self, error: CheckpointError) -> CheckpointError:
        """`error`, telling which cached download it came from and how to clear it."""
        return _blame_cache(error, self.cached)


def _blame_cache(error: CheckpointError, cached: Optional[Path]) -> CheckpointError:
    if cached is None:
        return error
    return CheckpointError(f'{error} It came from the download cached at {cached.resolve()}: delete that file to '
                           f'fetch it again.')


def pretrained_weights(variant: str, kwargs: Dict[str, Any], arch: Arch) -> Optional[PretrainedWeights]:
    """The weights `pretrained=True` loads for `variant` built with `kwargs`, read once and checked once whatever
    the source (a state_dict, a file, a folder, the Hub, the authors' link): floating point, finite, and of the
    architecture `arch`. None when the cfg names no weights. An error about a cached download names the file and
    how to clear it."""
    overlay = kwargs.get('pretrained_cfg_overlay')
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=overlay)
    cfg_size = tuple(cfg.input_size[-2:]) if cfg.input_size else None
    path, cached = None, None
    if cfg.state_dict is None:
        path, downloaded = _locate(cfg, kwargs.get('cache_dir'))
        if path is None:
            return None
        cached = path if downloaded else None
    try:
        state_dict, img_size = read_weights(path) if path is not None else (unwrap_state_dict(cfg.state_dict), None)
        check_values(state_dict)
        check_architecture(state_dict, variant, arch)
    except CheckpointError as e:
        raise _blame_cache(e, cached) from None
    return PretrainedWeights(state_dict, img_size or cfg_size, cached)

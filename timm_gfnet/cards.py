"""Model cards (Hub `README.md`) for GFNet weights: huggingface_hub's `ModelCard` from the package's Jinja template
(`data/model_card.md`), filled with the registry and with measurements.

Every number a card states is either measured here (parameters, GMACs, activations, feature and embedding shapes,
on a model built on the meta device: same graph and shapes, no weights, no compute) or published by the authors
(`PUBLISHED`: their ImageNet-1k results, stated only for their own weights). Nothing depends on the machine or the
time, so regenerating the cards is a drift check (`timm-gfnet cards --check`).
"""
import functools
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import timm
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from .atomic import drift, write_generated
from .flops import FFT_CONVENTION, profile_model
from .published import PUBLISHED

__all__ = ['CardDriftError', 'generate_card', 'write_cards', 'check_cards']

_TEMPLATE = Path(__file__).resolve().parent / 'data' / 'model_card.md'
ORIGINAL_REPO = 'https://github.com/raoyongming/GFNet'


class CardDriftError(RuntimeError):
    """Committed model cards differ from what the generator writes now."""


def _measure(architecture: str, model_args: Dict[str, Any]) -> Dict[str, Any]:
    """Costs, design and output shapes of the model, measured on the meta device (shapes and FLOPs, no compute).

    `profile_model` counts the filters in the authors' FFT formulation whatever the backend: the cost stated is the
    model's, the same on every machine.
    """
    with torch.device('meta'):
        model = timm.create_model(architecture, **model_args).eval()
        features = timm.create_model(architecture, features_only=True, **model_args)
        input_size = (model.in_chans, *model.patch_embed.img_size)
        x = torch.zeros(1, *input_size)
        unpooled = model.forward_features(x)
        stages = getattr(model, 'stages', None)
        return dict(
            cost=profile_model(model, input_size), num_classes=model.num_classes, input_size=input_size,
            patch=model.patch_embed.patch_size[0], grid=model.patch_embed.grid_size,
            depths=[len(s.blocks) for s in stages] if stages is not None else [len(model.blocks)],
            channels=features.feature_info.channels(), strides=features.feature_info.reduction(),
            feature_modules=features.feature_info.module_name(), feature_shapes=[o.shape for o in features(x)],
            unpooled=unpooled.shape, pooled=model.forward_head(unpooled, pre_logits=True).shape,
        )


def generate_card(
        model_name: str,
        repo_id: Optional[str] = None,
        model_args: Optional[Dict[str, Any]] = None,
        authors_weights: bool = False,
) -> ModelCard:
    """The model card of `model_name` (`architecture.tag`).

    Args:
        model_name: e.g. 'gfnet_ti.in1k'.
        repo_id: the Hub repository the card goes to; its snippets then load `hf-hub:<repo_id>`, else `model_name`.
        model_args: arguments the weights' model is built with (e.g. `num_classes`, `img_size`).
        authors_weights: the weights are the authors' own release of `model_name`: only then, and only for their
            1000 classes at their image size, does the card state their published results.
    """
    architecture, _, tag = model_name.partition('.')
    gfnets = timm.list_models('gfnet*')
    if architecture not in gfnets:
        raise ValueError(f'{architecture!r} is not a GFNet model; choose one of {", ".join(gfnets)}.')
    m = _measure(architecture, dict(model_args or {}))
    cfg = get_pretrained_cfg(model_name) if tag else None
    published = PUBLISHED.get(model_name) if authors_weights else None
    if published and (m['num_classes'], m['input_size']) != (cfg.num_classes, tuple(cfg.input_size)):
        published = None
    eval_results = None
    if published:
        common = dict(task_type='image-classification', task_name='Image Classification', dataset_type='imagenet-1k',
                      dataset_name='ImageNet-1k', dataset_split='validation', source_url=ORIGINAL_REPO,
                      source_name='GFNet, original repository (Rao et al.)')
        eval_results = [
            EvalResult(metric_type='accuracy', metric_name='Top-1 Accuracy', metric_value=published['top1'], **common),
            EvalResult(metric_type='top_5_accuracy', metric_name='Top-5 Accuracy', metric_value=published['top5'],
                       **common),
        ]
    data = ModelCardData(
        tags=['image-classification', 'timm', 'gfnet'], library_name='timm', license='mit',
        datasets=['imagenet-1k'] if published else None, pipeline_tag='image-classification',
        model_name=model_name, eval_results=eval_results,
    )
    return ModelCard.from_template(
        data, template_path=str(_TEMPLATE), model_name=model_name, architecture=architecture, repo_id=repo_id,
        published=published, weights_url=cfg.url[0] if cfg else None, fft_convention=FFT_CONVENTION, **m)


def _names(names: Optional[Sequence[str]]) -> List[str]:
    known = timm.list_pretrained('gfnet*')  # every pretrained tag (`architecture.tag`): one card each
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ValueError(f'No pretrained tag {", ".join(unknown)}; cards exist for {", ".join(known)}.')
    return list(names or known)


def _card(name: str) -> str:
    """The committed card of a pretrained tag: it describes the registered weights, the authors' own."""
    return str(generate_card(name, authors_weights=True))


def _cards(out_dir: Union[str, Path], names: List[str]) -> Dict[Path, Callable[[], str]]:
    return {Path(out_dir) / f'{n}.md': functools.partial(_card, n) for n in names}


def write_cards(out_dir: Union[str, Path], names: Optional[Sequence[str]] = None) -> List[Path]:
    """Write `<out_dir>/<architecture.tag>.md` for every pretrained tag (or `names`)."""
    return write_generated(_cards(out_dir, _names(names)))


def check_cards(out_dir: Union[str, Path], names: Optional[Sequence[str]] = None) -> List[str]:
    """Problems of the cards in `out_dir` against the generator: 'NAME.md (missing)', '(out of date)' or, when
    checking the whole family, '(no such pretrained tag)' for stale cards. Empty when everything is current."""
    cards = _cards(out_dir, _names(names))
    stale = [] if names else [p for p in sorted(Path(out_dir).glob('*.md')) if p not in cards]
    return drift(cards, stale, 'pretrained tag')

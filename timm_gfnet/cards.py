"""Model cards (Hub `README.md`) for GFNet weights, generated from the registry and from measurements.

Every number a card states is either measured here (parameters, GMACs, activations, feature and embedding shapes,
on a model built on the meta device: same graph and shapes, no weights, no compute) or published by the authors
(`PUBLISHED`: their ImageNet-1k results, parameter and FLOP counts; the registry's cfgs: their download links).
Nothing depends on the machine or the time, so regenerating the cards is a drift check (`timm-gfnet cards --check`).
"""
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import timm
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from .atomic import write_text
from .flops import FFT_CONVENTION, profile_model
from .gfnet import GFNet
from .published import PUBLISHED

__all__ = ['PUBLISHED', 'CITATION', 'CardDriftError', 'card_names', 'generate_card', 'write_cards', 'check_cards']

ORIGINAL_REPO = 'https://github.com/raoyongming/GFNet'
PAPERS = (
    ('Global Filter Networks for Image Classification', 'https://arxiv.org/abs/2107.00645'),
    ('GFNet: Global Filter Networks for Visual Recognition', 'https://arxiv.org/abs/2304.06446'),
)
CITATION = """@inproceedings{rao2021global,
  title={Global Filter Networks for Image Classification},
  author={Rao, Yongming and Zhao, Wenliang and Zhu, Zheng and Lu, Jiwen and Zhou, Jie},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2021}
}"""
# An RGB photo timm's own model cards use in their snippets.
EXAMPLE_IMAGE = 'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'

class CardDriftError(RuntimeError):
    """Committed model cards differ from what the generator writes now."""


def card_names() -> List[str]:
    """Every pretrained tag of the GFNet family (`architecture.tag`): one card each."""
    return timm.list_pretrained('gfnet*')


def _measure(architecture: str, model_args: Dict[str, Any]) -> Dict[str, Any]:
    """Costs and output shapes of the model, measured on the meta device (shapes and FLOPs without the compute).

    `profile_model` counts the filters in the authors' FFT formulation whatever the backend: the cost stated is the
    model's, the same on every machine.
    """
    with torch.device('meta'):
        model = timm.create_model(architecture, **model_args).eval()
        input_size = (model.in_chans, *model.patch_embed.img_size)
        cost = profile_model(model, input_size)
        x = torch.zeros(1, *input_size)
        features = timm.create_model(architecture, features_only=True, **model_args)
        feature_shapes = [tuple(o.shape) for o in features(x)]
        unpooled = tuple(model.forward_features(x).shape)
        pooled = tuple(model.forward_head(model.forward_features(x), pre_logits=True).shape)
    if isinstance(model, GFNet):
        patch = model.patch_embed.patch_size[0]
        design = (f'Isotropic: a {patch}x{patch} patch embedding, then {len(model.blocks)} global filter blocks of '
                  f'width {model.num_features} on a {" x ".join(map(str, model.grid_size))} token grid.')
    else:
        depths = ', '.join(str(len(s.blocks)) for s in model.stages)
        widths = ', '.join(str(f['num_chs']) for f in model.feature_info)
        strides = ', '.join(str(f['reduction']) for f in model.feature_info)
        patch = model.patch_embed.patch_size[0]
        design = (f'Hierarchical: a {patch}x{patch} patch stem, then {len(model.stages)} stages of {depths} global '
                  f'filter blocks (widths {widths}, strides {strides}) joined by 2x2 stride-2 convolutions, with '
                  f'layer scale.')
    return dict(
        cost=cost, input_size=input_size, num_classes=model.num_classes, design=design,
        feature_channels=features.feature_info.channels(), feature_strides=features.feature_info.reduction(),
        feature_modules=features.feature_info.module_name(), feature_shapes=feature_shapes,
        unpooled=unpooled, pooled=pooled,
    )


def _size(shape: Sequence[int]) -> str:
    return f'torch.Size([{", ".join(map(str, shape))}])'


def _snippets(model_id: str, m: Dict[str, Any], imagenet: bool) -> str:
    head = textwrap.dedent(f"""\
        from urllib.request import urlopen
        from PIL import Image
        import timm
        import torch

        img = Image.open(urlopen(
            '{EXAMPLE_IMAGE}'
        )).convert('RGB')
        """)
    transforms = textwrap.dedent("""\
        model = model.eval()

        # get model specific transforms (normalization, resize)
        data_config = timm.data.resolve_model_data_config(model)
        transforms = timm.data.create_transform(**data_config, is_training=False)
        """)
    classify = head + f"\nmodel = timm.create_model('{model_id}', pretrained=True)\n" + transforms + textwrap.dedent(
        """
        with torch.no_grad():
            output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1

        top5_probabilities, top5_class_indices = torch.topk(output.softmax(dim=1) * 100, k=5)
        """)
    if imagenet:
        classify += textwrap.dedent("""
            info = timm.data.ImageNetInfo()  # ImageNet-1k class names
            for prob, idx in zip(top5_probabilities[0], top5_class_indices[0]):
                print(f'{info.index_to_description(idx.item())}: {prob.item():.1f}%')
            """)
    else:
        classify += "print(top5_class_indices[0].tolist(), top5_probabilities[0].tolist())\n"
    feature_comments = ''.join(f'    #  {_size(s)}\n' for s in m['feature_shapes'])
    features = head + f"\nmodel = timm.create_model(\n    '{model_id}',\n    pretrained=True,\n" \
        "    features_only=True,\n)\n" + transforms + textwrap.dedent("""
        with torch.no_grad():
            output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1

        for o in output:
            # print shape of each feature map in output
            # e.g.:
        """) + feature_comments + '    print(o.shape)\n'
    embed = head + f"\nmodel = timm.create_model(\n    '{model_id}',\n    pretrained=True,\n" \
        "    num_classes=0,  # remove classifier nn.Linear\n)\n" + transforms + textwrap.dedent(f"""
        with torch.no_grad():
            output = model(transforms(img).unsqueeze(0))  # output is (batch_size, num_features) shaped tensor
        print(output.shape)  # {_size(m['pooled'])}

        # or equivalently (without needing to set num_classes=0)

        with torch.no_grad():
            output = model.forward_features(transforms(img).unsqueeze(0))
            print(output.shape)  # {_size(m['unpooled'])}: unpooled and channels-last (B, H, W, C)
            output = model.forward_head(output, pre_logits=True)
            print(output.shape)  # {_size(m['pooled'])}: (batch_size, num_features)
        """)
    return '\n'.join([
        '### Image Classification', f'```python\n{classify}```', '',
        '### Feature Map Extraction', f'```python\n{features}```', '',
        '### Image Embeddings', f'```python\n{embed}```',
    ])


def generate_card(
        model_name: str,
        repo_id: Optional[str] = None,
        model_args: Optional[Dict[str, Any]] = None,
) -> ModelCard:
    """The model card of `model_name` (`architecture.tag`).

    Args:
        model_name: e.g. 'gfnet_ti.in1k'.
        repo_id: the Hub repository the card goes to; its snippets then load `hf-hub:<repo_id>`, else `model_name`.
        model_args: arguments the weights' model is built with (config.json's `model_args`). The authors'
            published results are stated only for a published tag with its original classes and image size.
    """
    architecture, _, tag = model_name.partition('.')
    gfnets = timm.list_models('gfnet*')
    if architecture not in gfnets:
        raise ValueError(f'{architecture!r} is not a GFNet model; choose one of {", ".join(gfnets)}.')
    m = _measure(architecture, dict(model_args or {}))
    published = PUBLISHED.get(model_name)
    if published:
        # the published results hold for the published classes and image size only
        cfg = get_pretrained_cfg(model_name)
        if (m['num_classes'], m['input_size']) != (cfg.num_classes, tuple(cfg.input_size)):
            published = None
    imagenet = m['num_classes'] == 1000
    model_id = f'hf-hub:{repo_id}' if repo_id else model_name
    cost = m['cost']

    eval_results = None
    if published:
        source = dict(source_name='GFNet, original repository (Rao et al.)', source_url=ORIGINAL_REPO)
        dataset = dict(task_type='image-classification', task_name='Image Classification', dataset_type='imagenet-1k',
                       dataset_name='ImageNet-1k', dataset_split='validation')
        eval_results = [
            EvalResult(**dataset, metric_type='accuracy', metric_name='Top-1 Accuracy', metric_value=published['top1'],
                       **source),
            EvalResult(**dataset, metric_type='top_5_accuracy', metric_name='Top-5 Accuracy',
                       metric_value=published['top5'], **source),
        ]
    data = ModelCardData(
        tags=['image-classification', 'timm', 'gfnet'],
        library_name='timm',
        license='mit',
        datasets=['imagenet-1k'] if published else None,
        pipeline_tag='image-classification',
        model_name=model_name,
        eval_results=eval_results,
    )

    if published:
        intro = ('A GFNet (Global Filter Network) image classification model. Trained on ImageNet-1k by the paper '
                 'authors; their weights in `timm`\'s layout, converted with `timm-gfnet`.')
    else:
        intro = (f'A GFNet (Global Filter Network) image classification model: architecture `{architecture}`, '
                 f'{m["num_classes"]} classes, {m["input_size"][1]} x {m["input_size"][2]} input.')
    details = [
        '- **Model Type:** Image classification / feature backbone',
        '- **Model Stats:**',
        f'  - Params (M): {cost["params_m"]:.2f}',
        f'  - GMACs: {cost["gmacs"]:.2f}',
        f'  - Activations (M): {cost["macts"]:.2f}',
        f'  - Image size: {m["input_size"][1]} x {m["input_size"][2]}',
        f'- **Feature maps** (`features_only=True`, outputs of {", ".join(m["feature_modules"])}):',
        f'  - Channels: {", ".join(map(str, m["feature_channels"]))}',
        f'  - Strides: {", ".join(map(str, m["feature_strides"]))}',
        '- **Papers:**',
        *[f'  - {title}: {url}' for title, url in PAPERS],
        f'- **Original:** {ORIGINAL_REPO}',
    ]
    if published:
        details += [
            f'- **Original weights:** {get_pretrained_cfg(model_name).url} (mirror: {published["gdrive"]})',
            '- **Dataset:** ImageNet-1k',
        ]
    details.append('- **License:** MIT (the licence of the authors\' code and weights)')

    sections = [
        f'# Model card for {model_name}', '',
        intro, '',
        'Each block mixes tokens with a global filter instead of self-attention: a 2D FFT of the token grid, an '
        'element-wise product with a learned complex filter, and the inverse FFT. ' + m['design'], '',
        '## Model Details', *details, '',
    ]
    if published:
        sections += [
            '## Results', '',
            'ImageNet-1k validation accuracy, as published by the authors:', '',
            '| model | top-1 (%) | top-5 (%) | params (published) | FLOPs (published) |',
            '|---|---|---|---|---|',
            f'| {model_name} | {published["top1"]} | {published["top5"]} | {published["params"]} | '
            f'{published["flops"]} |', '',
        ]
    sections += [
        'Params, GMACs and activations above are measured on this implementation with torch\'s FLOP counter, '
        f'{FFT_CONVENTION}; activations are the outputs of the linear and conv layers.', '',
        '## Model Usage', '',
        '`pip install timm-gfnet` registers the GFNet architectures with `timm` (no import needed).'
        + ('' if repo_id else f' `pretrained=True` downloads the authors\' original weights and converts them '
           f'when loading; with `TIMM_GFNET_HF_HUB_ORG=<org>` set, it loads `<org>/{model_name}` from the Hub '
           'instead.'), '',
        _snippets(model_id, m, imagenet), '',
        '## Citation',
        f'```bibtex\n{CITATION}\n```', '',
    ]
    card = ModelCard(f'---\n{data.to_yaml()}\n---\n\n' + '\n'.join(sections))
    return card


def _card_path(out_dir: Path, name: str) -> Path:
    return out_dir / f'{name}.md'


def _check_names(names: Optional[Sequence[str]]) -> List[str]:
    known = card_names()
    names = list(names or known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f'No pretrained tag {", ".join(unknown)}; cards exist for {", ".join(known)}.')
    return names


def write_cards(out_dir: Union[str, Path], names: Optional[Sequence[str]] = None) -> List[Path]:
    """Write `<out_dir>/<architecture.tag>.md` for every pretrained tag (or `names`)."""
    names = _check_names(names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = _card_path(out_dir, name)
        write_text(path, str(generate_card(name)))
        written.append(path)
    return written


def check_cards(out_dir: Union[str, Path], names: Optional[Sequence[str]] = None) -> List[str]:
    """Problems of the cards in `out_dir` against the generator: 'NAME.md (missing)', '(out of date)' or, when
    checking the whole family, '(no such pretrained tag)' for stale cards. Empty when everything is current."""
    out_dir = Path(out_dir)
    check_all = not names
    names = _check_names(names)
    problems = []
    for name in names:
        path = _card_path(out_dir, name)
        if not path.is_file():
            problems.append(f'{path.name} (missing)')
        elif path.read_text(encoding='utf-8') != str(generate_card(name)):
            problems.append(f'{path.name} (out of date)')
    if check_all and out_dir.is_dir():
        problems += [f'{p.name} (no such pretrained tag)' for p in sorted(out_dir.glob('*.md'))
                     if p.stem not in names]
    return problems

"""Training recipes: the authors' GFNet training as YAML configs for timm's `train.py --config FILE`.

The values are the authors' own, read as data (`data/training.json`: the argparse defaults of their DeiT-style
`main_gfnet.py` and `main_gfnet_transfer.py`, the stochastic depth each variant is built with, their learning-rate rule
and the command lines of their README). What their scripts do in code rather than through arguments (mixed precision,
the evaluation crop, fine-tuning in eval mode, the epoch loop) is stated here beside the setting it decides, with its
source (https://github.com/raoyongming/GFNet).

Every key is an argparse destination of timm's train.py: train.py hands the YAML to `parser.set_defaults(**cfg)`,
which keeps a misspelt key without a word. The values are written by PyYAML, the library train.py reads them with,
each with its source as a comment. Nothing depends on the machine or the time, so regenerating the committed files
is a drift check (`timm-gfnet recipe --all --check`).
"""
import json
import re
import shlex
import textwrap
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Tuple, Union

import yaml

from .atomic import drift, write_generated

__all__ = ['TASKS', 'RecipeDriftError', 'generate_recipe', 'write_recipes', 'check_recipes']

TASKS = ('in1k', 'in1k-384', 'transfer')
AUTHORS_REPO = 'https://github.com/raoyongming/GFNet'
_DATA = Path(__file__).resolve().parent / 'data' / 'training.json'
_TITLES = {
    'in1k': 'ImageNet-1k from scratch at {size}',
    'in1k-384': 'ImageNet-1k fine-tuning at {size} from the 224 weights',
    'transfer': 'transfer learning at {size} from the ImageNet-1k weights',
}
# what `pretrained` means per task: (source, note)
_PRETRAINED = {
    'in1k': ('no --finetune: from scratch', ''),
    'in1k-384': ('--finetune: the released ImageNet-1k 224 weights',
                 "timm-gfnet downloads the authors' checkpoint and, at another img_size, resamples pos_embed and every "
                 'filter on load (bicubic), as their --finetune does. Your own 224 checkpoint instead: add '
                 '--pretrained-path FILE (train.py of timm 1.0.31).'),
    'transfer': ('--finetune: the released ImageNet-1k 224 weights',
                 "The classifier is new: timm drops the checkpoint's head for num_classes other than 1000 (they delete "
                 'head.* in every case).'),
}


class RecipeDriftError(RuntimeError):
    """Committed recipes differ from what the generator writes now."""


class _Setting(NamedTuple):
    key: str
    value: Any
    source: str  # where the value comes from: the comment beside it
    note: str = ''  # what a literal reading would do differently, and why: comment lines above it
    commented: bool = False  # written as a comment for the user to fill in, not set


@lru_cache(maxsize=None)
def _data() -> str:
    return _DATA.read_text(encoding='utf-8')


def _models() -> List[str]:
    """The seven GFNet models (our names), from the authors' table of stochastic depth per variant."""
    return sorted(a.replace('-', '_') for a in json.loads(_data())['imagenet_drop_path_rate_by_arch'])


def _authors_run(model: str, task: str) -> Dict[str, Any]:
    """The argparse values of the authors' run of `task` for `model`: their script's defaults, overridden by their
    README command line (shown for gfnet-xs, the same for every variant with its own --arch), cast to the defaults'
    types. Adds `script`, `world_size` (the launcher's --nproc_per_node), `command` and `from_command`."""
    if model not in _models():
        raise ValueError(f'Unknown model {model!r}: pick one of {", ".join(_models())}.')
    if task not in TASKS:
        raise ValueError(f'Unknown task {task!r}: pick one of {", ".join(TASKS)}.')
    data = json.loads(_data())
    for command in data['readme_commands']:  # main_gfnet.py without / with --finetune, main_gfnet_transfer.py
        tokens = shlex.split(command)
        i = next(i for i, t in enumerate(tokens) if t.endswith('.py'))
        # their commands give every option a value
        options = {k[2:].replace('-', '_'): v for k, v in zip(tokens[i + 1::2], tokens[i + 2::2])}
        kind = 'transfer' if 'transfer' in tokens[i] else 'in1k-384' if 'finetune' in options else 'in1k'
        if kind == task:  # each task has its command (TASKS checked above; the drift check covers training.json)
            break
    run = dict(data['transfer_defaults' if task == 'transfer' else 'imagenet_defaults'])
    run.update({k: type(run[k])(v) if isinstance(run.get(k), (int, float)) else v for k, v in options.items()})
    return dict(run, arch=model.replace('_', '-'), script=tokens[i], command=command, from_command=sorted(options),
                world_size=int(re.search(r'--nproc_per_node=(\d+)', command).group(1)))


def _lr_base_size() -> int:
    """512 of their rule `lr * batch_size * world_size / 512` (main_gfnet.py's linear_scaled_lr)."""
    rule = json.loads(_data())['lr_scaling']
    return int(re.search(r'batch_size_per_gpu \* world_size / (\d+)', rule).group(1))


def _source(run: Dict[str, Any], name: str, what: str = '') -> str:
    """Where their run's value of `name` is set: their README command, or their script's argparse default."""
    value = ' '.join(map(str, run[name])) if isinstance(run[name], list) else run[name]
    option = '--num_workers' if name == 'num_workers' else '--' + name.replace('_', '-')
    where = 'README command' if name in run['from_command'] else run['script']
    default = '' if name in run['from_command'] else ' default'
    return f'{where} {option}{default} {value}' + (f', {what}' if what else '')


def _model_settings(model: str, task: str, run: Dict[str, Any]) -> List[_Setting]:
    script, arch, size = run['script'], run['arch'], run['input_size']
    rate = json.loads(_data())['imagenet_drop_path_rate_by_arch'][arch]
    if task == 'in1k':
        drop_path = _Setting('drop_path', rate, f'{script} builds {arch} with drop_path_rate={rate}',
                             f"Their model builders set each variant's own rate and ignore --drop-path "
                             f"({run['drop_path']})." if rate != run['drop_path'] else '')
    else:
        drop_path = _Setting(
            'drop_path', 0.0, f'{script}: --finetune trains in eval mode, stochastic depth off',
            "Their train_one_epoch(set_training_mode=args.finetune == '') keeps the model in eval mode when "
            + (f'fine-tuning, so the drop_path_rate {rate} {arch} is built with never acts. GFNet has no batch norm '
               f'and dropout 0, so drop_path 0 in train mode computes what they computed.' if rate else
               f'fine-tuning: no stochastic depth ({arch} is built without it anyway).'))
    if task == 'transfer':
        num_classes = _Setting(
            'num_classes', 196, 'README command --data-set CARS (Stanford Cars: 196 classes)',
            "Set num_classes to your dataset's class count (or pass --num-classes N): without it train.py trains the "
            '1000-class ImageNet head.', commented=True)
    else:
        num_classes = _Setting('num_classes', 1000, f'{script} --data-set IMNET: 1000 classes')
    img_size = [_Setting('img_size', size, _source(run, 'input_size'))]
    if size != 224:
        img_size.append(_Setting(
            'model_kwargs', {'img_size': size}, 'build the model at this size',
            'img_size alone sizes the data; train.py of some timm releases does not pass it to create_model, '
            'model_kwargs does (where it is passed, the two agree).'))
    return [
        _Setting('model', model, f'{script} --arch {arch}'),
        _Setting('pretrained', task != 'in1k', *_PRETRAINED[task]),
        num_classes, *img_size,
        _Setting('drop', run['drop'], f"{script} builds the models without it: GFNet's drop_rate 0"),
        drop_path,
    ]


def _sections(model: str, task: str) -> List[Tuple[str, List[_Setting]]]:
    run = _authors_run(model, task)
    script, n, b, base = run['script'], run['world_size'], run['batch_size'], _lr_base_size()

    def arg(key: str, what: str = '', name: str = '') -> _Setting:
        """A value of their run, under train.py's key."""
        return _Setting(key, run[name or key], _source(run, name or key, what))

    return [('Model', _model_settings(model, task, run)), ('Data and evaluation', [
        _Setting('batch_size', b, _source(run, 'batch_size', f'per process, x {n} (--nproc_per_node)')),
        _Setting('validation_batch_size', int(1.5 * b),
                 f'{script}: data_loader_val batch_size=int(1.5 * args.batch_size)'),
        _Setting('crop_pct', 0.875, 'datasets.py build_transform: Resize(int(256 / 224 * size)), CenterCrop(size)',
                 "Their evaluation crop, as this package's pretrained cfg has it."),
        _Setting('interpolation', 'bicubic', 'datasets.py build_transform: Resize(..., interpolation=3)'),
        # timm's IMAGENET_DEFAULT_MEAN / _STD, written out so the recipe needs no timm import
        _Setting('mean', [0.485, 0.456, 0.406], 'datasets.py: Normalize(IMAGENET_DEFAULT_MEAN, ...)'),
        _Setting('std', [0.229, 0.224, 0.225], 'datasets.py: Normalize(..., IMAGENET_DEFAULT_STD)'),
        arg('workers', name='num_workers'), arg('pin_mem'),
    ]), ('Optimizer', [
        arg('opt'), arg('opt_eps'), arg('opt_betas', "AdamW's (0.9, 0.999)"),
        arg('weight_decay', 'not on biases, norms, pos_embed'),
        _Setting('clip_grad', float(run['clip_grad']), _source(run, 'clip_grad')),
        _Setting('clip_mode', 'norm', "engine.py: timm's NativeScaler(clip_grad=...) clips the global norm"),
    ]), ('Learning rate schedule', [
        _Setting('lr_base', run['lr'], _source(run, 'lr', f'their lr for a batch of {base}'),
                 f'lr = lr_base * batch_size * processes * grad_accum_steps / lr_base_size: their linear rule '
                 f'(lr * batch_size * world_size / {base}) for any batch and number of processes, '
                 f'{run["lr"] * n * b / base:g} on their {n} x {b}. Do not set lr: it overrides the rule.'),
        _Setting('lr_base_size', base, f'{script}: linear_scaled_lr = args.lr * ... / {base}.0'),
        _Setting('lr_base_scale', 'linear', f'{script}: scaled linearly',
                 'Left empty, train.py picks sqrt scaling for any optimizer named ada* or lamb (adamw too).'),
        _Setting('grad_accum_steps', 1, f'{script}: one update per batch'),
        arg('sched'),
        _Setting('sched_on_updates', False, f'{script}: lr_scheduler.step(epoch) once per epoch'),
        arg('epochs'), arg('warmup_epochs'), arg('warmup_lr'),
        _Setting('warmup_prefix', False, "their timm's cosine counts warm-up inside the epochs"),
        arg('min_lr'),
        _Setting('cooldown_epochs', 0, f'{script}: for epoch in range(args.start_epoch, args.epochs)',
                 f'Not their --cooldown-epochs {run["cooldown_epochs"]}: their loop stops at --epochs, so those '
                 f'epochs never ran; train.py trains epochs + cooldown_epochs. Not expressible: they step the '
                 f'scheduler with the epoch just finished, so their epoch e (e >= 1) ran at the value train.py '
                 f'gives epoch e - 1 (their first two both at warmup_lr): the same curve, one epoch later.'),
    ]), ('Augmentation and regularization', [
        arg('aa'), arg('color_jitter', 'inactive with RandAugment in timm'), arg('train_interpolation'),
        _Setting('reprob', float(run['reprob']), _source(run, 'reprob', 'random erasing off')),
        arg('remode'), arg('recount'), arg('resplit'),
        _Setting('aug_repeats', 3 if run['repeated_aug'] else 0, _source(
            run, 'repeated_aug', "DeiT's RASampler: 3 repeats" if run['repeated_aug'] else 'no repeated augmentation')),
        arg('mixup'), arg('cutmix'), arg('mixup_prob'), arg('mixup_switch_prob'), arg('mixup_mode'),
        arg('smoothing', 'applied through mixup targets, as theirs'),
    ]), ('EMA, precision, seed', [
        arg('model_ema'), arg('model_ema_decay', 'used only with model_ema'),
        _Setting('amp', True, 'engine.py: torch.cuda.amp.autocast() with a loss scaler (timm NativeScaler)'),
        _Setting('amp_dtype', 'float16', "engine.py: autocast's default float16"),
        _Setting('seed', run['seed'], _source(run, 'seed', 'plus the rank in both scripts'),
                 'Same seeding formula, different random streams: runs are not bitwise alike.'),
    ])]


def _comment(text: str, width: int = 116) -> List[str]:
    return [f'# {line}' for line in textwrap.wrap(text, width - 2, break_on_hyphens=False)]


def generate_recipe(model: str, task: str = 'in1k') -> str:
    """The YAML config of `task` for `model`, for timm's `train.py --config`: every value with its source."""
    run = _authors_run(model, task)
    n, b, size = run['world_size'], run['batch_size'], run['input_size']
    path = f'recipes/{model}.{task}.yaml'
    run_args = f'--config {path} ' + ('--data-dir /path/to/dataset --num-classes N' if task == 'transfer' else
                                      '--data-dir /path/to/imagenet')
    lr = run['lr'] * b / _lr_base_size()
    lines = _comment(
        f"{model} ({run['arch']}): {_TITLES[task].format(size=size)}, the authors' recipe for timm's train.py. "
        f'Generated by `timm-gfnet recipe {model} --task {task}`: regenerate, do not edit.')
    lines += ['#'] + _comment(
        f'Source: {AUTHORS_REPO} {run["script"]} (argparse defaults, model builders, training loop), engine.py, '
        f'datasets.py, and their README command (shown for gfnet-xs; every variant with its own --arch):')
    lines += [f'#   {" ".join(run["command"].split())}', '#', '# Run (their 8 processes, then one GPU):',
              f'#   torchrun --nproc_per_node={n} train.py {run_args}', f'#   python train.py {run_args}']
    lines += _comment(
        f'The learning rate follows their linear rule for any batch and number of processes: {lr * n:g} on {n} x {b}, '
        f'{lr:g} on 1 x {b}. One GPU trains with a smaller global batch than theirs: --grad-accum-steps {n} '
        f'restores {n * b} images per update (and the learning rate).')
    if task == 'transfer':
        lines += ['#'] + _comment(
            "Fill in: --data-dir (an ImageFolder root with train/ and val/ folders, or --dataset NAME) and "
            "num_classes (your dataset's class count; Stanford Cars, their example, has 196). Their Cars split is "
            'train and test: with a test/ folder add --val-split test.')
    sections = _sections(model, task)
    settings = [s for _, section in sections for s in section]
    # PyYAML, train.py's reader, writes the values: a line per key (its lists and mappings in flow style)
    dumped = yaml.safe_dump({s.key: s.value for s in settings}, sort_keys=False, default_flow_style=None,
                            width=float('inf')).splitlines()
    entries = {s.key: ('# ' if s.commented else '') + line for s, line in zip(settings, dumped)}
    for title, section in sections:
        lines += ['', f'# {title}']
        width = max(len(entries[s.key]) for s in section)
        for s in section:
            lines += _comment(s.note) + [f'{entries[s.key].ljust(width)}  # {s.source}']
    return '\n'.join(lines) + '\n'


def _recipes(out_dir: Union[str, Path]) -> Dict[Path, Callable[[], str]]:
    """{path: generator} of every recipe (7 models x 3 tasks) in `out_dir`."""
    return {Path(out_dir) / f'{m}.{t}.yaml': partial(generate_recipe, m, t) for m in _models() for t in TASKS}


def write_recipes(out_dir: Union[str, Path] = 'recipes') -> List[Path]:
    """Write every recipe (7 models x 3 tasks) to `out_dir`."""
    return write_generated(_recipes(out_dir))


def check_recipes(out_dir: Union[str, Path] = 'recipes') -> List[str]:
    """Problems of the recipes in `out_dir` against the generator: 'NAME (missing)', '(out of date)', and
    '(no such recipe)' for stale files. Empty when everything is current."""
    recipes = _recipes(out_dir)
    return drift(recipes, [p for p in sorted(Path(out_dir).glob('*.yaml')) if p not in recipes], 'recipe')

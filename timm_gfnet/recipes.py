"""Training recipes: the authors' GFNet training as YAML configs for timm's `train.py --config FILE`.

The values are the authors' own, read as data (`data/training.json`: the argparse defaults of their DeiT-style
`main_gfnet.py` and `main_gfnet_transfer.py`, the stochastic depth each variant is built with, their learning-rate rule
and the command lines of their README). What their scripts do in code rather than through arguments (mixed precision,
the evaluation crop, fine-tuning in eval mode, the epoch loop) is stated here beside the setting it decides, with its
source (https://github.com/raoyongming/GFNet).

Every key is an argparse destination of timm's train.py: train.py hands the YAML to `parser.set_defaults(**cfg)`,
which keeps a misspelt key without a word. Nothing depends on the machine or the time, so regenerating the committed
files is a drift check (`timm-gfnet recipe --all --check`).
"""
import json
import re
import shlex
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from .atomic import write_text

__all__ = [
    'TASKS', 'RecipeDriftError', 'load_training_data', 'recipe_models', 'authors_arch', 'authors_run',
    'authors_lr', 'recipe_values', 'generate_recipe', 'recipe_path', 'write_recipes', 'check_recipes',
]

TASKS = ('in1k', 'in1k-384', 'transfer')
AUTHORS_REPO = 'https://github.com/raoyongming/GFNet'
_DATA = Path(__file__).resolve().parent / 'data' / 'training.json'
# the authors' datasets.py normalises with timm's IMAGENET_DEFAULT_MEAN / _STD (constants, written out here so the
# recipe needs no timm import; tests compare them with timm's)
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_TITLES = {
    'in1k': 'ImageNet-1k from scratch at {size}',
    'in1k-384': 'ImageNet-1k fine-tuning at {size} from the 224 weights',
    'transfer': 'transfer learning at {size} from the ImageNet-1k weights',
}


class RecipeDriftError(RuntimeError):
    """Committed recipes differ from what the generator writes now."""


@lru_cache(maxsize=None)
def _load() -> str:
    return _DATA.read_text(encoding='utf-8')


def load_training_data() -> Dict[str, Any]:
    """The authors' training settings as data (a fresh copy of the packaged `data/training.json`)."""
    return json.loads(_load())


def authors_arch(model: str) -> str:
    """The authors' name of a model: gfnet_h_ti -> gfnet-h-ti."""
    return model.replace('_', '-')


def recipe_models() -> List[str]:
    """The seven GFNet models (our names), from the authors' table of stochastic depth per variant."""
    return sorted(a.replace('-', '_') for a in load_training_data()['imagenet_drop_path_rate_by_arch'])


def _check(model: str, task: str) -> None:
    if model not in recipe_models():
        raise ValueError(f'Unknown model {model!r}: pick one of {", ".join(recipe_models())}.')
    if task not in TASKS:
        raise ValueError(f'Unknown task {task!r}: pick one of {", ".join(TASKS)}.')


def _parse_command(command: str) -> Tuple[str, Dict[str, str], Dict[str, str]]:
    """(script, launcher options, script options) of one of their README command lines."""
    tokens = shlex.split(command)
    i = next(i for i, t in enumerate(tokens) if t.endswith('.py'))
    launcher = dict(t[2:].split('=', 1) for t in tokens[:i] if t.startswith('--') and '=' in t)
    options: Dict[str, str] = {}
    rest = tokens[i + 1:]
    j = 0
    while j < len(rest):
        key = rest[j][2:].replace('-', '_')
        if j + 1 < len(rest) and not rest[j + 1].startswith('--'):
            options[key], j = rest[j + 1], j + 2
        else:
            options[key], j = 'true', j + 1
    return tokens[i], launcher, options


def _command(task: str) -> str:
    """Their README command line of a task: main_gfnet.py without / with --finetune, main_gfnet_transfer.py."""
    for command in load_training_data()['readme_commands']:
        script, _, options = _parse_command(command)
        kind = 'transfer' if script == 'main_gfnet_transfer.py' else 'in1k-384' if 'finetune' in options else 'in1k'
        if kind == task:
            return command
    raise ValueError(f'no command line of the authors for {task!r}')


def _cast(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        return value.lower() == 'true'
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def authors_run(model: str, task: str) -> Dict[str, Any]:
    """The argparse values of the authors' run of `task` for `model`: their script's defaults, overridden by their
    README command line (shown for gfnet-xs, the same for every variant with its own --arch). Adds `script`,
    `world_size` (the launcher's --nproc_per_node), `command` and `from_command` (the options the command sets)."""
    _check(model, task)
    data = load_training_data()
    command = _command(task)
    script, launcher, options = _parse_command(command)
    run = dict(data['transfer_defaults'] if task == 'transfer' else data['imagenet_defaults'])
    for key, value in options.items():
        run[key] = _cast(value, run.get(key))
    run.update(arch=authors_arch(model), script=script, world_size=int(launcher.get('nproc_per_node', 1)),
               command=command, from_command=sorted(options))
    return run


def _lr_base_size() -> int:
    rule = load_training_data()['lr_scaling']
    match = re.search(r'/\s*(\d+)', rule)
    if not match or 'batch_size_per_gpu * world_size' not in rule:
        raise ValueError(f'unexpected learning-rate rule in training.json: {rule!r}')
    return int(match.group(1))


def authors_lr(lr: float, batch_size: int, world_size: int) -> float:
    """The authors' learning-rate rule: `args.lr * args.batch_size * world_size / 512` (main_gfnet.py)."""
    return lr * batch_size * world_size / _lr_base_size()


@dataclass(frozen=True)
class _Setting:
    key: str
    value: Any
    source: str  # where the value comes from: the comment beside it
    note: str = ''  # what a literal reading would do differently, and why: comment lines above it
    commented: bool = False  # written as a comment for the user to fill in, not set


def _option(key: str) -> str:
    return {'num_workers': '--num_workers'}.get(key, '--' + key.replace('_', '-'))


def _sections(model: str, task: str) -> List[Tuple[str, List[_Setting]]]:
    run = authors_run(model, task)
    script, finetune, size = run['script'], bool(run.get('finetune')), run['input_size']

    def src(key: str, what: str = '') -> str:
        value = run[key]
        shown = ' '.join(map(str, value)) if isinstance(value, list) else value
        where = f'README command {_option(key)} {shown}' if key in run['from_command'] else \
            f'{script} {_option(key)} default {shown}'
        return f'{where}{", " + what if what else ""}'

    base_size = _lr_base_size()
    drop_path = load_training_data()['imagenet_drop_path_rate_by_arch'][run['arch']]
    if finetune:
        drop_path_setting = _Setting(
            'drop_path', 0.0, f'{script}: --finetune trains in eval mode, stochastic depth off',
            "Their train_one_epoch(set_training_mode=args.finetune == '') keeps the model in eval mode when "
            + (f'fine-tuning, so the drop_path_rate {drop_path} {run["arch"]} is built with never acts. GFNet has no '
               f'batch norm and dropout 0, so drop_path 0 in train mode computes what they computed.' if drop_path
               else f'fine-tuning: no stochastic depth ({run["arch"]} is built without it anyway).'))
    else:
        drop_path_setting = _Setting(
            'drop_path', drop_path, f'{script} builds {run["arch"]} with drop_path_rate={drop_path}',
            f'Their model builders set each variant\'s own rate and ignore --drop-path ({run["drop_path"]}).'
            if drop_path != run['drop_path'] else '')

    model_settings = [
        _Setting('model', model, f'{script} --arch {run["arch"]}'),
        _Setting('pretrained', finetune,
                 'no --finetune: from scratch' if not finetune else
                 '--finetune: the released ImageNet-1k 224 weights',
                 '' if not finetune else
                 'timm-gfnet downloads the authors\' checkpoint and, at another img_size, resamples pos_embed and '
                 'every filter on load (bicubic), as their --finetune does. Your own 224 checkpoint instead: '
                 'add --pretrained-path FILE (train.py of timm 1.0.31).' if task == 'in1k-384' else
                 'The classifier is new: timm drops the checkpoint\'s head for num_classes other than 1000 (they '
                 'delete head.* in every case).'),
    ]
    if task == 'transfer':
        model_settings.append(_Setting(
            'num_classes', 196, "README command --data-set CARS (Stanford Cars: 196 classes)",
            'Set num_classes to your dataset\'s class count (or pass --num-classes N): without it train.py trains '
            'the 1000-class ImageNet head.', commented=True))
    else:
        model_settings.append(_Setting('num_classes', 1000, f'{script} --data-set IMNET: 1000 classes'))
    model_settings.append(_Setting('img_size', size, src('input_size')))
    if size != 224:
        model_settings.append(_Setting(
            'model_kwargs', {'img_size': size}, 'build the model at this size',
            'img_size alone sizes the data; train.py of some timm releases does not pass it to create_model, '
            'model_kwargs does (where it is passed, the two agree).'))
    model_settings += [
        _Setting('drop', run['drop'], f'{script} builds the models without it: GFNet\'s drop_rate 0'),
        drop_path_setting,
    ]

    data = [
        _Setting('batch_size', run['batch_size'],
                 src('batch_size', f'per process, x {run["world_size"]} (--nproc_per_node)')),
        _Setting('validation_batch_size', int(1.5 * run['batch_size']),
                 f'{script}: data_loader_val batch_size=int(1.5 * args.batch_size)'),
        _Setting('crop_pct', 0.875, 'datasets.py build_transform: Resize(int(256 / 224 * size)), CenterCrop(size)',
                 'Their evaluation crop, as this package\'s pretrained cfg has it.'),
        _Setting('interpolation', 'bicubic', 'datasets.py build_transform: Resize(..., interpolation=3)'),
        _Setting('mean', list(_IMAGENET_MEAN), 'datasets.py: Normalize(IMAGENET_DEFAULT_MEAN, ...)'),
        _Setting('std', list(_IMAGENET_STD), 'datasets.py: Normalize(..., IMAGENET_DEFAULT_STD)'),
        _Setting('workers', run['num_workers'], src('num_workers')),
        _Setting('pin_mem', run['pin_mem'], src('pin_mem')),
    ]

    optimizer = [
        _Setting('opt', run['opt'], src('opt')),
        _Setting('opt_eps', run['opt_eps'], src('opt_eps')),
        _Setting('opt_betas', run['opt_betas'], src('opt_betas', "AdamW's (0.9, 0.999)")),
        _Setting('weight_decay', run['weight_decay'], src('weight_decay', 'not on biases, norms, pos_embed')),
        _Setting('clip_grad', float(run['clip_grad']), src('clip_grad')),
        _Setting('clip_mode', 'norm', "engine.py: timm's NativeScaler(clip_grad=...) clips the global norm"),
    ]

    lr_world = f'{run["world_size"]} x {run["batch_size"]}'
    lr_run = authors_lr(run['lr'], run['batch_size'], run['world_size'])
    schedule = [
        _Setting('lr_base', run['lr'], src('lr', f'their lr for a batch of {base_size}'),
                 f'lr = lr_base * batch_size * processes * grad_accum_steps / lr_base_size: their linear rule '
                 f'(lr * batch_size * world_size / {base_size}) for any batch and number of processes, '
                 f'{_yaml_float(lr_run)} on their {lr_world}. Do not set lr: it overrides the rule.'),
        _Setting('lr_base_size', base_size, f'{script}: linear_scaled_lr = args.lr * ... / {base_size}.0'),
        _Setting('lr_base_scale', 'linear', f'{script}: scaled linearly',
                 'Left empty, train.py picks sqrt scaling for any optimizer named ada* or lamb (adamw too).'),
        _Setting('grad_accum_steps', 1, f'{script}: one update per batch'),
        _Setting('sched', run['sched'], src('sched')),
        _Setting('sched_on_updates', False, f'{script}: lr_scheduler.step(epoch) once per epoch'),
        _Setting('epochs', run['epochs'], src('epochs')),
        _Setting('warmup_epochs', run['warmup_epochs'], src('warmup_epochs')),
        _Setting('warmup_lr', run['warmup_lr'], src('warmup_lr')),
        _Setting('warmup_prefix', False, "their timm's cosine counts warm-up inside the epochs"),
        _Setting('min_lr', run['min_lr'], src('min_lr')),
        _Setting('cooldown_epochs', 0, f'{script}: for epoch in range(args.start_epoch, args.epochs)',
                 f'Not their --cooldown-epochs {run["cooldown_epochs"]}: their loop stops at --epochs, so those '
                 f'epochs never ran; train.py trains epochs + cooldown_epochs. Not expressible: they step the '
                 f'scheduler with the epoch just finished, so their epoch e (e >= 1) ran at the value train.py '
                 f'gives epoch e - 1 (their first two both at warmup_lr): the same curve, one epoch later.'),
    ]

    augment = [
        _Setting('aa', run['aa'], src('aa')),
        _Setting('color_jitter', run['color_jitter'], src('color_jitter', 'inactive with RandAugment in timm')),
        _Setting('train_interpolation', run['train_interpolation'], src('train_interpolation')),
        _Setting('reprob', float(run['reprob']), src('reprob', 'random erasing off')),
        _Setting('remode', run['remode'], src('remode')),
        _Setting('recount', run['recount'], src('recount')),
        _Setting('resplit', run['resplit'], src('resplit')),
        _Setting('aug_repeats', 3, src('repeated_aug', "DeiT's RASampler: 3 repeats")) if run['repeated_aug'] else
        _Setting('aug_repeats', 0, src('repeated_aug', 'no repeated augmentation')),
        _Setting('mixup', run['mixup'], src('mixup')),
        _Setting('cutmix', run['cutmix'], src('cutmix')),
        _Setting('mixup_prob', run['mixup_prob'], src('mixup_prob')),
        _Setting('mixup_switch_prob', run['mixup_switch_prob'], src('mixup_switch_prob')),
        _Setting('mixup_mode', run['mixup_mode'], src('mixup_mode')),
        _Setting('smoothing', run['smoothing'], src('smoothing', 'applied through mixup targets, as theirs')),
    ]

    rest = [
        _Setting('model_ema', run['model_ema'], src('model_ema')),
        _Setting('model_ema_decay', run['model_ema_decay'], src('model_ema_decay', 'used only with model_ema')),
        _Setting('amp', True, 'engine.py: torch.cuda.amp.autocast() with a loss scaler (timm NativeScaler)'),
        _Setting('amp_dtype', 'float16', 'engine.py: autocast\'s default float16'),
        _Setting('seed', run['seed'], src('seed', 'plus the rank in both scripts'),
                 'Same seeding formula, different random streams: runs are not bitwise alike.'),
    ]
    return [('Model', model_settings), ('Data and evaluation', data), ('Optimizer', optimizer),
            ('Learning rate schedule', schedule), ('Augmentation and regularization', augment),
            ('EMA, precision, seed', rest)]


def recipe_values(model: str, task: str) -> Dict[str, Any]:
    """The settings of a recipe as train.py reads them (what `yaml.safe_load` of the file gives)."""
    return {s.key: s.value for _, settings in _sections(model, task) for s in settings if not s.commented}


def _yaml_float(v: float) -> str:
    s = repr(float(v))
    if 'e' in s and '.' not in s.split('e')[0]:  # YAML 1.1 (PyYAML) reads 1e-06 as a string, 1.0e-06 as a float
        mantissa, exponent = s.split('e')
        s = f'{mantissa}.0e{exponent}'
    return s


_YAML_WORDS = {'y', 'n', 'yes', 'no', 'on', 'off', 'true', 'false', 'null', 'none'}


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return 'null'
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _yaml_float(v)
    if isinstance(v, str):
        if re.fullmatch(r'[A-Za-z][A-Za-z0-9_.\-]*', v) and v.lower() not in _YAML_WORDS:
            return v
        return json.dumps(v)  # a double-quoted JSON string is a YAML string
    if isinstance(v, (list, tuple)):
        return '[' + ', '.join(_yaml_scalar(x) for x in v) + ']'
    if isinstance(v, dict):
        return '{' + ', '.join(f'{k}: {_yaml_scalar(x)}' for k, x in v.items()) + '}'
    raise TypeError(f'cannot write {v!r} to a recipe')


def _comment(text: str, width: int = 116) -> List[str]:
    return [f"# {line}" for line in textwrap.wrap(text, width - 2, break_on_hyphens=False)] if text else []


def recipe_path(out_dir: Union[str, Path], model: str, task: str) -> Path:
    """`<out_dir>/<model>.<task>.yaml`."""
    return Path(out_dir) / f'{model}.{task}.yaml'


def generate_recipe(model: str, task: str = 'in1k') -> str:
    """The YAML config of `task` for `model`, for timm's `train.py --config`: every value with its source."""
    run = authors_run(model, task)
    sections = _sections(model, task)
    lr_1 = authors_lr(run['lr'], run['batch_size'], 1)
    lr_n = authors_lr(run['lr'], run['batch_size'], run['world_size'])
    n, b = run['world_size'], run['batch_size']
    path = recipe_path('recipes', model, task).as_posix()
    data_dir = '/path/to/imagenet' if task != 'transfer' else '/path/to/dataset'
    extra = ' --num-classes N' if task == 'transfer' else ''
    lines = _comment(
        f'{model} ({run["arch"]}): {_TITLES[task].format(size=run["input_size"])}, the authors\' recipe for '
        f'timm\'s train.py. Generated by `timm-gfnet recipe {model} --task {task}`: regenerate, do not edit.')
    lines += ['#'] + _comment(
        f'Source: {AUTHORS_REPO} {run["script"]} (argparse defaults, model builders, training loop), engine.py, '
        f'datasets.py, and their README command (shown for gfnet-xs; every variant with its own --arch):')
    lines += [f'#   {run["command"].replace("  ", " ")}', '#', '# Run (their 8 processes, then one GPU):',
              f'#   torchrun --nproc_per_node={n} train.py --config {path} --data-dir {data_dir}{extra}',
              f'#   python train.py --config {path} --data-dir {data_dir}{extra}']
    lines += _comment(
        f'The learning rate follows their linear rule for any batch and number of processes: '
        f'{_yaml_float(lr_n)} on {n} x {b}, {_yaml_float(lr_1)} on 1 x {b}. One GPU trains with a smaller global '
        f'batch than theirs: --grad-accum-steps {n} restores {n * b} images per update (and the learning rate).')
    if task == 'transfer':
        lines += ['#'] + _comment(
            'Fill in: --data-dir (an ImageFolder root with train/ and val/ folders, or --dataset NAME) and '
            'num_classes (your dataset\'s class count; Stanford Cars, their example, has 196). Their Cars split '
            'is train and test: with a test/ folder add --val-split test.')
    for title, settings in sections:
        lines += ['', f'# {title}']
        width = max(len(f'{s.key}: {_yaml_scalar(s.value)}') + (2 if s.commented else 0) for s in settings)
        for s in settings:
            lines += _comment(s.note)
            entry = f'{"# " if s.commented else ""}{s.key}: {_yaml_scalar(s.value)}'
            lines.append(f'{entry.ljust(width)}  # {s.source}')
    return '\n'.join(lines) + '\n'


def _all() -> List[Tuple[str, str]]:
    return [(m, t) for m in recipe_models() for t in TASKS]


def write_recipes(out_dir: Union[str, Path] = 'recipes') -> List[Path]:
    """Write every recipe (7 models x 3 tasks) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model, task in _all():
        path = recipe_path(out_dir, model, task)
        write_text(path, generate_recipe(model, task))
        written.append(path)
    return written


def check_recipes(out_dir: Union[str, Path] = 'recipes') -> List[str]:
    """Problems of the recipes in `out_dir` against the generator: 'NAME (missing)', '(out of date)', and
    '(no such recipe)' for stale files. Empty when everything is current."""
    out_dir = Path(out_dir)
    problems = []
    names = set()
    for model, task in _all():
        path = recipe_path(out_dir, model, task)
        names.add(path.name)
        if not path.is_file():
            problems.append(f'{path.name} (missing)')
        elif path.read_text(encoding='utf-8') != generate_recipe(model, task):
            problems.append(f'{path.name} (out of date)')
    if out_dir.is_dir():
        problems += [f'{p.name} (no such recipe)' for p in sorted(out_dir.glob('*.yaml')) if p.name not in names]
    return problems

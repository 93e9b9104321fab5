"""timm_gfnet.recipes (`timm-gfnet recipe`): every value against the authors' settings (tests/data/training.json, a
copy of the reference data, parsed here independently of the generator), the learning rate timm's train.py computes
from them, the keys against train.py's options, the schedule, data and optimizer timm's own factories build from them,
and the committed files against the generator."""
import argparse
import json
import math
import re
import shlex
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from timm.models import resolve_model_input_args
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from timm_gfnet.cli import main
from timm_gfnet.recipes import TASKS, check_recipes, generate_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / 'recipes'
TRAINING = json.loads((ROOT / 'tests' / 'data' / 'training.json').read_text())
CASES = [(m, t) for m in timm.list_models('gfnet*') for t in TASKS]


def recipe_values(model: str, task: str) -> dict:
    """A recipe as timm's train.py reads it (`--config`: yaml.safe_load)."""
    return yaml.safe_load(generate_recipe(model, task))


def _train_py_dests() -> set:
    """Argparse destinations of timm's train.py (tests/data/train_py_options.txt: the list, and where it was read)."""
    lines = (ROOT / 'tests' / 'data' / 'train_py_options.txt').read_text().splitlines()
    return {line.strip().lstrip('-').replace('-', '_') for line in lines if line.strip() and not line.startswith('#')}


def train_py_lr(cfg: dict, world_size: int) -> float:
    """The learning rate of timm's train.py, main() (huggingface/pytorch-image-models train.py at commit 2aabaef0,
    timm 0.9): `if not args.lr:` global batch = batch_size * world_size * grad_accum_steps, ratio = global batch /
    lr_base_size, square-rooted when lr_base_scale is 'sqrt' or, left empty, for an optimizer named ada* or lamb;
    lr = lr_base * ratio. Defaults are train.py's (lr None, lr_base 0.1, lr_base_size 256, lr_base_scale '')."""
    if cfg.get('lr'):
        return cfg['lr']
    ratio = cfg.get('batch_size', 128) * world_size * cfg.get('grad_accum_steps', 1) / cfg.get('lr_base_size', 256)
    scale = cfg.get('lr_base_scale', '') or (
        'sqrt' if any(o in cfg.get('opt', 'sgd').lower() for o in ('ada', 'lamb')) else 'linear')
    return cfg.get('lr_base', 0.1) * (ratio ** 0.5 if scale == 'sqrt' else ratio)


def authors(model: str, task: str) -> dict:
    """The authors' run, from training.json alone: their script's argparse defaults updated by their README command
    for the task (main_gfnet.py without / with --finetune, main_gfnet_transfer.py), values cast to the defaults'
    types as their argparse does; `nproc` is the launcher's --nproc_per_node."""
    for command in TRAINING['readme_commands']:
        tokens = shlex.split(command)
        script = next(t for t in tokens if t.endswith('.py'))
        args = tokens[tokens.index(script) + 1:]
        options = {args[i][2:].replace('-', '_'): args[i + 1] for i in range(0, len(args), 2)}
        kind = 'transfer' if 'transfer' in script else 'in1k-384' if 'finetune' in options else 'in1k'
        if kind != task:
            continue
        run = dict(TRAINING['transfer_defaults' if task == 'transfer' else 'imagenet_defaults'])
        for key, value in options.items():
            default = run.get(key)
            run[key] = type(default)(value) if isinstance(default, (int, float)) else value
        nproc = next(t for t in tokens if t.startswith('--nproc_per_node='))
        return dict(run, script=script, nproc=int(nproc.split('=')[1]), arch=model.replace('_', '-'))
    raise AssertionError(task)


def expected_recipe(model: str, task: str) -> dict:
    """Every value a recipe must hold: the authors' (training.json) or, where their scripts decide it in code, the
    value that code gives (source beside it)."""
    a = authors(model, task)
    finetune = 'finetune' in a
    lr_base_size = int(TRAINING['lr_scaling'].split('/')[-1].split()[0])
    exp = dict(
        model=model, pretrained=finetune, img_size=a['input_size'],
        # main_gfnet*.py build each arch with its own drop_path_rate (not --drop-path); train_one_epoch runs the model
        # in eval mode when fine-tuning (set_training_mode=args.finetune == ''), where stochastic depth is off
        drop=a['drop'], drop_path=0.0 if finetune else TRAINING['imagenet_drop_path_rate_by_arch'][a['arch']],
        batch_size=a['batch_size'], validation_batch_size=int(1.5 * a['batch_size']),  # their data_loader_val
        crop_pct=224 / 256, interpolation='bicubic',  # datasets.py: Resize(int(256 / 224 * size), interpolation=3)
        mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD),  # datasets.py Normalize
        workers=a['num_workers'], pin_mem=a['pin_mem'],
        opt=a['opt'], opt_eps=a['opt_eps'], opt_betas=a['opt_betas'], weight_decay=a['weight_decay'],
        clip_grad=float(a['clip_grad']), clip_mode='norm',  # timm NativeScaler(clip_grad=...): clip_grad_norm_
        lr_base=a['lr'], lr_base_size=lr_base_size, lr_base_scale='linear', grad_accum_steps=1,
        sched=a['sched'], sched_on_updates=False,  # lr_scheduler.step(epoch) once per epoch
        epochs=a['epochs'], warmup_epochs=a['warmup_epochs'], warmup_lr=a['warmup_lr'], warmup_prefix=False,
        min_lr=a['min_lr'], cooldown_epochs=0,  # their loop: for epoch in range(args.start_epoch, args.epochs)
        aa=a['aa'], color_jitter=a['color_jitter'], train_interpolation=a['train_interpolation'],
        reprob=float(a['reprob']), remode=a['remode'], recount=a['recount'], resplit=a['resplit'],
        aug_repeats=3 if a['repeated_aug'] else 0,  # DeiT's RASampler
        mixup=a['mixup'], cutmix=a['cutmix'], mixup_prob=a['mixup_prob'], mixup_switch_prob=a['mixup_switch_prob'],
        mixup_mode=a['mixup_mode'], smoothing=a['smoothing'],
        model_ema=a['model_ema'], model_ema_decay=a['model_ema_decay'],
        amp=True, amp_dtype='float16',  # engine.py: torch.cuda.amp.autocast() and timm's NativeScaler
        seed=a['seed'],
    )
    if task != 'transfer':
        exp['num_classes'] = 1000  # IMNET
    if a['input_size'] != 224:
        exp['model_kwargs'] = {'img_size': a['input_size']}
    return exp


def _namespace(cfg: dict, world_size: int) -> argparse.Namespace:
    """args as train.py holds them when it builds optimizer and scheduler: the recipe over train.py's defaults,
    with lr resolved."""
    return argparse.Namespace(**dict(dict(momentum=0.9, lr=None), **cfg, lr=train_py_lr(cfg, world_size)))


def test_packaged_copy_is_the_reference_data():
    assert json.loads((ROOT / 'timm_gfnet' / 'data' / 'training.json').read_text()) == TRAINING
    archs = TRAINING['imagenet_drop_path_rate_by_arch']
    assert sorted(a.replace('-', '_') for a in archs) == timm.list_models('gfnet*')  # the seven, as timm names them


@pytest.mark.parametrize('model,task', CASES)
def test_every_value_is_the_authors(model, task):
    values = recipe_values(model, task)
    expected = expected_recipe(model, task)
    assert values == expected
    assert {k: type(v) for k, v in values.items()} == {k: type(v) for k, v in expected.items()}


@pytest.mark.parametrize('task', TASKS)
def test_the_three_runs_are_the_authors_command_lines(task):
    """Spot values, each read off their README command (so a wrong command mapping cannot pass unseen)."""
    cfg = recipe_values('gfnet_xs', task)
    want = {'in1k': (128, 300, 5e-4, 0.05, 1e-5, 224), 'in1k-384': (64, 30, 5e-6, 1e-8, 5e-6, 384),
            'transfer': (64, 1000, 1e-4, 1e-4, 1e-5, 224)}[task]
    assert (cfg['batch_size'], cfg['epochs'], cfg['lr_base'], cfg['weight_decay'], cfg['min_lr'],
            cfg['img_size']) == want
    assert cfg['warmup_epochs'] == 5 and cfg['clip_grad'] == 1.0 and cfg['pretrained'] == (task != 'in1k')


@pytest.mark.parametrize('model,task', CASES)
def test_keys_are_train_py_options(model, task):
    text = generate_recipe(model, task)
    assert set(yaml.safe_load(text)) <= _train_py_dests()
    commented = re.findall(r'^# ([a-z][a-z_]*): \S.*  # ', text, flags=re.M)
    assert set(commented) <= _train_py_dests()  # what the user is asked to fill in is an option too
    assert 'lr' not in yaml.safe_load(text)  # a set lr would override the lr_base rule
    settings = [line for line in text.splitlines() if line and not line.startswith('#')]
    assert len(settings) == len(yaml.safe_load(text))  # a line per value, each with its source beside it
    assert all(re.fullmatch(r'[a-z_]+: \S.*  # \S.*', line) for line in settings), settings


def test_option_list_holds_the_names_with_subtleties():
    dests = _train_py_dests()
    assert {'data', 'data_dir', 'img_size', 'input_size', 'model_ema', 'clip_grad', 'clip_mode', 'mixup_off_epoch',
            'grad_accum_steps', 'drop_path', 'opt_eps', 'warmup_prefix', 'sched_on_updates', 'lr_base_size',
            'lr_base_scale', 'model_kwargs', 'local_rank', 'workers'} <= dests
    assert not {'data_path', 'num_workers', 'repeated_aug', 'input_size_', 'drop_path_rate', 'clip_grad_norm'} & dests


@pytest.mark.parametrize('model,task', CASES)
@pytest.mark.parametrize('world_size', [1, 8])
@pytest.mark.parametrize('batch_size', [None, 32, 256])
def test_train_py_learning_rate_is_the_authors_rule(model, task, world_size, batch_size):
    cfg = recipe_values(model, task)
    if batch_size is not None:
        cfg['batch_size'] = batch_size
    a = authors(model, task)
    authors_lr = a['lr'] * cfg['batch_size'] * world_size / 512  # main_gfnet*.py: linear_scaled_lr
    assert train_py_lr(cfg, world_size) == pytest.approx(authors_lr, rel=1e-12)
    # the trap the recipe avoids: AdamW with only lr_base set scales by sqrt(global batch / 256), which agrees with
    # the authors' rule at a global batch of 1024 only
    naive = {k: v for k, v in cfg.items() if k not in ('lr_base_size', 'lr_base_scale')}
    global_batch = cfg['batch_size'] * world_size
    assert train_py_lr(naive, world_size) == pytest.approx(a['lr'] * (global_batch / 256) ** 0.5, rel=1e-12)
    assert (train_py_lr(naive, world_size) == pytest.approx(authors_lr, rel=1e-3)) == (global_batch == 1024)


def test_authors_run_learning_rates():
    assert train_py_lr(recipe_values('gfnet_b', 'in1k'), 8) == pytest.approx(1e-3)  # 5e-4 * 8 * 128 / 512
    assert train_py_lr(recipe_values('gfnet_b', 'in1k'), 1) == pytest.approx(1.25e-4)
    assert train_py_lr(recipe_values('gfnet_b', 'in1k-384'), 8) == pytest.approx(5e-6)
    assert train_py_lr(recipe_values('gfnet_b', 'transfer'), 8) == pytest.approx(1e-4)


def _authors_cosine(t: int, a: dict, lr: float) -> float:
    """lr at schedule step t of the cosine their create_scheduler builds (timm's CosineLRScheduler, stepped per epoch,
    t_initial = --epochs, warm-up not a prefix, one cycle)."""
    if t < a['warmup_epochs']:
        return a['warmup_lr'] + t * (lr - a['warmup_lr']) / a['warmup_epochs']
    return a['min_lr'] + 0.5 * (lr - a['min_lr']) * (1 + math.cos(math.pi * t / a['epochs']))


@pytest.mark.parametrize('task', TASKS)
def test_schedule_train_py_builds_is_the_authors(task):
    """train.py's scheduler from the recipe (timm's own factory): as many epochs as the authors ran (their loop
    stops at --epochs: their 10 cool-down epochs never ran), on their cosine; their loop steps the scheduler with the
    epoch just finished, so their epoch e ran at train.py's value for e - 1 (documented in the recipe)."""
    cfg = recipe_values('gfnet_s', task)
    a = authors('gfnet_s', task)
    args = _namespace(cfg, a['nproc'])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=100)
    assert num_epochs == a['epochs']
    naive, naive_epochs = create_scheduler_v2(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr),
        **scheduler_kwargs(argparse.Namespace(**dict(vars(args), cooldown_epochs=a['cooldown_epochs']))))
    assert naive_epochs == a['epochs'] + a['cooldown_epochs'] != num_epochs
    lrs = []
    for epoch in range(num_epochs):  # train.py: train, validate, lr_scheduler.step(epoch + 1, metric)
        lrs.append(optimizer.param_groups[0]['lr'])
        scheduler.step(epoch + 1)
    lr = a['lr'] * a['batch_size'] * a['nproc'] / 512
    assert lrs == pytest.approx([_authors_cosine(t, a, lr) for t in range(a['epochs'])], rel=1e-9)
    theirs = [_authors_cosine(max(e - 1, 0), a, lr) for e in range(a['epochs'])]  # their epoch e ran at step e - 1
    assert theirs[1:] == pytest.approx(lrs[:-1], rel=1e-9) and theirs[1] == a['warmup_lr']


@pytest.mark.parametrize('model,task', [('gfnet_ti', 'in1k'), ('gfnet_h_ti', 'in1k-384'), ('gfnet_xs', 'transfer')])
def test_model_and_data_train_py_builds(model, task):
    """timm's factories on the recipe: the model at the recipe's size (resolve_model_input_args, the input request
    train.py makes, with model_kwargs), the authors' eval transform (Resize(int(256 / 224 * size)), CenterCrop)."""
    cfg = recipe_values(model, task)
    kwargs = resolve_model_input_args(cfg['model'], cfg, **cfg.get('model_kwargs', {}))
    net = timm.create_model(**kwargs, drop_path_rate=cfg['drop_path'], num_classes=cfg.get('num_classes'))
    size = cfg['img_size']
    assert tuple(net.patch_embed.img_size) == (size, size)
    data = resolve_data_config(cfg, model=net)
    assert data['input_size'] == (3, size, size) and data['crop_pct'] == 0.875
    assert data['interpolation'] == 'bicubic'
    transform = create_transform(**data, is_training=False)
    resize, crop = transform.transforms[:2]
    assert resize.size == int(256 / 224 * size) and tuple(crop.size) == (size, size)


def test_optimizer_train_py_builds():
    """AdamW with their eps and betas, weight decay 0.05 on weights only (not biases, norms or pos_embed)."""
    cfg = recipe_values('gfnet_ti', 'in1k')
    model = timm.create_model('gfnet_ti')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(_namespace(cfg, 8)))
    assert type(optimizer) is torch.optim.AdamW
    decay, no_decay = sorted(optimizer.param_groups, key=lambda g: -g['weight_decay'])
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0
    assert decay['eps'] == 1e-8 and decay['betas'] == (0.9, 0.999) and decay['lr'] == pytest.approx(1e-3)
    assert all(p.ndim > 1 for p in decay['params']) and any(p.ndim == 1 for p in no_decay['params'])
    assert model.pos_embed.ndim == 3 and any(p is model.pos_embed for p in no_decay['params'])


def test_transfer_leaves_dataset_and_classes_to_the_user():
    text = generate_recipe('gfnet_xs', 'transfer')
    assert '# num_classes: 196' in text and 'num_classes' not in yaml.safe_load(text)
    assert '--num-classes N' in text and 'data_dir' not in yaml.safe_load(text)


def test_committed_recipes_are_what_the_generator_writes():
    assert sorted(p.name for p in RECIPES.iterdir()) == sorted(f'{m}.{t}.yaml' for m, t in CASES)
    assert check_recipes(RECIPES) == []


def test_check_reports_missing_stale_and_edited(tmp_path, capsys):
    assert main(['recipe', '--all', '--out', str(tmp_path)]) == 0
    assert main(['recipe', '--check', '--out', str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith(f'recipes in {tmp_path} are up to date\n')
    (tmp_path / 'gfnet_s.in1k.yaml').write_text(generate_recipe('gfnet_s', 'in1k').replace('0.15', '0.1'))
    (tmp_path / 'gfnet_b.transfer.yaml').unlink()
    (tmp_path / 'gfnet_old.in1k.yaml').write_text('model: gfnet_old\n')
    assert check_recipes(tmp_path) == [
        'gfnet_b.transfer.yaml (missing)', 'gfnet_s.in1k.yaml (out of date)', 'gfnet_old.in1k.yaml (no such recipe)']
    assert main(['recipe', '--check', '--out', str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f'timm-gfnet recipe: error: recipes in {tmp_path} differ from the generator: gfnet_b.transfer.yaml (missing), '
        f'gfnet_s.in1k.yaml (out of date), gfnet_old.in1k.yaml (no such recipe); regenerate them with '
        f'`timm-gfnet recipe --all --out {tmp_path}`.\n')


def test_cli(tmp_path, capsys):
    assert main(['recipe', 'gfnet_h_s', '--task', 'in1k-384']) == 0
    assert capsys.readouterr().out == generate_recipe('gfnet_h_s', 'in1k-384')
    out = tmp_path / 'r.yaml'
    assert main(['recipe', 'gfnet_h_s', '--out', str(out)]) == 0
    assert out.read_text() == generate_recipe('gfnet_h_s', 'in1k')
    assert main(['recipe', '--check', '--out', str(RECIPES)]) == 0
    capsys.readouterr()
    assert main(['recipe', 'gfnet_m']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Unknown model' in err and 'gfnet_xs' in err
    assert main(['recipe']) == 1 and 'pass MODEL' in capsys.readouterr().err


def test_fine_tuning_in_eval_mode_is_train_mode_without_drop_path():
    """Why the fine-tuning recipes set drop_path 0: the authors fine-tune in eval mode, which in GFNet (no batch norm,
    dropout 0) differs from train mode only by stochastic depth."""
    torch.manual_seed(0)
    theirs = timm.create_model('gfnet_h_ti', drop_path_rate=TRAINING['imagenet_drop_path_rate_by_arch']['gfnet-h-ti'])
    ours = timm.create_model('gfnet_h_ti', drop_path_rate=recipe_values('gfnet_h_ti', 'transfer')['drop_path'])
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(theirs.eval()(x), ours.train()(x))
        assert not torch.equal(theirs.train()(x), ours(x))  # their rate, in train mode, would drop paths

"""`timm-gfnet` command line. Each subcommand's work lives in the module of its concern; this file only parses."""
import argparse
import sys
from typing import Any, Callable, List, Optional

__all__ = ['main']


def _number(kind: type, low: float, what: str, step: int = 1) -> Callable[[str], Any]:
    """An argparse type: a `kind` >= `low` (and a multiple of `step`). Text that is no number gets argparse's own
    error ("invalid int value: 'five'"), a number out of range one naming it; both before any work starts."""
    def parse(text: str):
        value = kind(text)
        if not value >= low or value % step:
            raise argparse.ArgumentTypeError(f'{text} is not {what}')
        return value
    parse.__name__ = kind.__name__  # the name argparse puts in "invalid int value"
    return parse


_POSITIVE = _number(int, 1, 'a positive number')
_WHOLE = _number(int, 0, 'a whole number >= 0')
_SIDE = _number(int, 32, 'a positive multiple of 32 (the largest stride of the models)', step=32)
_FLOAT = _number(float, 0, 'a number >= 0')


def _size_of(model) -> str:
    return 'x'.join(map(str, model.patch_embed.img_size))


def _models(args: argparse.Namespace) -> None:
    import timm

    from .flops import profile_model

    rows = [('model', 'params (M)', 'GMACs', 'feature channels', 'strides', 'pretrained')]
    for name in timm.list_models('gfnet*'):
        model = timm.create_model(name)
        cost = profile_model(model)
        info = model.feature_info
        stages = info if 'stages' in info[0]['module'] else info[-1:]  # isotropic: every block is alike
        rows.append((
            name,
            f"{cost['params_m']:.2f}",
            f"{cost['gmacs']:.2f}",
            ','.join(str(f['num_chs']) for f in stages),
            ','.join(str(f['reduction']) for f in stages),
            ' '.join(t.split('.', 1)[1] for t in timm.list_pretrained(name)),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print('  '.join('-' * w for w in widths))


def _convert(args: argparse.Namespace) -> None:
    from .convert import convert_checkpoint

    result = convert_checkpoint(args.checkpoint, args.out, model_name=args.model)
    how = 'recognised from its shapes' if args.model is None else 'as given'
    h, w = result['img_size']
    print(f"{args.checkpoint}: {result['model']} ({how}), {result['params'] / 1e6:.2f}M parameters, "
          f"{result['num_classes']}-class head, {h}x{w} images of {result['in_chans']} channels (its own)")
    print(f"  checked before writing: timm.create_model('local-dir:...') reproduces the source's outputs "
          f"(max abs diff {result['max_abs_diff']:.1e})")
    for f in result['files']:
        print(f'  wrote {f}')


def _predict(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .predict import predict

    # a checkpoint (its variant named by --model or recognised), else the pretrained weights of --model
    model = load_model(args.checkpoint or args.model or 'gfnet_s', model_name=args.model if args.checkpoint else None)
    for image, top in zip(args.images, predict(model.eval(), args.images, args.topk, args.batch_size)):
        print(image)
        for label, prob in top:
            print(f'  {prob:7.2%}  {label}')
        sys.stdout.flush()  # each result as its batch is done, into a pipe too


def _push(args: argparse.Namespace) -> None:
    from .hub import push_to_hub

    info = push_to_hub(args.source, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                       create=not args.no_create, card=args.card)
    print(f'pushed {args.source} to {info.repo_url.repo_id}: {info.commit_url}')
    at = f'@{args.revision}' if args.revision else ''  # timm's hf-hub:ORG/REPO@REVISION; without it, main
    print(f"load it with timm.create_model('hf-hub:{info.repo_url.repo_id}{at}', pretrained=True)")


def _up_to_date(problems: List[str], error: type, what: str, regenerate: str) -> None:
    """The drift check of generated files (`cards --check`, `recipe --check`): a line when current, else the error."""
    if problems:
        raise error(f'{what} differ from the generator: {", ".join(problems)}; regenerate them with `{regenerate}`.')
    print(f'{what} are up to date')


def _cards(args: argparse.Namespace) -> None:
    from .cards import CardDriftError, check_cards, write_cards

    if args.check:
        _up_to_date(check_cards(args.out, args.names), CardDriftError, f'model cards in {args.out}',
                    f'timm-gfnet cards --out {args.out}')
        return
    for path in write_cards(args.out, args.names):
        print(f'wrote {path}')


def _recipe(args: argparse.Namespace) -> None:
    from .recipes import RecipeDriftError, check_recipes, generate_recipe, write_recipes

    if args.all or args.check:
        if args.model is not None:
            raise ValueError(f'pass either MODEL ({args.model}) or --all / --check, not both.')
        out = args.out or 'recipes'
        if args.check:
            _up_to_date(check_recipes(out), RecipeDriftError, f'recipes in {out}',
                        f'timm-gfnet recipe --all --out {out}')
            return
        for path in write_recipes(out):
            print(f'wrote {path}')
        return
    if args.model is None:
        raise ValueError('pass MODEL (e.g. gfnet_xs), or --all to write every recipe.')
    text = generate_recipe(args.model, args.task)
    if args.out is None:
        sys.stdout.write(text)
        return
    from .atomic import write_text

    print(f'wrote {write_text(args.out, text)}')


def _export_onnx(args: argparse.Namespace) -> None:
    from .atomic import atomic_path
    from .onnx_export import check_onnx, check_openvino, export_onnx

    model = _model_from_args(args, img_size=args.img_size)
    c, h, w = model.in_chans, *model.patch_embed.img_size
    with atomic_path(args.out) as tmp:  # checked before it replaces anything at --out
        export_onnx(model, tmp, opset=args.opset)
        size = tmp.stat().st_size
        if not args.no_check:
            info = check_onnx(model, tmp)
            _within(args.tolerance, info['max_abs_diff'], 'onnxruntime')
            print(f"onnxruntime matches PyTorch: max abs diff {info['max_abs_diff']:.1e} at batch sizes "
                  f"{', '.join(map(str, info['batch_sizes']))}; ops: {' '.join(info['ops'])}")
            ov = check_openvino(model, tmp)
            if ov is None:
                print("OpenVINO not checked (not installed: pip install 'timm-gfnet[openvino]')")
            else:
                _within(args.tolerance, ov['f32_max_abs_diff'], 'OpenVINO (f32)')
                default = ov['default_precision']
                moves = '' if default == 'f32' else (
                    f": logits move by {ov['default_max_abs_diff']:.1e} there, compile with "
                    f"{{'INFERENCE_PRECISION_HINT': 'f32'}} to keep float32")
                print(f"OpenVINO matches PyTorch in f32: max abs diff {ov['f32_max_abs_diff']:.1e}; its default "
                      f'precision on this CPU is {default}{moves}')
    print(f'wrote {args.out} ({size / 2 ** 20:.1f} MiB): input "input" (batch, {c}, {h}, {w}) float32, '
          f'dynamic batch; output "output"')


def _within(tolerance: float, diff: float, runtime: str) -> None:
    if diff > tolerance:
        raise RuntimeError(f'{runtime} differs from PyTorch by {diff:.1e} (tolerance {tolerance:.0e}), so nothing was '
                           f'written: please report this with the model name and {runtime.split()[0]} version.')


def _bench(args: argparse.Namespace) -> None:
    import json
    from dataclasses import asdict

    from .bench import FULL, QUICK, SUITES, format_report, plot_bench, run_bench

    preset = QUICK if args.quick else FULL
    suites = args.suite or ['resolution']
    suites = list(SUITES) if 'all' in suites else list(dict.fromkeys(suites))
    result = run_bench(
        suites=suites, model_name=args.model, baselines=args.baselines, sizes=args.sizes or preset['sizes'],
        batch_size=args.batch_size or preset['batch_size'], repeats=args.repeats or preset['repeats'],  # None: unset
        train_max_size=preset['train_max_size'] if args.train_max_size is None else args.train_max_size,
        variants=args.variants, variant_sizes=args.variant_sizes, runtime_batch=args.batch_size or preset['batch_size'],
        runtimes=args.runtimes, device=args.device, sample_s=preset['sample_s'], max_call_s=args.max_call_seconds,
        progress=not args.no_progress, backends=args.backends)
    if sys.argv and sys.argv[0].endswith(('timm-gfnet', 'cli.py')):  # the command that made these numbers
        print('command: timm-gfnet ' + ' '.join(sys.argv[1:]))
    print(format_report(result))
    if args.plot:
        try:
            print(f'plot: {plot_bench(result, args.plot)}')
        except ImportError as e:
            print(f'no plot: {e}')
    if args.json:
        from .atomic import write_text
        write_text(args.json, json.dumps(dict(result, rows=[asdict(r) for r in result['rows']]), indent=1))
        print(f'results: {args.json}')


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `timm-gfnet bench` (run_bench's arguments)."""
    p.add_argument('--quick', action='store_true', help='small sizes and few repeats: about a minute on 2 CPU cores')
    p.add_argument('--suite', nargs='+', choices=('resolution', 'backends', 'runtimes', 'deit', 'all'),
                   help='what to measure (default: resolution)')
    p.add_argument('--model', default='gfnet_s', help='GFNet variant (default: gfnet_s)')
    p.add_argument('--backends', nargs='*', default=[], choices=('matmul',),
                   help='resolution suite: filter backends to time besides ours (auto) and the reference (fft)')
    runtimes = ('eager', 'compile', 'onnxruntime', 'openvino')
    p.add_argument('--runtimes', nargs='+', default=list(runtimes), choices=runtimes,
                   help='runtimes suite: the paths to run (default: all)')
    p.add_argument('--baselines', nargs='*', default=['deit_small_patch16_224'],
                   help='resolution and deit suites: timm models to compare with (default: deit_small_patch16_224)')
    p.add_argument('--sizes', nargs='+', type=_SIDE, help='input sizes, multiples of 32 (default: 224 ... 2048)')
    p.add_argument('--batch-size', type=_POSITIVE,
                   help='batch at 224, scaled down with the pixel count at larger sizes (default: 8, quick: 4)')
    p.add_argument('--repeats', type=_POSITIVE, help='interleaved repeats per measurement (default: 5)')
    p.add_argument('--train-max-size', type=_WHOLE, help='largest size with a training step, 0 for none (default: 512)')
    p.add_argument('--variants', nargs='+', help='backends suite: variants (default: all)')
    p.add_argument('--variant-sizes', nargs='+', type=_SIDE, default=[224, 512, 1024], help='backends suite: sizes')
    p.add_argument('--device', default='cpu', help='cpu or cuda (default: cpu)')
    p.add_argument('--max-call-seconds', type=_FLOAT, default=120.,
                   help='a model slower than this per call is timed once (default: 120)')
    p.add_argument('--plot', default='gfnet_bench.png',
                   help='PNG of every suite that ran (default: gfnet_bench.png)')
    p.add_argument('--json', help='also write the measurements to this JSON file')
    p.add_argument('--no-progress', action='store_true', help='no progress lines on stderr')


def _viz(args: argparse.Namespace) -> None:
    from .viz import plot_filters

    model = _model_from_args(args)
    what = f'{args.channels} channels' if args.channels else 'mean over channels'
    print(f'wrote {plot_filters(model, args.out, channels=args.channels, log=args.log)}: |filter| per layer ({what})')


def _model_from_args(args: argparse.Namespace, img_size: Optional[int] = None):
    """The model of --model / --checkpoint / --pretrained, in eval mode, through the one loader: weights at their
    own size, resampled to `img_size` only when it is given (and then said in one line)."""
    import timm

    from .checkpoint import load_model

    if args.checkpoint is None and args.model is None:
        raise ValueError('pass --model NAME or --checkpoint PATH.')
    if args.checkpoint is not None and args.pretrained:
        raise ValueError(f'pass either --checkpoint ({args.checkpoint}) or --pretrained, not both.')
    if args.model is not None and args.model not in timm.list_models('gfnet*'):
        raise ValueError(f'Unknown model {args.model!r}: pick one of {", ".join(timm.list_models("gfnet*"))}.')
    if args.checkpoint is not None:
        model = load_model(args.checkpoint, model_name=args.model)
    elif args.pretrained:
        model = load_model(args.model)
    else:  # random weights: built at the size asked for, nothing to resample
        return timm.create_model(args.model, **({'img_size': img_size} if img_size else {})).eval()
    if img_size and tuple(model.patch_embed.img_size) != (img_size, img_size):
        own = _size_of(model)
        model.set_input_size(img_size)
        print(f'resampled pos_embed and the filters from the weights\' own {own} to {_size_of(model)} (--img-size)')
    return model.eval()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-gfnet', description='GFNet models for timm.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name: str, func: Callable, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=list(parents))
        p.set_defaults(func=func)
        return p

    # the arguments several commands share, declared once
    weights = argparse.ArgumentParser(add_help=False)
    weights.add_argument('--model', help='model name, e.g. gfnet_s; with --checkpoint the variant it holds '
                                         '(default: recognised from it)')
    weights.add_argument('--checkpoint', help="weights: an authors' .pth, ours, a converted folder, or hf-hub:ORG/REPO")
    written = argparse.ArgumentParser(add_help=False, parents=[weights])
    written.add_argument('--pretrained', action='store_true', help="the model's pretrained weights (default: random)")
    written.add_argument('--out', required=True, help='file to write')

    command('models', _models, 'table of the GFNet zoo (params, GMACs at 224, features, pretrained tags)')

    p = command('convert', _convert, "convert a checkpoint (authors' or ours) to model.safetensors + config.json")
    p.add_argument('checkpoint', help="checkpoint file: the authors' .pth release format, or a state_dict")
    p.add_argument('--model', help='variant name (default: recognised from the tensor shapes)')
    p.add_argument('--out', required=True, help='output directory')

    p = command('predict', _predict, "top-k classes for images, by the model's own labels (default: gfnet_s "
                                     'pretrained)', weights)
    p.add_argument('images', nargs='+', help='image files')
    p.add_argument('--topk', type=_POSITIVE, default=5, help='how many classes to show (default: 5)')
    p.add_argument('--batch-size', type=_POSITIVE, default=16,
                   help='images per forward pass; results print as each batch is done (default: 16)')

    p = command('push', _push, 'upload weights, config.json and model card to a Hugging Face Hub repository')
    p.add_argument('source', help='folder from `timm-gfnet convert` (config.json + weights), or a checkpoint file')
    p.add_argument('repo_id', help='Hub repository, e.g. my-org/gfnet_ti.in1k')
    p.add_argument('--token', help='Hub token with write access (default: HF_TOKEN or `hf auth login`)')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', help='branch to push to (default: main)')
    p.add_argument('--no-create', action='store_true', help='only push to an existing repository and branch')
    p.add_argument('--card', help='README.md to upload instead of the generated model card')

    p = command('cards', _cards, 'generate the model card of every pretrained tag (or check them for drift)')
    p.add_argument('names', nargs='*', metavar='NAME', help='pretrained tags, e.g. gfnet_ti.in1k (default: all)')
    p.add_argument('--out', default='model_cards', help='directory of the cards (default: model_cards)')
    p.add_argument('--check', action='store_true', help='fail if the cards in --out differ from the generator')

    p = command('recipe', _recipe, "YAML config for timm's train.py: the authors' training recipe of a model")
    p.add_argument('model', nargs='?', metavar='MODEL', help='model name, e.g. gfnet_xs')
    p.add_argument('--task', default='in1k', choices=('in1k', 'in1k-384', 'transfer'),
                   help='in1k: from scratch at 224; in1k-384: fine-tune at 384; transfer: to another dataset '
                        '(default: in1k)')
    p.add_argument('--out', help='file to write (default: stdout); with --all / --check: directory (default: recipes)')
    p.add_argument('--all', action='store_true', help='write the recipe of every model and task to --out')
    p.add_argument('--check', action='store_true', help='fail if the recipes in --out differ from the generator')

    p = command('export-onnx', _export_onnx,
                'export a model to ONNX (dynamic batch) and check it with onnxruntime (and OpenVINO)', written)
    p.add_argument('--img-size', type=_POSITIVE,
                   help="export at this input size: filters and pos_embed resampled (default: the weights' own)")
    p.add_argument('--opset', type=_POSITIVE, help="ONNX opset, 18 or newer (default: the exporter's)")
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime and OpenVINO comparisons')
    p.add_argument('--tolerance', type=_FLOAT, default=1e-4, help='max abs difference allowed (default: 1e-4)')

    p = command('bench', _bench, 'speed and memory against the reference and timm ViTs, and every way to run it')
    _add_bench_arguments(p)  # beside _bench

    p = command('viz', _viz, 'picture of the learned filters (magnitude spectra per layer)', written)
    p.add_argument('--channels', type=_POSITIVE, help='show this many single channels per layer')
    p.add_argument('--log', action='store_true', help='log magnitude')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError, OSError, ImportError) as e:  # one line: they name the problem and fix
        print(f'timm-gfnet {args.command}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outputs are written all or nothing (atomic.py): say so, no traceback
        print(f'timm-gfnet {args.command}: interrupted; no output was left half-written.', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())

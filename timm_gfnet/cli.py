"""`timm-gfnet` command line. Each subcommand's work lives in the module of its concern; this file only parses."""
import argparse
import sys
from typing import List, Optional

__all__ = ['main']


def _models(args: argparse.Namespace) -> None:
    import timm

    from .profile import profile_model

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
    print(f"{args.checkpoint}: {result['model']} ({how}), {result['params'] / 1e6:.2f}M parameters")
    for f in result['files']:
        print(f'  wrote {f}')
    print(f"  reloaded with timm.create_model('local-dir:{args.out}'): outputs match the source "
          f"(max abs diff {result['max_abs_diff']:.1e})")


def _predict(args: argparse.Namespace) -> None:
    from .predict import load_model, predict

    model = load_model(args.model, args.checkpoint)
    for image, top in zip(args.images, predict(model, args.images, topk=args.topk)):
        print(image)
        for label, prob in top:
            print(f'  {prob:7.2%}  {label}')


def _push(args: argparse.Namespace) -> None:
    from .hub import push_to_hub

    info = push_to_hub(args.source, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                       create=not args.no_create, card=args.card)
    print(f'pushed {args.source} to {info.repo_url.repo_id}: {info.commit_url}')
    print(f"load it with timm.create_model('hf-hub:{info.repo_url.repo_id}', pretrained=True)")


def _cards(args: argparse.Namespace) -> None:
    from .cards import CardDriftError, check_cards, write_cards

    if args.check:
        problems = check_cards(args.out, args.names)
        if problems:
            raise CardDriftError(f'model cards in {args.out} differ from the generator: {", ".join(problems)}; '
                                 f'regenerate them with `timm-gfnet cards --out {args.out}`.')
        print(f'model cards in {args.out} are up to date')
        return
    for path in write_cards(args.out, args.names):
        print(f'wrote {path}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-gfnet', description='GFNet models for timm.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    p = sub.add_parser('models', help='table of the GFNet zoo (params, GMACs at 224, features, pretrained tags)')
    p.set_defaults(func=_models)

    p = sub.add_parser('convert', help="convert a checkpoint (authors' or ours) to model.safetensors + config.json")
    p.add_argument('checkpoint', help="checkpoint file: the authors' .pth release format, or a state_dict")
    p.add_argument('--model', default=None, help='variant name (default: recognised from the tensor shapes)')
    p.add_argument('--out', required=True, help='output directory')
    p.set_defaults(func=_convert)

    p = sub.add_parser('predict', help='top-k ImageNet classes for images')
    p.add_argument('images', nargs='+', help='image files')
    p.add_argument('--model', default=None, help='variant name (default: from --checkpoint, else gfnet_s)')
    p.add_argument('--checkpoint', default=None, help='checkpoint file or converted directory (default: pretrained)')
    p.add_argument('--topk', type=int, default=5, help='how many classes to show (default: 5)')
    p.set_defaults(func=_predict)

    p = sub.add_parser('push', help='upload weights, config.json and model card to a Hugging Face Hub repository')
    p.add_argument('source', help='folder from `timm-gfnet convert` (config.json + weights), or a checkpoint file')
    p.add_argument('repo_id', help='Hub repository, e.g. my-org/gfnet_ti.in1k')
    p.add_argument('--token', default=None, help='Hub token with write access (default: HF_TOKEN or `hf auth login`)')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', default=None, help='branch to push to (default: main)')
    p.add_argument('--no-create', action='store_true', help='only push to an existing repository and branch')
    p.add_argument('--card', default=None, help='README.md to upload instead of the generated model card')
    p.set_defaults(func=_push)

    p = sub.add_parser('cards', help='generate the model card of every pretrained tag (or check them for drift)')
    p.add_argument('names', nargs='*', metavar='NAME', help='pretrained tags, e.g. gfnet_ti.in1k (default: all)')
    p.add_argument('--out', default='model_cards', help='directory of the cards (default: model_cards)')
    p.add_argument('--check', action='store_true', help='fail if the cards in --out differ from the generator')
    p.set_defaults(func=_cards)

    return parser


class CliError(Exception):
    """An error to report to the user as one line, without a traceback."""


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f'timm-gfnet {args.command}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())

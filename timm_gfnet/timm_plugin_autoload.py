"""Load timm plugins (entry-point group ``timm.models``) as soon as ``timm`` is imported.

Installed as a top-level module and imported by a ``.pth`` file at every interpreter start, so it
stays cheap: standard library only, and nothing happens until ``timm`` itself is imported.
Set ``TIMM_DISABLE_PLUGINS=1`` to opt out.
"""
import os
import sys

GROUP = 'timm.models'
DISABLE_ENV = 'TIMM_DISABLE_PLUGINS'


def load_plugins() -> None:
    """Import every plugin module of the group; a broken plugin warns instead of breaking timm."""
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - any plugin error must not break `import timm`
            warnings.warn(
                f'timm plugin {ep.name!r} ({ep.value}) failed to load and was skipped: {e!r}. '
                f'Set {DISABLE_ENV}=1 to skip all plugins.',
                RuntimeWarning,
                stacklevel=2,
            )


class _TimmImportHook:
    """Meta-path finder that lets the real finder locate timm, then loads plugins after timm runs."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)  # one shot
        for finder in sys.meta_path:
            spec = getattr(finder, 'find_spec', lambda *a: None)(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_module = loader.exec_module

        def exec_module_then_plugins(module):
            exec_module(module)
            load_plugins()

        loader.exec_module = exec_module_then_plugins
        return spec


def install() -> None:
    if os.environ.get(DISABLE_ENV, '') not in ('', '0') or 'timm' in sys.modules:
        return
    if not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())


install()

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
    """Import every plugin module of the group; a broken plugin warns instead of breaking timm.

    An entry point may name a model (`name = "module:entrypoint"`): if its module fails to import, the model is
    registered anyway, as a stub whose `create_model` error says why and how to fix it (instead of timm's bare
    "Unknown model")."""
    import importlib
    import warnings
    from importlib.metadata import entry_points

    by_module = {}
    for ep in entry_points(group=GROUP):
        by_module.setdefault(ep.module, []).append(ep)
    for module, eps in by_module.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any plugin error must not break `import timm`
            why = _why(eps[0], e)
            warnings.warn(f'timm plugin {module!r} failed to load and was skipped: {why} Set {DISABLE_ENV}=1 to skip '
                          f'all plugins.', RuntimeWarning, stacklevel=2)
            _register_stubs([ep.attr for ep in eps if ep.attr], why)


def _why(ep, error: Exception) -> str:
    """The import error, and the requirement of the plugin's distribution that the installed packages miss."""
    from importlib.metadata import PackageNotFoundError, version

    dist = getattr(ep, 'dist', None)
    unmet = []
    from packaging.requirements import Requirement  # a declared requirement (the standard library has no parser)

    for text in (dist.requires or []) if dist is not None else []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({'extra': ''}):
            continue  # an extra's requirement, or another platform's
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not req.specifier.contains(installed, prereleases=True):
            unmet.append((str(req), f'{req.name} {installed}' if installed else f'no {req.name}'))
    plugin = f'{dist.metadata["Name"]} {dist.version}' if dist is not None else repr(ep.value)
    if unmet:
        fix = ' '.join(f"'{r}'" for r, _ in unmet)
        return (f'{error!r}. {plugin} needs {", ".join(r for r, _ in unmet)} and this environment has '
                f'{", ".join(h for _, h in unmet)}: pip install {fix}')
    return f'{error!r} ({plugin}: its requirements are installed; reinstall it, or report the error).'


def _register_stubs(names, why: str) -> None:
    from timm.models import is_model, register_model

    def stub(name):
        def entrypoint(pretrained=False, **kwargs):
            raise RuntimeError(f'{name} could not be created: the timm plugin that provides it failed to load: {why}')
        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = __name__  # timm's registry looks the module up in sys.modules
        return entrypoint

    for name in names:
        if not is_model(name):  # a module that failed halfway may have registered some
            register_model(stub(name))


class _TimmImportHook:
    """Meta-path finder that lets the real finder locate timm, then loads plugins after timm runs."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        # asked by importlib.util.find_spec too (transformers does, to see whether timm is installed): the hook stays
        # until timm has really run, so every spec it hands out loads the plugins
        for finder in [f for f in sys.meta_path if f is not self]:
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
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # one shot
            load_plugins()

        loader.exec_module = exec_module_then_plugins
        return spec


def install() -> None:
    if os.environ.get(DISABLE_ENV, '') not in ('', '0') or 'timm' in sys.modules:
        return
    if not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())


install()

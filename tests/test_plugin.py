"""Entry-point autoload: GFNet is part of timm in a fresh interpreter, with no import of timm_gfnet.

CI runs this file twice: in the development install (editable), and against a wheel built from the checkout and
installed into a virtual environment of its own, from a directory where the source tree is not importable
(`TIMM_GFNET_EXPECT_INSTALL=wheel`, see .ci/run): the install users get."""
import json
import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, env: dict = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_DISABLE_PLUGINS'} | (env or {})
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_installed_bootstrap():
    """The bootstrap is installed at the root of site-packages (the .pth and its module), the entry point is declared,
    and with TIMM_GFNET_EXPECT_INSTALL=wheel the package is a regular install, imported from site-packages."""
    out = _run("""
        import json, sys, sysconfig
        from importlib.metadata import distribution
        import _timm_gfnet_autoload, timm_gfnet
        dist = distribution('timm-gfnet')
        direct = json.loads(dist.read_text('direct_url.json') or '{}')
        print(json.dumps(dict(
            editable=direct.get('dir_info', {}).get('editable', False),
            files=[str(f) for f in dist.files or []],
            entry_points=[(e.group, e.name, e.value) for e in dist.entry_points],
            package=timm_gfnet.__file__, bootstrap=_timm_gfnet_autoload.__file__,
            purelib=sysconfig.get_paths()['purelib'])))
    """).stdout
    info = json.loads(out)
    assert {'timm_gfnet_autoload.pth', '_timm_gfnet_autoload.py'} <= set(info['files'])
    assert sorted(e[1:] for e in info['entry_points'] if e[0] == 'timm.models') == [
        [name, f'timm_gfnet.gfnet:{name}'] for name in sorted(_registered())]
    assert os.path.dirname(info['bootstrap']) == info['purelib']
    expected = os.environ.get('TIMM_GFNET_EXPECT_INSTALL')
    if expected == 'wheel':
        assert not info['editable'] and info['package'].startswith(info['purelib'] + os.sep), info
        assert 'timm_gfnet/gfnet.py' in info['files']
    elif expected == 'editable':
        assert info['editable'], info


def _registered() -> list:
    """The models the registry holds, from a fresh interpreter."""
    return json.loads(_run("import json, timm; print(json.dumps(timm.list_models('gfnet*')))").stdout)


def test_interpreter_start_stays_light():
    out = _run("""
        import sys, json
        print(json.dumps(['_timm_gfnet_autoload' in sys.modules, 'torch' in sys.modules, 'timm' in sys.modules,
                          'timm_gfnet' in sys.modules, 'importlib.metadata' in sys.modules]))
    """).stdout
    assert json.loads(out) == [True, False, False, False, False]


def test_import_timm_loads_gfnet():
    out = _run("""
        import sys, json, timm
        m = timm.create_model('gfnet_h_ti', features_only=True)
        print(json.dumps([timm.list_models('gfnet*'), timm.list_pretrained('gfnet*'), m.feature_info.channels(),
                          'timm_gfnet' in sys.modules]))
    """).stdout
    models, pretrained, channels, loaded = json.loads(out)
    assert len(models) == 7 and len(pretrained) == 7 and loaded
    assert channels == [64, 128, 256, 512]


def test_timm_found_before_it_is_imported():
    """transformers asks importlib.util.find_spec('timm') while it is imported: the models must still register when
    timm itself is imported afterwards."""
    out = _run("""
        import importlib.util, json
        assert importlib.util.find_spec('timm') is not None
        import timm
        print(json.dumps(timm.list_models('gfnet*')))
    """).stdout
    assert json.loads(out) == sorted(_registered())


def test_opt_out_and_explicit_import_is_idempotent():
    out = _run("""
        import json, warnings, timm
        before = timm.list_models('gfnet*')
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            import timm_gfnet, timm_gfnet.gfnet
            import importlib; importlib.import_module('timm_gfnet')
        print(json.dumps([before, timm.list_models('gfnet*')]))
    """, env={'TIMM_DISABLE_PLUGINS': '1'}).stdout
    before, after = json.loads(out)
    assert before == [] and len(after) == 7


def test_broken_plugin_warns_and_timm_still_imports(tmp_path):
    """A plugin whose module fails to import: `import timm` warns once and goes on; the models its entry points
    name exist, and creating one says why it cannot be (the import error and the requirement to install)."""
    dist = tmp_path / 'broken_plugin-0.1.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n'
                                   'Requires-Dist: timm>=99\nRequires-Dist: pytest; extra == "test"\n')
    (dist / 'entry_points.txt').write_text('[timm.models]\nbroken_a = no_such_module_for_gfnet_test:broken_a\n'
                                           'broken_b = no_such_module_for_gfnet_test:broken_b\n')
    proc = _run("""
        import timm
        print(len(timm.list_models('gfnet*')), timm.list_models('broken_*'))
        try:
            timm.create_model('broken_b')
        except RuntimeError as e:
            print(e)
    """, env={'PYTHONPATH': str(tmp_path)})
    count, error = proc.stdout.strip().split('\n')
    assert count == "7 ['broken_a', 'broken_b']"
    assert proc.stderr.count("timm plugin 'no_such_module_for_gfnet_test' failed to load") == 1
    assert 'TIMM_DISABLE_PLUGINS' in proc.stderr
    timm_version = _run('import timm; print(timm.__version__)').stdout.strip()
    assert error == (
        "broken_b could not be created: the timm plugin that provides it failed to load: "
        "ModuleNotFoundError(\"No module named 'no_such_module_for_gfnet_test'\"). broken-plugin 0.1 needs timm>=99 "
        f"and this environment has timm {timm_version}: pip install 'timm>=99'")


@pytest.mark.parametrize('scheme', ['local-dir', 'hf-hub'])
def test_saved_config_names_a_gfnet(scheme, tmp_path):
    """Configs saved by timm (save_for_hf) resolve their GFNet architecture in a fresh interpreter."""
    import timm
    from timm.models import save_for_hf
    model = timm.create_model('gfnet_ti', num_classes=5)
    save_for_hf(model, str(tmp_path), safe_serialization=True)
    if scheme == 'local-dir':
        code = f"""
            import timm, torch
            m = timm.create_model('local-dir:{tmp_path}', pretrained=True)
            print(type(m).__name__, m.num_classes)
        """
        env = {}
    else:  # the Hub's cache layout, read offline: no network needed to resolve the config
        cache = tmp_path / 'hub' / 'models--org--gfnet_ti.test'
        snap = cache / 'snapshots' / ('0' * 40)
        snap.mkdir(parents=True)
        for f in ('config.json', 'model.safetensors'):
            (snap / f).write_bytes((tmp_path / f).read_bytes())
        (cache / 'refs').mkdir()
        (cache / 'refs' / 'main').write_text('0' * 40)
        code = """
            import timm
            m = timm.create_model('hf-hub:org/gfnet_ti.test', pretrained=True)
            print(type(m).__name__, m.num_classes)
        """
        env = {'HF_HUB_CACHE': str(tmp_path / 'hub'), 'HF_HUB_OFFLINE': '1'}
    assert _run(code, env=env).stdout.split() == ['GFNet', '5']

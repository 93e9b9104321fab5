"""`timm_gfnet.atomic`: outputs are written all or nothing, and Ctrl-C never leaves them half-moved."""
import os
import signal

import pytest

from timm_gfnet import atomic


def test_ctrl_c_while_moving_files_in_waits_for_the_last_one(tmp_path, monkeypatch):
    """SIGINT during the final renames is held back until all of them are done."""
    real = os.replace
    calls = []

    def replace(src, dst):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(dst)
        real(src, dst)
    monkeypatch.setattr(atomic.os, 'replace', replace)
    written = []
    with pytest.raises(KeyboardInterrupt):
        with atomic.staged_folder(tmp_path / 'out', written) as stage:
            for name in ('a', 'b', 'c'):
                (stage / name).write_text(name)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a', 'b', 'c'] and len(calls) == 3


def test_a_failed_write_keeps_the_earlier_file_and_leaves_nothing(tmp_path):
    out = tmp_path / 'r.yaml'
    atomic.write_text(out, 'first')
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(out) as tmp:
            tmp.write_text('half')
            raise RuntimeError
    assert out.read_text() == 'first' and [p.name for p in tmp_path.iterdir()] == ['r.yaml']


def test_a_file_where_a_folder_goes(tmp_path):
    (tmp_path / 'out').write_text('mine')
    for out in (tmp_path / 'out', tmp_path / 'out' / 'deeper'):
        with pytest.raises(NotADirectoryError, match=rf'^{tmp_path / "out"} is a file; pass a folder to write the '
                                                     rf'files into \(new or existing\)\.$'):
            with atomic.staged_folder(out, []):
                pass
    assert [p.name for p in tmp_path.iterdir()] == ['out'] and (tmp_path / 'out').read_text() == 'mine'

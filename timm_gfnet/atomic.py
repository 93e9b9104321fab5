"""Writing outputs all or nothing: a command that fails or is interrupted leaves no half-written file, keeps the good
output of an earlier run, and touches no file it did not write.

Everything is written beside its destination first (same folder: same file system, so the final move is a rename),
then moved into place; Ctrl-C during those moves is held back until they are done, so a folder's `config.json` and
weights always come from the same run.
"""
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Union

__all__ = ['atomic_path', 'staged_folder', 'write_text', 'write_generated', 'drift']


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold SIGINT back for the duration (main thread only: the only one Python delivers it to)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def _folder(path: Path, create: bool = True) -> None:
    """Make sure `path` can be a folder (and create it): a file there is named, with what to pass instead."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f'{path} is a file; pass a folder to write the files into (new or existing).')
    if create:
        path.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that go by it still do) for the block to write;
    moved over `path` when the block succeeds, deleted when it fails."""
    path = Path(path)
    if path.is_dir():  # else os.replace would fail at the end, naming the temporary file
        raise IsADirectoryError(f'{path} is a folder; pass the path of a file to write (e.g. {path / "NAME"}).')
    _folder(path.parent)
    tmp = path.with_name(f'.{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}')
    try:
        yield tmp
        with _no_interrupt():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(out_dir: Union[str, Path], written: List[Path]) -> Iterator[Path]:
    """A staging folder beside `out_dir` for the block to fill; when the block succeeds, each file in it replaces its
    namesake in `out_dir` (created if needed), and `written` receives their final paths. Files of `out_dir` the block
    did not write are left as they are."""
    out = Path(out_dir)
    _folder(out, create=False)  # made when the block succeeds
    _folder(out.parent)
    stage = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent))
    try:
        yield stage
        files = sorted(p for p in stage.iterdir() if p.is_file())
        out.mkdir(exist_ok=True)
        with _no_interrupt():
            for f in files:
                os.replace(f, out / f.name)
        written.extend(out / f.name for f in files)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text(path: Union[str, Path], text: str) -> Path:
    """Write a text file all or nothing (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding='utf-8')
    return Path(path)


def write_generated(files: Dict[Path, Callable[[], str]]) -> List[Path]:
    """Write each generated text file (path: its generator), each all or nothing; the paths, in order."""
    return [write_text(path, generate()) for path, generate in files.items()]


def drift(files: Dict[Path, Callable[[], str]], stale: Iterable[Path], what: str) -> List[str]:
    """Problems of generated files against their generators: 'NAME (missing)', 'NAME (out of date)', and
    'NAME (no such WHAT)' for each of the `stale` files. Empty when everything is current."""
    problems = []
    for path, generate in files.items():
        if not path.is_file():
            problems.append(f'{path.name} (missing)')
        elif path.read_text(encoding='utf-8') != generate():
            problems.append(f'{path.name} (out of date)')
    return problems + [f'{p.name} (no such {what})' for p in stale]

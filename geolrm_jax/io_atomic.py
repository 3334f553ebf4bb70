"""Outputs that never cost the user a file, one-line errors, and signal-safe temporaries, for every command.

The rules every ``geolrm-jax`` command follows (see ``docs/reliability.md``):

* ``check_destination`` runs before any model is loaded: a destination that is, contains or lies inside an
  input (or the current folder) is refused; an existing one needs ``--overwrite``, and even then it is replaced
  only when the command itself wrote it (``owned``); a folder that cannot be created or written is reported
  then, not after the work.
* ``staged_output`` writes beside the destination, in a hidden ``.<name>.<pid>.<token>.partial`` sibling, and
  moves it into place at the end: an existing folder is swapped with it in one ``renameat2(RENAME_EXCHANGE)``
  (Linux; two renames elsewhere), a file replaced with ``os.replace``. A failure or a signal removes the
  temporary and any parent folder it created; temporaries of killed processes (SIGKILL) are removed by the
  next run writing the same destination.
* ``run_command`` turns SIGINT and SIGTERM into ``Interrupted`` (so cleanups run), prints an expected failure
  (``ValueError``, ``OSError``, ``ImportError``) as one line ``<prog>: error: <message>`` and returns 2, an
  interruption as ``<prog>: interrupted by SIGINT ...`` with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import pathlib
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable

EXIT_USAGE = 2
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXPECTED_ERRORS = (ValueError, OSError, ImportError)


class OutputError(ValueError):
    """A destination that may not be written; the message names it."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (``signum``)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (whitespace runs collapsed), at most 600 characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:597] + "..."


# ---------------------------------------------------------------------------------------------------------
# Signals

_deferral = {"depth": 0, "pending": None}
# Signals handled by signals_raise in this command. The Interrupted raised by the handler can be swallowed when
# the handler happens to run inside a __del__ or a callback ("Exception ignored in ..."), so raise_if_interrupted
# raises it again where it matters (before an output is moved into place).
_received: list[int] = []


def _raise_interrupted(signum, frame):
    _received.append(signum)
    if _deferral["depth"]:
        _deferral["pending"] = _deferral["pending"] or signum
        return
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise ``Interrupted`` if a SIGINT/SIGTERM arrived under ``signals_raise`` (even if its exception was lost)."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def signals_raise():
    """Within: SIGINT and SIGTERM raise ``Interrupted`` in the main thread (the default SIGTERM action would kill
    the process without running any cleanup). A no-op outside the main thread.

    When the handler runs inside a garbage-collector callback or a ``__del__`` (JAX registers one), Python cannot
    propagate the exception and would print it as "Exception ignored in ..."; that report is suppressed here, and
    ``raise_if_interrupted`` raises it again at the command's next step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_hook = sys.unraisablehook

    def quiet_hook(unraisable):
        if not isinstance(unraisable.exc_value, Interrupted):
            previous_hook(unraisable)

    previous = {s: signal.signal(s, _raise_interrupted) for s in HANDLED_SIGNALS}
    sys.unraisablehook = quiet_hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred():
    """Within: a SIGINT/SIGTERM handled by ``signals_raise`` is held back and raised on exit (when no other
    exception is on its way out), so a cleanup or a commit is never cut in half."""
    _deferral["depth"] += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _deferral["depth"] -= 1
        pending = _deferral["pending"]
        if not _deferral["depth"] and pending:
            _deferral["pending"] = None
            if not failed:
                raise Interrupted(pending)


def run_command(prog: str, command: Callable[[], int | None], expected=EXPECTED_ERRORS) -> int:
    """Run a command's body with ``signals_raise``: expected failures become one line on stderr and exit code 2,
    SIGINT/SIGTERM exit code 128 + signal number. ``GEOLRM_TRACEBACK=1`` re-raises instead (debugging)."""
    _received.clear()
    with signals_raise():
        try:
            code = int(command() or 0)
            raise_if_interrupted()
            return code
        except Interrupted as sig:
            print(f"{prog}: interrupted by {signal.Signals(sig.signum).name}; partial outputs removed",
                  file=sys.stderr)
            return 128 + sig.signum
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; partial outputs removed", file=sys.stderr)
            return 128 + signal.SIGINT
        except expected as err:
            if os.environ.get("GEOLRM_TRACEBACK"):
                raise
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            _received.clear()


def read_or_fail(load: Callable, path, what: str):
    """``load(path)``, with any failure turned into one ``ValueError`` naming ``path`` and ``what`` it is."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return load(path)
    except Exception as err:  # loaders of foreign files raise anything on damaged input
        raise ValueError(f"{path}: cannot read {what}: {type(err).__name__}: {one_line(err)}") from err


# ---------------------------------------------------------------------------------------------------------
# Destinations


def resolved(path) -> pathlib.Path:
    """Absolute path with symlinks of its existing part resolved (the path itself need not exist)."""
    return pathlib.Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(inner: pathlib.Path, outer: pathlib.Path) -> bool:
    return inner == outer or outer in inner.parents


def _first_existing(path: pathlib.Path) -> pathlib.Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_apart(dest, inputs: Iterable) -> pathlib.Path:
    """Raise ``OutputError`` when ``dest`` is, contains or lies inside one of ``inputs`` (missing ones and None
    are ignored); returns ``dest`` resolved."""
    target = resolved(dest)
    for item in inputs:
        if item is None or item == "" or not os.path.lexists(item):
            continue
        source = resolved(item)
        if target == source:
            raise OutputError(f"{os.fspath(dest)}: is the input {item}; choose another output")
        if _within(source, target):
            raise OutputError(f"{os.fspath(dest)}: contains the input {item}; choose another output")
        if _within(target, source):
            raise OutputError(f"{os.fspath(dest)}: lies inside the input {item}; choose another output")
    return target


def check_destination(dest, *, inputs: Iterable = (), overwrite: bool = False,
                      owned: Callable[[pathlib.Path], str | None] | None = None,
                      flag: str = "--overwrite", folder: bool = True) -> pathlib.Path:
    """Check that ``dest`` may be written (see the module doc) -> its resolved path; raises ``OutputError``.

    inputs: paths the command reads (missing ones are ignored). owned(path) -> None when an existing ``dest``
    is something this command writes, else the reason it is not (e.g. "holds notes.txt"). An existing empty
    folder counts as owned. Without ``owned``, an existing destination is never replaced. ``folder=False``: the
    output is a file, so an existing folder there is refused.
    """
    shown = os.fspath(dest)
    target = check_apart(dest, inputs)
    if _within(resolved(os.getcwd()), target):
        raise OutputError(f"{shown}: is (or contains) the current folder; choose another output")
    if os.path.islink(dest):
        raise OutputError(f"{shown}: is a symbolic link; not replacing it (give its target or another path)")
    if not folder and target.is_dir():
        raise OutputError(f"{shown}: is a folder; give a file name")
    if target.exists():
        empty_folder = target.is_dir() and not any(target.iterdir())
        if not empty_folder:
            if not overwrite:
                raise OutputError(f"{shown}: exists; pass {flag} to replace it")
            reason = "the command cannot tell what it holds" if owned is None else owned(target)
            if reason:
                raise OutputError(f"{shown}: exists and was not written by this command ({reason}); "
                                  "not replacing it")
    anchor = _first_existing(target.parent)
    if not anchor.is_dir():
        raise OutputError(f"{shown}: cannot create it, {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{shown}: cannot write in {anchor} (permission denied)")
    return target


# ---------------------------------------------------------------------------------------------------------
# Staged outputs

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc if hasattr(libc, "renameat2") else None
    except OSError:
        return None


_LIBC = _libc()


def exchange(a, b) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if _LIBC is None:
        return False
    rc = _LIBC.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _temporary_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{8}}\.partial$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(dest) -> list[pathlib.Path]:
    """Remove ``.<name>.<pid>.<token>.partial`` siblings of ``dest`` left by processes no longer running."""
    dest = pathlib.Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern, removed = _temporary_pattern(dest.name), []
    for entry in dest.parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def _make_parents(folder: pathlib.Path) -> list[pathlib.Path]:
    """mkdir -p ``folder``; returns the folders created, outermost first."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            _remove_empty(created)
            raise OutputError(f"{path}: cannot create the folder ({err.strerror})") from err
        created.append(path)
    return created


def _remove_empty(folders: list[pathlib.Path]) -> None:
    for path in reversed(folders):
        with contextlib.suppress(OSError):
            path.rmdir()


def commit(tmp: pathlib.Path, dest: pathlib.Path) -> None:
    """Move the finished ``tmp`` to ``dest``, replacing what is there in one step where the OS allows."""
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
        return
    if tmp.is_dir() and dest.is_dir() and not dest.is_symlink():
        if exchange(tmp, dest):  # tmp now holds the old content
            _remove(tmp)
            return
        old = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
        os.rename(dest, old)
        os.rename(tmp, dest)
        _remove(old)
        return
    os.replace(tmp, dest)


@contextlib.contextmanager
def staged_output(dest, *, folder: bool = True, inner: str | None = None):
    """``with staged_output(dest) as tmp:`` write into ``tmp`` (a fresh folder, or a file path not yet
    created when ``folder=False``); on a clean exit it replaces ``dest``. ``inner``: yield ``tmp / inner``
    (not created) instead and move that into place, for writers that insist on creating their folder (Orbax).
    On any exception or signal, ``tmp`` and the parent folders made for it are removed and the exception
    propagates."""
    dest = resolved(dest)
    created = _make_parents(dest.parent)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        remove_stale_temporaries(dest)
        if folder or inner is not None:
            tmp.mkdir()
        else:
            tmp.touch(exist_ok=False)
    except OSError as err:
        _remove_empty(created)
        raise OutputError(f"{dest}: cannot write in {dest.parent} ({err.strerror or err})") from err
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield tmp if inner is None else tmp / inner
        raise_if_interrupted()
        with signals_deferred():
            commit(tmp if inner is None else tmp / inner, dest)
            if inner is not None:
                _remove(tmp)
    except BaseException:
        with signals_deferred():
            _remove(tmp)
            _remove_empty(created)
        raise


def write_bytes(dest, data: bytes) -> None:
    """Write a whole file through ``staged_output``."""
    with staged_output(dest, folder=False) as tmp:
        tmp.write_bytes(data)


def write_text(dest, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))

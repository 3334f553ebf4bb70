"""``io_atomic``: destinations checked before work, staged outputs moved in atomically, signals clean up, one-line
errors; and the video writer/reader that no longer fork the JAX process."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from geolrm_jax import export, inputs, io_atomic


def tree(path):
    """{relative path: bytes} of every file under ``path`` (a snapshot to compare)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def hidden(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("."))


@pytest.fixture
def inputs_and_out(tmp_path):
    source = tmp_path / "obj"
    source.mkdir()
    (source / "a.png").write_bytes(b"user image")
    return source, tmp_path / "out"


@pytest.mark.parametrize("dest, source, message", [
    ("obj", "obj", "is the input"),
    ("obj/sub", "obj", "lies inside the input"),
    (".", "obj", "contains the input"),
    ("obj/a.png", "obj/a.png", "is the input"),
    ("obj", "obj/a.png", "contains the input"),
])
def test_destination_that_is_contains_or_lies_inside_an_input_is_refused(inputs_and_out, dest, source, message):
    folder, _ = inputs_and_out
    with pytest.raises(io_atomic.OutputError, match=message):
        io_atomic.check_destination(folder.parent / dest, inputs=[None, folder.parent / source], overwrite=True,
                                    owned=lambda p: None)


def test_existing_destination_needs_overwrite_and_must_be_owned(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    (mine / "result.txt").write_text("written by the tool")
    theirs.mkdir()
    (theirs / "notes.txt").write_text("the user's")
    owned = lambda p: None if (p / "result.txt").exists() else "it holds notes.txt"
    with pytest.raises(io_atomic.OutputError, match="exists; pass --overwrite"):
        io_atomic.check_destination(mine, owned=owned)
    assert io_atomic.check_destination(mine, overwrite=True, owned=owned) == mine.resolve()
    with pytest.raises(io_atomic.OutputError, match="not written by this command .it holds notes.txt"):
        io_atomic.check_destination(theirs, overwrite=True, owned=owned)
    (tmp_path / "empty").mkdir()
    assert io_atomic.check_destination(tmp_path / "empty")  # nothing to lose
    with pytest.raises(io_atomic.OutputError, match="is a folder"):
        io_atomic.check_destination(tmp_path / "empty", folder=False)  # a file output cannot replace a folder
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(io_atomic.OutputError, match="symbolic link"):
        io_atomic.check_destination(tmp_path / "link", overwrite=True, owned=owned)


def test_current_folder_and_unwritable_places_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io_atomic.OutputError, match="current folder"):
        io_atomic.check_destination(".", overwrite=True, owned=lambda p: None)
    with pytest.raises(io_atomic.OutputError, match="current folder"):
        io_atomic.check_destination("..", overwrite=True, owned=lambda p: None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(io_atomic.OutputError, match="is not a folder"):
        io_atomic.check_destination(tmp_path / "file" / "out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permission bits do not stop writes")
        with pytest.raises(io_atomic.OutputError, match="permission denied"):
            io_atomic.check_destination(locked / "deeper" / "out")
    finally:
        locked.chmod(0o755)


def test_staged_folder_replaces_atomically_and_failures_leave_the_old_state(tmp_path):
    dest = tmp_path / "a" / "b" / "out"
    with io_atomic.staged_output(dest) as tmp:
        assert tmp.parent == dest.parent.resolve() and tmp.name.startswith(".out.")
        (tmp / "x").write_text("1")
    assert tree(dest) == {"x": b"1"}
    with io_atomic.staged_output(dest) as tmp:
        (tmp / "y").write_text("2")
    assert tree(dest) == {"y": b"2"} and hidden(dest.parent) == []

    for error in (ValueError("disk full"), io_atomic.Interrupted(signal.SIGTERM), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with io_atomic.staged_output(dest) as tmp:
                (tmp / "z").write_text("partial")
                raise error
        assert tree(dest) == {"y": b"2"} and hidden(dest.parent) == []

    # Parent folders made for a failed output are removed again; existing ones stay.
    with pytest.raises(ValueError):
        with io_atomic.staged_output(tmp_path / "new" / "deep" / "out"):
            raise ValueError("boom")
    assert not (tmp_path / "new").exists() and (tmp_path / "a" / "b").is_dir()


def test_staged_file_and_inner_folder(tmp_path):
    io_atomic.write_text(tmp_path / "f.json", "[1]")
    io_atomic.write_text(tmp_path / "f.json", "[2]")
    assert (tmp_path / "f.json").read_text() == "[2]" and hidden(tmp_path) == []
    with io_atomic.staged_output(tmp_path / "ck", inner="checkpoint") as tmp:
        assert not tmp.exists()
        tmp.mkdir()
        (tmp / "w").write_text("w")
    assert tree(tmp_path / "ck") == {"w": b"w"} and hidden(tmp_path) == []


def test_exchange_swaps_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("a")
    (b / "from_b").write_text("b")
    if not io_atomic.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not available here (the two-rename fallback is used)")
    assert tree(a) == {"from_b": b"b"} and tree(b) == {"from_a": b"a"}


def test_temporaries_of_killed_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.{dead}.0123abcd.partial"
    live = tmp_path / f".out.{os.getppid()}.0123abcd.partial"
    other = tmp_path / ".out.notes"
    for p in (stale, live, other):
        p.mkdir()
    assert io_atomic.remove_stale_temporaries(tmp_path / "out") == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_run_command_prints_one_line_and_exit_codes(capsys):
    def fail():
        raise ValueError("obj/cameras.json: bad\nsecond line")

    assert io_atomic.run_command("geolrm-jax x", fail) == 2
    assert capsys.readouterr().err == "geolrm-jax x: error: obj/cameras.json: bad second line\n"
    assert io_atomic.run_command("geolrm-jax x", lambda: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5)) == 143
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert io_atomic.run_command("geolrm-jax x", lambda: 0) == 0


def test_signal_during_a_cleanup_waits_for_it():
    with io_atomic.signals_raise():
        with pytest.raises(io_atomic.Interrupted):
            with io_atomic.signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                finished = True  # not cut short by the signal
        assert finished


def test_a_signal_swallowed_by_a_finalizer_still_stops_the_commit(tmp_path, capsys):
    """A handler that runs inside __del__ (or a gc callback, as JAX's) cannot propagate its exception; the
    command must still stop before moving the output into place, and print no "Exception ignored" traceback."""

    class SignalsInFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the Python-level handler runs here, inside __del__

    def body():
        with io_atomic.staged_output(tmp_path / "out") as tmp:
            (tmp / "x").write_text("complete?")
            SignalsInFinalizer()  # dropped at once
        return 0

    assert io_atomic.run_command("t", body) == 143
    assert not (tmp_path / "out").exists() and hidden(tmp_path) == []
    assert capsys.readouterr().err.splitlines() == ["t: interrupted by SIGTERM; partial outputs removed"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_write_keeps_the_previous_output(tmp_path, signum):
    """A real signal to a process writing through staged_output: exit 128+n, the old output intact, no debris."""
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("previous result")
    script = textwrap.dedent(f"""
        import pathlib, time
        from geolrm_jax import io_atomic
        def body():
            with io_atomic.staged_output({str(dest)!r}) as tmp:
                (tmp / "new").write_text("partial")
                print("ready", flush=True)
                time.sleep(60)
        raise SystemExit(io_atomic.run_command("test", body))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"test: interrupted by {signal.Signals(signum).name}; partial outputs removed"]
    assert tree(dest) == {"old": b"previous result"} and hidden(tmp_path) == []


def test_video_writer_and_reader_do_not_fork_the_jax_process(tmp_path):
    """imageio-ffmpeg spawned ffmpeg with preexec_fn=os.setpgrp, a fork() that JAX warns may deadlock."""
    import jax

    jax.devices()  # JAX's backend (and its at-fork warning) is live from here on
    ramp = np.linspace(0, 1, 24)[None, None, :, None] * np.linspace(0.2, 1, 16)[None, :, None, None]
    frames = np.broadcast_to(ramp, (5, 16, 24, 3)) * np.linspace(0.5, 1, 5)[:, None, None, None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export.write_video(tmp_path / "t.mp4", frames, fps=10)
        back = inputs.read_video_frames(tmp_path / "t.mp4")
    assert not [w for w in caught if "fork" in str(w.message)]
    assert back.shape == (5, 16, 24, 3) and np.abs(back - frames).mean() < 0.03
    with pytest.raises(ValueError, match="fps"):
        export.write_video(tmp_path / "z.mp4", frames, fps=0)
    with pytest.raises(ValueError, match="T >= 1"):
        export.write_video(tmp_path / "z.mp4", frames[:0])

"""The output folder: one training at a time (a lock naming its holder's PID, released on exit, taken over when
its holder died), files written atomically with the umask's mode and the folder flushed after the rename."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import RUN, train
from helpers_training import ROOT, child_env, finish, load, mtdl, one_thread, wait_for_logged_step, write_recipe  # noqa: F401

from multitask_deeplab.engine.checkpoint import save_checkpoint
from multitask_deeplab.runtime import files
from multitask_deeplab.runtime.lock import FolderLock
from multitask_deeplab.visualize import save_png

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_a_second_training_in_a_folder_in_use_is_refused_naming_the_pid_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    first = subprocess.Popen(
        mtdl("train", str(recipe), *RUN, "train.steps=500", "train.checkpoint_interval=2", "train.seed=0", f"train.output_dir={run}",
             "--no-progress"),
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_logged_step(run, 2, [first], timeout=120)
        recipe_yaml = (run / "recipe.yaml").read_text()
        assert train(recipe, run, "train.seed=1", "--overwrite") == 2
        assert capsys.readouterr().err == (
            f"mtdl: error: {run} is in use by process {first.pid} (another training writes there; lock file {run / '.lock'}): "
            "wait for it to end or stop it, or set train.output_dir to another folder\n"
        )
        assert (run / "recipe.yaml").read_text() == recipe_yaml and first.poll() is None, "the first run goes on untouched"
        first.send_signal(signal.SIGKILL)
    finally:
        finish([first], timeout=60)
    assert (run / ".lock").read_text() == f"{first.pid}\n", "SIGKILL left the lock file behind"
    assert train(recipe, run, "train.steps=3", "--resume", "auto") == 0, "the dead holder's lock is taken over"
    assert not (run / ".lock").exists(), "released on exit"


def test_a_stale_lock_file_is_taken_over_and_release_removes_it(tmp_path):
    (tmp_path / ".lock").write_text("999999999\n")  # no process holds the lock on it
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_atomic_writes_get_the_umask_mode_and_flush_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "last.pt", {"step": 1})
        save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "picture.png")
    finally:
        os.umask(old)
    for name in ("last.pt", "picture.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    temp, folder = synced  # the picture is not flushed
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".last.pt.") and temp.endswith(".tmp")
    assert folder == str(tmp_path), "the folder is flushed after the rename"

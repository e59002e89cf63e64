"""Hostile recipe files: each is refused in one line, before it can take much memory or time (a "billion laughs"
alias bomb expands to gigabytes; 5000 nested brackets overflow a recursive parser; a 50 MB file takes minutes)."""

from __future__ import annotations

import signal
import tracemalloc

import numpy as np
import pytest

from multitask_deeplab.cli import main

# "Billion laughs": ten levels, each a list of nine aliases of the level below: 9**10 strings once expanded.
BOMB = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
HOSTILE = {
    "alias bomb": (BOMB, "anchor &l0 at line 1 is not allowed"),
    "aliases": ("train: &t {lr: 0.1}\neval: *t\n", "anchor &t at line 1 is not allowed"),
    "merge key": ("tasks:\n  <<: {seg: {kind: depth}}\n", "merge key '<<' at line 2 is not allowed"),
    "deep flow nesting": ("tasks: " + "[" * 5000 + "]" * 5000 + "\n", "nesting deeper than 32 levels at line 1"),
    "deep block nesting": ("".join(f"{'  ' * i}k{i}:\n" for i in range(500)), "nesting deeper than 32 levels at line 32"),
    "tabs": ("tasks:\n\tseg: {kind: depth}\n", "found character '\\t' that cannot start any token at line 2"),
    "python tag": ("tasks: !!python/object/apply:os.system ['touch pwned']\n", "tag '!!python/object/apply:os.system' at line 1 is not allowed"),
    "empty file": ("", "the top level must be a mapping of sections"),
    "list at the top": ("- tasks\n- train\n", "the top level must be a mapping of sections (model, tasks, data, train, weighting, eval), got a list"),
    "control characters": ("tasks: \x00\x07\n", "unacceptable character #x0000"),
}
MEMORY_BOUND = 32 * 2**20  # bytes of Python allocations while refusing any of them


@pytest.fixture
def hang_guard():
    """Fails a probe that runs for a minute instead of letting it hang the suite."""

    def expired(signum, frame):
        raise TimeoutError("the recipe was not refused within 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refuse(capsys, path) -> str:
    tracemalloc.start()
    try:
        code = main(["train", str(path), "--print-recipe"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("mtdl: error: ") and err.count("\n") == 1, err
    assert peak < MEMORY_BOUND, f"{peak} bytes allocated to refuse it"
    return err


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_recipe_is_refused_in_one_line_with_little_memory(tmp_path, capsys, hang_guard, name, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the python tag would touch ./pwned if it ran
    text, message = HOSTILE[name]
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    err = refuse(capsys, path)
    assert message in err and not (tmp_path / "pwned").exists()


def test_a_50_mb_file_and_binary_content_are_refused_without_reading_them_whole(tmp_path, capsys, hang_guard):
    big = tmp_path / "big.yaml"
    big.write_text("tasks: {}\n" + "# padding\n" * 5_000_000)
    assert f"recipe {big} is larger than 1 MiB: is it a recipe?" in refuse(capsys, big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(np.random.default_rng(0).bytes(65536))
    assert f"cannot read recipe {binary}: 'utf-8' codec can't decode byte" in refuse(capsys, binary)

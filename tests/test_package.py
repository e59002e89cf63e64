"""Package hygiene: one version everywhere, type information shipped, CI running the README's own commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from setuptools.config.setupcfg import read_configuration

import multitask_deeplab
from multitask_deeplab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_has_one_source(capsys):
    metadata = read_configuration(ROOT / "setup.cfg")["metadata"]
    assert metadata["version"] == multitask_deeplab.__version__, "setup.cfg must read the package's __version__"
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"mtdl {multitask_deeplab.__version__}\n"


def test_the_changelog_starts_with_this_version():
    headings = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings and headings[0] == multitask_deeplab.__version__


def test_type_information_is_shipped():
    assert (ROOT / "multitask_deeplab" / "py.typed").is_file()
    options = read_configuration(ROOT / "setup.cfg")["options"]
    assert "py.typed" in options["package_data"]["multitask_deeplab"]


def test_ci_installs_as_the_readme_says_then_lints_then_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.+?)\n```", readme, flags=re.DOTALL)[1]
    install, _, test = command.rpartition(" && ")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == f"{install} && ruff check . && {test}"
    assert any(requirement.startswith("ruff") for requirement in read_configuration(ROOT / "setup.cfg")["options"]["extras_require"]["dev"])

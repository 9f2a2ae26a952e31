"""The install instructions, CI and the dependency lists agree with each other."""

import re

import pytest
import yaml
from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

QUICKSTART_TEST = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest'
QUICKSTART_DEMO = ("python3 -m venv .venv && .venv/bin/pip install -e . && "
                   ".venv/bin/python train.py --config configs/demo.yaml")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["eval"]) | set(extras["timm"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pinned = {r for r in pip_section if not r.startswith("-e")}
    assert pinned == wanted, f"environment.yml and pyproject.toml differ: {pinned ^ wanted}"


def test_installed_packages_satisfy_the_declared_ranges():
    """Every dependency's range admits the version this environment installed (no version written here)."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(requirement)
        installed = version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{requirement} does not admit {installed}"


def _quickstart() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_quickstart_is_what_ci_and_tests_run():
    commands = _quickstart()
    assert commands == [QUICKSTART_DEMO, QUICKSTART_TEST], commands
    ci = (REPO / ".ci" / "run").read_text()
    assert QUICKSTART_TEST in ci.splitlines(), ".ci/run must run the README's test command verbatim"
    # The demo command's config is the one tests/test_cli.py runs end to end.
    from test_cli import DEMO_CONFIG

    assert commands[0].endswith(f"train.py --config {DEMO_CONFIG}")

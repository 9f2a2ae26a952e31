"""The install instructions, CI and the dependency lists agree with each other."""

import re

import pytest
import yaml
from conftest import DEMO_CONFIG, REPO

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
    # The demo command's config is the one tests/training/test_cli.py runs end to end.
    assert commands[0].endswith(f"train.py --config {DEMO_CONFIG}")


@pytest.mark.slow
def test_a_plain_install_has_the_configs_and_runs_without_the_checkout(tmp_path):
    """``pip install .`` (not editable) ships every subpackage and the configs the commands read; from a folder
    outside the checkout, train.py's parser finds its default config and a study finds its base config."""
    import os
    import subprocess
    import sys
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(wheels)], check=True, cwd=tmp_path, timeout=300)
    wheel = next(wheels.glob("showtell-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"showtell/configs/{p.name}" for p in (REPO / "showtell" / "configs").glob("*.yaml")}
    assert configs and configs <= names, f"configs missing from the wheel: {configs - names}"
    subpackages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "showtell").glob("*/__init__.py")}
    assert {f"{s}/__init__.py" for s in subpackages} <= names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    spec = outside / "study.yaml"
    spec.write_text("name: tiny\nbase: configs/demo.yaml\ngrid: {model.conditioning: [pre]}\nseeds: [0]\n")
    code = ("import showtell, showtell.training.cli as cli; "
            f"assert showtell.__file__.startswith({str(target)!r}), showtell.__file__; "
            "assert cli.DEFAULT_CONFIG.is_file(); "
            "from showtell.studies import load_spec; print(load_spec('study.yaml').base[0])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=outside, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(target / "showtell" / "configs" / "demo.yaml")

"""The README opens with the two fresh-machine commands, and CI runs exactly those."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def first_code_block(text: str) -> list[str]:
    block = re.search(r"```(?:bash)?\n(.*?)```", text, re.S)
    assert block, "README has no code block"
    return [ln.strip() for ln in block.group(1).strip().splitlines()]


def test_readme_opens_with_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    head = readme.split("\n\n", 2)
    assert head[0].startswith("# specplug")
    install, test = first_code_block(readme)
    assert "torch==2.13.0" in install and "specplug generate" in install
    assert test.startswith("python -m pytest")


def test_ci_runs_the_readme_commands():
    install, test = first_code_block((ROOT / "README.md").read_text())
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci_lines
    assert ci_lines[-1] == test  # the test command is the last thing CI does
    assert "set -euo pipefail" in ci_lines  # pytest's exit 5 (no tests) fails CI
    # lint, format and types run before the tests, from the settings in pyproject.toml
    for check in ("ruff check .", "ruff format --check .", "mypy"):
        assert ci_lines.index(check) < ci_lines.index(test)
    # strict mode would let the root's specplug/ folder shadow the package when pytest runs from the root
    assert "editable_mode=strict" not in install


def test_lint_and_type_settings_are_declared():
    text = (ROOT / "pyproject.toml").read_text()
    for section in ("[tool.ruff]", "[tool.ruff.lint]", "[tool.ruff.format]", "[tool.mypy]"):
        assert section in text
    assert (ROOT / ".pre-commit-config.yaml").is_file() and (ROOT / "specplug" / "py.typed").is_file()


def test_metadata_declares_ranges_not_pins():
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"dependencies = \[(.*?)\]", text, re.S).group(1)
    assert "torch>=" in deps and "==" not in deps

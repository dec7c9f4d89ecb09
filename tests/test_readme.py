"""The README's two set-up commands stay true: CI runs exactly the second one."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    demo, test = _setup_commands()
    assert demo.endswith("plmkit transfer") and "torch==2.13.0" in demo
    assert demo.index("torch==2.13.0") < demo.index("install -e .")
    assert "pytest" in test and test.index("torch==2.13.0") < test.index('-e ".[dev]"')
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [test]


def test_every_package_folder_is_declared_for_the_wheel():
    """A package missing from pyproject's list works in an editable install but is left out of a wheel."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    folders = {"plmkit": ROOT / "plmkit", **{name: ROOT / path for name, path in config["package-dir"].items()}}
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((package, *relative)))
    assert found == declared


def test_every_quick_start_command_parses():
    """The README's quick-start commands name flags that exist."""
    import shlex

    from plmkit.cli import build_parser

    block = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.startswith("plmkit ")]
    assert len(commands) >= 10
    parser = build_parser()
    for words in commands:
        if "--help" not in words:
            parser.parse_args(words[1:])

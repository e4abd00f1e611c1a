"""The README is a contract: CI runs its test command, and its language examples are real syntax."""
import re
from pathlib import Path

from netc.lang.parser import parse_text

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(text: str) -> list[str]:
    return re.findall(r"```\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    section = README.split("The test command", 1)[1]
    command = _blocks(section)[0].strip()
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.lstrip().startswith("#")]
    assert ci_lines[-1] == command


def test_every_language_example_parses():
    section = README.split("## The language", 1)[1].split("## Caffe files", 1)[0]
    examples = [b for b in _blocks(section) if not b.lstrip().startswith(("net.net:", "{"))]
    assert len(examples) >= 10   # the regex still finds the reference's examples
    for example in examples:
        parse_text(example, "README.md")   # raises NetcError with the location on a syntax error


def test_readme_quotes_the_npz_layout_the_code_writes():
    from netc.runtime.weight_files import NPZ_LAYOUT
    assert NPZ_LAYOUT in README

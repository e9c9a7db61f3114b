"""The README's promises that code can check: its first commands and its backend table."""

import pathlib
import re

from tinymaskrcnn import implementations

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_first_lines_hold_the_tour_and_the_test_commands():
    first = "\n".join(README.splitlines()[:8])
    assert "pip install -e . && tinymaskrcnn tour" in first
    assert 'pip install -e ".[test,distributed]" && pytest' in first


def test_ci_installs_what_the_readme_test_line_installs():
    ci = (pathlib.Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test,distributed]"' in ci


def test_the_backend_table_is_what_implementations_reports():
    rows = re.findall(r"^\| `(\w+)` \| (\S+) \| (\S+) \| (\S+) \|$", README, re.MULTILINE)
    table = {op: {"numpy": a, "numba": b, "cuda": c} for op, a, b, c in rows}
    assert table == implementations()

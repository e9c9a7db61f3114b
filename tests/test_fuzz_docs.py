"""docs/errors.md lists every fuzzing probe, each once, in the section of its test module,
and nothing that is not a probe."""

import re
from pathlib import Path

import pytest
import test_fuzz_checkpoints
import test_fuzz_cli
import test_fuzz_coco
import test_fuzz_model_inputs
import test_fuzz_training

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
MODULES = [
    test_fuzz_model_inputs,
    test_fuzz_checkpoints,
    test_fuzz_coco,
    test_fuzz_cli,
    test_fuzz_training,
]


def _rows_by_module():
    """test module name -> the probe ids in the first column of its section's table."""
    rows, module = {}, None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## .*\(tests/(test_fuzz_\w+)\.py\)", line)
        if heading:
            module = heading[1]
            rows[module] = []
        row = re.match(r"\| `([\w-]+)` \|", line)
        if row and module:
            rows[module].append(row[1])
    return rows


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_the_errors_table_lists_each_probe_of_a_module_once_and_nothing_else(module):
    documented = _rows_by_module().get(module.__name__)
    assert documented is not None, f"docs/errors.md has no section for {module.__name__}"
    assert len(set(module.PROBES)) == len(module.PROBES), "a probe id is listed twice"
    assert sorted(documented) == sorted(module.PROBES)


def test_the_readme_links_the_errors_table():
    readme = (DOC.parents[1] / "README.md").read_text()
    assert "docs/errors.md" in readme

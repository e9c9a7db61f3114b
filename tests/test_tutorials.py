"""The numbered tutorials are notebooks too: jupytext's percent format, cell by cell.

Each ``tutorials/NN_*.py`` runs as a script and opens as a notebook (Jupyter with
jupytext, VS Code's Python extension) unchanged. Running them is not tested here: each
writes the committed figures, and rerunning one must leave ``figures/`` as it is.
"""

import pathlib

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).resolve().parents[1] / "tutorials").glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 9


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_each_tutorial_opens_with_its_story_as_a_markdown_cell(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# %% [markdown]"
    assert lines[1].startswith(f"# # Tutorial {path.stem[:2]}")
    assert "# %%" in lines  # code cells follow


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_each_tutorial_finds_figures_without_a_file_name(path):
    # A notebook kernel has no __file__: every use of it must be guarded.
    text = path.read_text()
    for line in text.splitlines():
        if "__file__" in line and not line.lstrip().startswith("#"):
            assert 'if "__file__" in globals()' in line, line


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_each_tutorial_converts_to_a_valid_notebook_with_jupytext(path):
    jupytext = pytest.importorskip(
        "jupytext", reason="jupytext is not installed (pip install -e '.[notebooks]')"
    )
    import nbformat

    text = path.read_text()
    assert jupytext.formats.guess_format(text, ".py")[0] == "percent"
    notebook = jupytext.reads(text, fmt="py:percent")
    nbformat.validate(notebook)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds.count("code") >= 2
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    compile(code, str(path), "exec")
    if "def main(" in code:
        assert 'if __name__ == "__main__":' in code  # the last cell runs every step
    # and back: the notebook written as a script holds the same cells
    again = jupytext.reads(jupytext.writes(notebook, fmt="py:percent"), fmt="py:percent")
    assert [c.source for c in again.cells] == [c.source for c in notebook.cells]

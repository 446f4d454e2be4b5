"""Every lesson notebook runs top to bottom on the CPU (a cell that raises fails the build), and is
committed with its figures, so that a reader browsing the repository sees them without running it."""

import nbformat
import pytest

from lessons.run import execute, notebooks

LESSONS = notebooks()


def test_there_are_ten_lessons():
    assert len(LESSONS) == 10, [path.name for path in LESSONS]


@pytest.mark.parametrize("path", LESSONS, ids=[path.stem for path in LESSONS])
def test_lesson_runs_top_to_bottom(path):
    notebook, _ = execute(path)
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", LESSONS, ids=[path.stem for path in LESSONS])
def test_lesson_is_committed_with_its_figures(path):
    notebook = nbformat.read(path, as_version=4)
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert images, f"{path.name} has no stored figure: run python -m lessons.run {path.stem} --write"

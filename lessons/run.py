"""Run the lesson notebooks top to bottom, as the tests and a reader would.

    python -m lessons.run                      # every lesson; prints each one's time, fails on the first error
    python -m lessons.run 03_rglru --write     # one lesson, saving its outputs (figures included) in place

The notebooks are committed with their outputs, so that a reader browsing the repository sees every
figure without running anything; `--write` is how those outputs are refreshed. Each lesson must run
on a CPU in 2 minutes at most. Kernels run from the repository root, whatever directory this is run from.
"""

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

LESSONS = Path(__file__).resolve().parent
ROOT = LESSONS.parent
TIME_LIMIT = 120  # seconds per lesson on a 2-core CPU


def notebooks(names=()) -> list[Path]:
    """The lessons in order, or those whose file name starts with one of `names`."""
    every = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))
    chosen = [path for path in every if not names or any(path.name.startswith(name) for name in names)]
    if names and not chosen:
        raise SystemExit(f"no lesson matches {' '.join(names)}; lessons are: {' '.join(p.stem for p in every)}")
    return chosen


def execute(path: Path, timeout: int = TIME_LIMIT) -> tuple[nbformat.NotebookNode, float]:
    """Execute the notebook at `path` in a fresh kernel; returns it with outputs and the seconds taken.
    A cell that raises stops the run with nbclient's CellExecutionError, which shows the cell and error."""
    notebook = nbformat.read(path, as_version=4)
    started = time.time()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook, time.time() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="lesson file-name prefixes, e.g. 01 or 03_rglru (default: all)")
    parser.add_argument("--write", action="store_true", help="save the outputs into the notebooks")
    args = parser.parse_args(argv)
    for path in notebooks(args.names):
        notebook, seconds = execute(path)
        print(f"{path.name}: {seconds:.0f} s", flush=True)
        if args.write:
            nbformat.write(notebook, path)


if __name__ == "__main__":
    main(sys.argv[1:])

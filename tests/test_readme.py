"""The README states facts the code can check: its preset table is the one the code produces."""

from pathlib import Path

from nanohybrid.tools.analysis import preset_table


def test_readme_preset_table_is_current():
    readme = Path(__file__).resolve().parent.parent / "README.md"
    assert preset_table() in readme.read_text(), "README preset table is stale: python -m nanohybrid.tools.analysis presets"

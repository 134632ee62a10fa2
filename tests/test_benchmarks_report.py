"""The bundle READMEs' speed tables are benchmarks/report.py's rendering of the committed benchmark JSON files."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from tiny_settings import TESTS

sys.path.insert(0, str(TESTS.parent / "benchmarks"))
import report  # noqa: E402


@pytest.mark.parametrize("readme", report.READMES, ids=lambda p: p.parts[-3])
def test_readme_speed_table_is_the_rendering_of_the_results(readme):
    assert report.table_in(readme.read_text(), readme) == report.render(), (
        f"{readme} is stale: run `python benchmarks/report.py --write`"
    )


def test_rendering_follows_the_json_files(tmp_path, monkeypatch):
    """The values, ratios, goal verdicts and commands come from the files, not from the script."""
    shutil.copytree(report.RESULTS, tmp_path, dirs_exist_ok=True)
    train = json.loads((tmp_path / report.TRAIN).read_text())
    lite = next(r for r in train["rows"] if r["config"] == "samora_lite")
    lite.update({"s/step": 5.0, "time ratio": 1.25})
    train["args"]["steps"] = 7
    (tmp_path / report.TRAIN).write_text(json.dumps(train))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    table = report.render()
    row = next(line for line in table.splitlines() if "`hl_attn_lite` / SAMed-style step, CPU batch 4" in line)
    assert "| 5.00 s vs 4.10 s | 1.25x | <= 1.3x: met |" in row and "--batch 4 --steps 7 --json" in row
    assert table != report.table_in(report.READMES[0].read_text(), report.READMES[0])
    # GPU rows are never measured from CPU files, and never marked met
    gpu = [line for line in table.splitlines()[3:-1] if "GPU" in line.split("|")[1]]
    assert len(gpu) == 3 and all(report.NO_GPU in line and "met" not in line for line in gpu)


def test_goal_verdicts_and_missing_markers(tmp_path):
    assert report.goal("<= 1.3x", 1.304) == "<= 1.3x: met"  # judged at the table's two decimals
    assert report.goal("<= 1.3x", 1.31) == "<= 1.3x: not met"
    assert report.goal(">= 0.75x", 0.65) == ">= 0.75x: not met"
    assert report.goal("< 1 s", None) == "< 1 s"
    with pytest.raises(ValueError, match="no generated speed table"):
        report.table_in("# README without the table\n", tmp_path / "README.md")

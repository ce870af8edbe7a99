"""The README's demo table is what `make demo` prints (issue 12, item 15): the test runs the demo's
own command on a fresh output folder and compares the table line by line (the 30-epoch digits run
and its dense baseline, about a minute on the 2-core machine)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_demo_table() -> list:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n( +dense +sca +ratio\n.*?)```", text, re.S)
    assert block, "README: the demo table block was not found"
    return [line.rstrip() for line in block.group(1).strip("\n").splitlines()]


def test_readme_demo_table_is_what_make_demo_prints(tmp_path):
    make = (ROOT / "Makefile").read_text()
    assert "$(VENV)/bin/sca-prune train --output-dir runs/demo\n" in make  # the command this test runs
    out = subprocess.run([sys.executable, "-m", "sca_plugin", "train", "--output-dir", str(tmp_path / "demo"),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    table = _readme_demo_table()
    printed = [line.rstrip() for line in out.stdout.splitlines()]
    start = next(i for i, line in enumerate(printed) if line.strip().startswith("dense") and "sca" in line)
    assert printed[start:start + len(table)] == table, "\n".join(printed[start:start + len(table)])

"""Copy the generated benchmark tables into the README, between markers, so the README shows
exactly what the benchmark scripts wrote (never numbers edited by hand).

    python benchmarks/readme_tables.py [--check]

A block ``<!-- table: PATH [index: 2] [columns: 1,2,5] -->`` ... ``<!-- /table -->`` in README.md
receives the markdown tables (header and rows) of PATH (relative to the repository), optionally only
the ``index``-th of them and only the listed columns (both 1-based). ``--check`` exits 1 if the README is out of date instead of writing it.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<path>\S+)(?: index: (?P<index>\d+))?(?: columns: (?P<cols>[\d,]+))? -->\n)"
                   r"(?P<body>.*?)(<!-- /table -->)", re.S)


def table_of(path: Path, cols=None, index=None) -> str:
    lines, gap = [], False
    for line in path.read_text().splitlines():  # every table of the file, a blank line between tables
        if line.startswith("|"):
            if gap and lines:
                lines.append("")
            lines.append(line)
            gap = False
        else:
            gap = True
    if not lines:
        raise SystemExit(f"readme_tables: {path} holds no markdown table")
    if index:
        tables = "\n".join(lines).split("\n\n")
        if not 1 <= int(index) <= len(tables):
            raise SystemExit(f"readme_tables: {path} holds {len(tables)} tables, not {index}")
        lines = tables[int(index) - 1].splitlines()
    if cols:
        keep = [int(c) for c in cols.split(",")]
        out = []
        for line in lines:
            if not line:
                out.append(line)
                continue
            if set(line) <= set("|-: "):  # the header separator
                out.append("|" + "---|" * len(keep))
                continue
            cells = line.strip().strip("|").split(" | ")
            out.append("| " + " | ".join(cells[c - 1].strip() for c in keep) + " |")
        lines = out
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table_of(ROOT / m.group("path"), m.group("cols"), m.group("index"))
                     + m.group(6), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("readme_tables: README.md is out of date; run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

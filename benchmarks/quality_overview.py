"""One table across the quality benchmarks: accuracy (mean ± std over seeds) of every row at every
pruning ratio, one column pair per task, from the ``summary.json`` files of ``benchmarks/quality.py``.

    python benchmarks/quality_overview.py [RESULT_DIR ...] [--out benchmarks/results/quality_overview.md]

Without arguments it reads every ``benchmarks/results/quality_*/summary.json``. The best mean per
column is in bold; a row's cost columns are left to the per-task tables (``table.md``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def load(dirs: Sequence[Path]) -> List[dict]:
    out = []
    for d in dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise SystemExit(f"quality_overview: {path} does not exist; run benchmarks/quality.py first")
        out.append(json.loads(path.read_text()))
    return out


def overview(summaries: List[dict]) -> str:
    ratios = sorted({g["pruning_ratio"] for s in summaries for g in s["groups"] if not _emergent(g)})
    rows: List[str] = []
    for s in summaries:
        for g in s["groups"]:
            if g["method"] not in rows:
                rows.append(g["method"])
    # a column per task and ratio the task was configured for (no column of dashes for ratios it never runs)
    cols = [(s, r) for s in summaries for r in ratios if r in {float(x) for x in s["config"].get("ratios") or ratios}]
    cell: Dict[tuple, Optional[tuple]] = {}
    for s in summaries:
        for g in s["groups"]:
            r = None if _emergent(g) else g["pruning_ratio"]
            if g["accuracy_mean"] is not None:
                cell[(s["config"]["name"], g["method"], r)] = (100 * g["accuracy_mean"], 100 * g["accuracy_std"],
                                                               len(g.get("collapsed_runs") or []), g["n"])
    best = {}
    for s, r in cols:
        vals = [cell[(s["config"]["name"], m, r)][0] for m in rows if (s["config"]["name"], m, r) in cell]
        best[(s["config"]["name"], r)] = max(vals) if vals else None
    head = "| row | " + " | ".join(f"{s['config']['name'].replace('quality_', '')} @{r:g}" for s, r in cols) + " |"
    lines = ["| task | setting | dense |", "|---|---|---|"]
    for s in summaries:
        c = s["config"]
        d = cell.get((c["name"], "dense", None))
        lines.append(f"| {c['name'].replace('quality_', '')} | `{c['dataset']}`, `{c['model']}` w{c.get('width', 1.0)}, "
                     f"T={c.get('time_steps', 4)}, {c.get('epochs')} epochs, train {c.get('train_limit') or 'all'}, "
                     f"seeds {c['seeds']} | {'–' if d is None else f'{d[0]:.2f} ± {d[1]:.2f} (n={d[3]})'} |")
    emergent = [g for s in summaries for g in s["groups"] if _emergent(g) and g["method"] != "dense"]
    if emergent:
        lines += ["", "Rows whose sparsity emerges (no ratio asked for): accuracy at the channel sparsity reached.", "",
                  "| task | row | accuracy (%) | channel sparsity | synapses kept |", "|---|---|---|---|---|"]
        for s in summaries:
            for g in s["groups"]:
                if g in emergent:
                    conn = g.get("connectivity")
                    lines.append(f"| {s['config']['name'].replace('quality_', '')} | {g['method']} | "
                                 f"{100 * g['accuracy_mean']:.2f} ± {100 * g['accuracy_std']:.2f} | "
                                 f"{g.get('channel_sparsity') or 0:.3f} | {'–' if conn is None else f'{conn:.3f}'} |")
    lines += ["", head, "|---|" + "---|" * len(cols)]
    for m in rows:
        if any(_emergent(g) for s in summaries for g in s["groups"] if g["method"] == m):
            continue
        vals = []
        for s, r in cols:
            v = cell.get((s["config"]["name"], m, r))
            if v is None:
                vals.append("–")
                continue
            txt = f"{v[0]:.2f} ± {v[1]:.2f}"
            txt = f"**{txt}**" if best[(s["config"]["name"], r)] == v[0] else txt
            txt += f" (n={v[3]}{f', {v[2]} collapsed' if v[2] else ''})"
            vals.append(txt)
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    machine = summaries[0]["machine"] if summaries else {}
    return ("# Quality benchmarks: overview\n\n"
            f"Command: `python benchmarks/quality_overview.py`; each task's own command, machine and cost "
            f"columns are in `benchmarks/results/<task>/table.md`. Machine of the first task: "
            f"{machine.get('cpu_model', '?')}, {machine.get('cpu_cores', '?')} cores, torch "
            f"{machine.get('torch_version', '?')}.\n\n"
            "Test accuracy (%) of the finalized (physically pruned) model, mean ± std over the seeds finished "
            "(n; collapsed runs counted, included in the mean); bold = best mean of the column.\n\n" + "\n".join(lines) + "\n")


def _emergent(group: dict) -> bool:
    return group["method"] == "dense" or bool(group.get("emergent_sparsity"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="result folders holding summary.json")
    ap.add_argument("--out", default=str(RESULTS / "quality_overview.md"))
    args = ap.parse_args(argv)
    dirs = [Path(d) for d in args.dirs] or sorted(p.parent for p in RESULTS.glob("quality_*/summary.json"))
    text = overview(load(dirs))
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

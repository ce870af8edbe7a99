"""One table across the quality benchmarks: accuracy (mean ± std over seeds) of every row at every
pruning ratio, one column pair per task, from the ``summary.json`` files of ``benchmarks/quality.py``.

    python benchmarks/quality_overview.py [RESULT_DIR ...] [--out benchmarks/results/quality_overview.md]
                                          [--ablation-out benchmarks/results/quality_ablation.md]

Without arguments it reads every ``benchmarks/results/quality_*/summary.json``. The best mean per
column is in bold; a row's cost columns are left to the per-task tables (``table.md``).

The second file is the paper's ablation across tasks: prune+regrow (``sca``), prune-only
(``sca-prune-only``) and the random mask at initialisation (``random-init``) side by side with the
paired differences between them and to the best built-in, and whether the paper's order
(prune+regrow > prune-only > random-init) holds on the means.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import SAME_CHANNELS, paired_text  # noqa: E402

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


#: the paper's ablation, in the order the paper reports (prune+regrow > prune-only > random-init)
ABLATION = ("sca", "sca-prune-only", "random-init")


def _paired(group: dict, other: str, sign: float = 1.0) -> str:
    """``group``'s paired difference to row ``other`` (``sign=-1``: ``other`` minus ``group``)."""
    return paired_text((group.get("paired") or {}).get(other), sign, with_n=True)


def _row_text(groups: dict, paired: Optional[dict], ratio: float) -> str:
    """``row mean`` of the reference row a paired difference was taken to."""
    row = (paired or {}).get("row")
    group = groups.get((row, ratio)) if row else None
    return "–" if group is None else f"{row} {100 * group['accuracy_mean']:.2f}"


def ablation(summaries: List[dict]) -> str:
    """The paper's ablation at every task and ratio that has all three of its rows."""
    lines = ["| task | ratio | sca | sca-prune-only | random-init | sca − prune-only | sca − random-init "
             "| prune-only − random-init | best built-in | sca − best built-in | paper's order "
             "| best built-in, same channels | sca − it |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        groups = {(g["method"], g["pruning_ratio"]): g for g in s["groups"] if not _emergent(g)}
        for r in sorted({r for _, r in groups}):
            rows = [groups.get((m, r)) for m in ABLATION]
            if any(g is None or g["accuracy_mean"] is None for g in rows):
                continue
            sca, prune_only, random_init = rows
            acc = [100 * g["accuracy_mean"] for g in rows]
            best_txt = _row_text(groups, (sca.get("paired") or {}).get("best built-in"), r)
            same_txt = _row_text(groups, (sca.get("paired") or {}).get(SAME_CHANNELS), r)
            cells = [f"{a:.2f} ± {100 * g['accuracy_std']:.2f} (n={g['n']})" for a, g in zip(acc, rows)]
            order = "yes" if acc[0] > acc[1] > acc[2] else "no"
            lines.append(f"| {s['config']['name'].replace('quality_', '')} | {r:g} | " + " | ".join(cells) + " | "
                         f"{_paired(prune_only, 'sca', -1.0)} | {_paired(sca, 'random-init')} | "
                         f"{_paired(prune_only, 'random-init')} | {best_txt} | "
                         f"{_paired(sca, 'best built-in')} | {order} | {same_txt} | {_paired(sca, SAME_CHANNELS)} |")
    return ("# Quality benchmarks: the paper's ablation\n\n"
            "Command: `python benchmarks/quality_overview.py`; from each task's `summary.json` "
            "(`benchmarks/results/<task>/table.md` has the machine and every row).\n\n"
            "Test accuracy (%) of the finalized model, mean ± std over seeds (n); paired differences in points, "
            "mean and 95% t-interval over the shared seeds (n); `best built-in`: the Torch-Pruning or NNI row "
            "with the highest mean at that ratio; `best built-in, same channels`: the same among the rows that keep "
            "SCA's channel count in every layer (NNI's own rounding keeps one channel more in some layers; the "
            "`nni-*-nearest` rows keep SCA's); paper's order: prune+regrow > prune-only > random-init on "
            "the means.\n\n" + "\n".join(lines) + "\n")


def _emergent(group: dict) -> bool:
    return group["method"] == "dense" or bool(group.get("emergent_sparsity"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", help="result folders holding summary.json")
    ap.add_argument("--out", default=str(RESULTS / "quality_overview.md"))
    ap.add_argument("--ablation-out", default=None,
                    help="the ablation table (default: quality_ablation.md beside --out)")
    args = ap.parse_args(argv)
    dirs = [Path(d) for d in args.dirs] or sorted(p.parent for p in RESULTS.glob("quality_*/summary.json"))
    summaries = load(dirs)
    text = overview(summaries)
    Path(args.out).write_text(text)
    Path(args.ablation_out or Path(args.out).with_name("quality_ablation.md")).write_text(ablation(summaries))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

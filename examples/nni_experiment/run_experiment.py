"""A local, offline NNI experiment comparing SCA with NNI's L1NormPruner on digits.

Sweeps ``sparse_ratio`` (and ``regrow_ratio`` for SCA) with NNI's grid-search tuner, waits for the
trials, prints a comparison table from their final results and stops NNI (no process is left
behind). NNI's working files go under ``--output-dir``.

    python examples/nni_experiment/run_experiment.py --output-dir runs/nni --epochs 4
"""
import argparse
import sys
from pathlib import Path

from nni.experiment import Experiment

HERE = Path(__file__).resolve().parent


def variants(pruners, regrow_ratios):
    """``"sca:0.1"``-style grid entries: regrow ratios only where they mean something (SCA)."""
    out = []
    for p in pruners:
        out.extend(f"{p}:{q:g}" for q in regrow_ratios) if p == "sca" else out.append(p)
    return out


def search_space(ratios, regrow_ratios, pruners, epochs):
    return {"variant": {"_type": "choice", "_value": variants(pruners, regrow_ratios)},
            "sparse_ratio": {"_type": "choice", "_value": ratios},
            "epochs": {"_type": "choice", "_value": [epochs]}}


def parse(parameter: dict) -> dict:
    pruner, _, regrow = parameter["variant"].partition(":")
    return {**parameter, "pruner": pruner, "regrow_ratio": float(regrow) if regrow else 0.0}


def table(rows) -> str:
    lines = [f"{'pruner':<8} {'sparse_ratio':>12} {'regrow_ratio':>12} {'accuracy':>9} {'parameters':>11}",
             "-" * 56]
    for p, r in sorted(rows, key=lambda pr: (pr[0]["pruner"], pr[0]["sparse_ratio"], pr[0]["regrow_ratio"])):
        regrow = f"{p['regrow_ratio']:.2f}" if p["pruner"] == "sca" else "-"
        lines.append(f"{p['pruner']:<8} {p['sparse_ratio']:>12.2f} {regrow:>12} {100 * r['default']:>8.2f}% "
                     f"{int(r['parameters']):>11,}")
    return "\n".join(lines)


def run(output_dir, ratios=(0.5, 0.8), regrow_ratios=(0.0, 0.1), pruners=("sca", "l1norm"), epochs=4,
        max_trials=None, port=8745) -> str:
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = search_space(list(ratios), list(regrow_ratios), list(pruners), epochs)
    n_grid = len(ratios) * len(variants(pruners, regrow_ratios))
    exp = Experiment("local")
    exp.config.experiment_name = "sca-vs-l1norm-digits"
    exp.config.trial_command = f"{sys.executable} trial.py"
    exp.config.trial_code_directory = str(HERE)
    exp.config.experiment_working_directory = str(out)
    exp.config.search_space = space
    exp.config.tuner.name = "GridSearch"
    exp.config.max_trial_number = min(max_trials or n_grid, n_grid)  # NNI waits forever past the grid
    exp.config.trial_concurrency = 1
    try:
        if not exp.run(port, wait_completion=True):
            raise RuntimeError(f"the NNI experiment did not finish; see the logs under {out}")
        rows = [(parse(d.parameter), d.value) for d in exp.export_data()]
    finally:
        exp.stop()
    if not rows:
        raise RuntimeError(f"no trial reported a result; see the trial logs under {out}")
    return table(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/nni_experiment")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--regrow-ratios", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--pruners", nargs="+", default=["sca", "l1norm"])
    parser.add_argument("--max-trials", type=int, default=None)
    parser.add_argument("--port", type=int, default=8745)
    args = parser.parse_args(argv)
    print(run(args.output_dir, args.ratios, args.regrow_ratios, args.pruners, args.epochs, args.max_trials, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

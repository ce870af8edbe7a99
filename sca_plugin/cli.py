"""``sca-prune``: train / eval / report / export from the command line (also ``python -m sca_plugin``).

Every train flag is a field of :class:`sca_plugin.config.TrainConfig`; a ``--config`` YAML or JSON
file uses the same keys, and flags given on the command line override it. User-fixable problems
print one line ``sca-prune: error: ...`` and exit with status 2, having written nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Optional, Sequence

from .config import ConfigError, TrainConfig, load_config_file

__all__ = ["main", "build_parser"]

PROG = "sca-prune"


def _field_type(f: dataclasses.Field):
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file whose keys are these flags (flags given here win)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f)
        default = f.default
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Structured channel pruning (SCA) for spiking neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (and prune) a spiking network; digits + SCA at 50%% by default")
    _add_train_flags(train)
    ev = sub.add_parser("eval", help="test accuracy and spiking metrics of a finished run's model")
    ev.add_argument("run_dir")
    ev.add_argument("--data-root", default=None, help="dataset folder, if the run used one elsewhere")
    ev.add_argument("--device", default="cpu")
    rep = sub.add_parser("report", help="figures (PNG) and a markdown table from one or more runs")
    rep.add_argument("run_dirs", nargs="+")
    rep.add_argument("--out", default=None, help="output folder (default: <first run>/report)")
    exp = sub.add_parser("export", help="export a finished run's pruned model")
    exp.add_argument("run_dir")
    exp.add_argument("--format", choices=("torch", "torchscript", "export", "nir"), default="torch",
                     help="torch: pickled module (needs sca_plugin to load); torchscript / export: loads with plain "
                          "torch; nir: NIR graph (needs the nir extra)")
    exp.add_argument("--out", required=True, help="file to write")
    return parser


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    values.update(given)
    return TrainConfig.from_dict(values)


def _cmd_train(args) -> int:
    from .runner import run_training

    cfg = _train_config(args)
    run_training(cfg)
    return 0


def _cmd_eval(args) -> int:
    from .datasets import load_dataset
    from .runner import METRICS, RunError, _evaluate, _time_major, load_finalized_model

    run = Path(args.run_dir)
    metrics_path = run / METRICS
    if not metrics_path.is_file():
        raise RunError(f"{metrics_path} does not exist; is {run} a finished `sca-prune train` run?")
    cfg = TrainConfig.from_dict(json.loads(metrics_path.read_text())["config"])
    import torch

    splits = load_dataset(cfg.dataset, data_root=args.data_root or cfg.data_root, time_steps=cfg.time_steps,
                          seed=cfg.seed, train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    model = load_finalized_model(run, args.device)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=256)
    acc = _evaluate(model, loader, splits.kind, torch.device(args.device))
    from .metrics import spiking_metrics

    spiking = spiking_metrics(model, (_time_major(x.to(args.device), splits.kind) for x, _ in loader), max_batches=4)
    print(json.dumps({"run": str(run), "test_accuracy": acc,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "synops": spiking.get("synops"), "activation_sparsity": spiking.get("activation_sparsity")},
                     indent=2))
    return 0


def _cmd_report(args) -> int:
    from .plots import make_report

    out = args.out or str(Path(args.run_dirs[0]) / "report")
    paths = make_report(args.run_dirs, out)
    for p in paths:
        print(p)
    return 0


def _cmd_export(args) -> int:
    from .export import export_run
    from .runner import METRICS

    metrics_path = Path(args.run_dir) / METRICS
    shape = json.loads(metrics_path.read_text()).get("input_shape") if metrics_path.is_file() else None
    print(export_run(args.run_dir, args.out, args.format, input_shape=shape))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .datasets import DataError
    from .runner import RunError

    try:
        return {"train": _cmd_train, "eval": _cmd_eval, "report": _cmd_report, "export": _cmd_export}[args.command](args)
    except (ConfigError, RunError, DataError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

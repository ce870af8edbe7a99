"""``sca-prune``: train / eval / report / export from the command line (also ``python -m sca_plugin``).

Every train flag is a field of :class:`sca_plugin.config.TrainConfig`; a ``--config`` YAML or JSON
file uses the same keys, and flags given on the command line override it. ``train --resume`` starts
from the settings the run in ``--output-dir`` was made with: settings given again (flags or config
file) must agree with them, else they are refused by name. User-fixable problems print one line
``sca-prune: error: ...`` and exit with status 2, having written nothing.

As with ``python -m sca_plugin``, the current folder is importable: ``--model my_models:csnn``
finds ``./my_models.py`` (and ``eval`` / ``export`` can unpickle a model defined there).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Optional, Sequence

from .config import RUN_FREE_FIELDS, SETTING_CHOICES, ConfigError, TrainConfig, load_config_file

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
            choices = SETTING_CHOICES.get(f.name)  # shown as argparse shows choices; checked by TrainConfig
            metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=metavar)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Structured channel pruning (SCA) for spiking neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (and prune) a spiking network; digits + SCA at 50%% by default")
    _add_train_flags(train)
    ev = sub.add_parser("eval", help="test accuracy and spiking metrics of a finished run's model")
    ev.add_argument("run_dir")
    ev.add_argument("--data-root", default=None, help="dataset folder, if the run used one elsewhere")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--optimize", action="store_true",
                    help="also evaluate through sca_plugin.optimize_for_inference (BatchNorm folded, compiled) and "
                         "report its accuracy, the predictions that differ and its time")
    rep = sub.add_parser("report", help="figures (PNG) and a markdown table from one or more runs; runs that "
                                        "differ in a setting other than the seed are separate, labelled rows")
    rep.add_argument("run_dirs", nargs="+", help="run folders, or folders holding run folders")
    rep.add_argument("--out", default=None, help="output folder (default: <first folder given>/report)")
    exp = sub.add_parser("export", help="export a finished run's pruned model")
    exp.add_argument("run_dir")
    exp.add_argument("--format", choices=("torch", "torchscript", "export", "nir"), default="torch",
                     help="torch: pickled module (needs sca_plugin to load); torchscript / export: loads with plain "
                          "torch; nir: NIR graph (needs the nir extra)")
    exp.add_argument("--out", required=True, help="file to write")
    exp.add_argument("--optimize", action="store_true",
                     help="export the inference copy of sca_plugin.optimize_for_inference (BatchNorm folded, hooks and "
                          "training-only state dropped; compile again after loading)")
    return parser


def _given_settings(args: argparse.Namespace) -> tuple:
    """``(values, sources)``: the train settings given (config file, then flags, which win) and
    where each came from (``'--flag'`` or ``'config file PATH'``), for error messages."""
    values: dict = {}
    sources: dict = {}
    if getattr(args, "config", None):
        for key, value in load_config_file(args.config).items():
            key = key.replace("-", "_") if isinstance(key, str) else key
            values[key] = value
            sources[key] = f"config file {args.config}"
    for key, value in vars(args).items():
        if key not in ("command", "config"):
            values[key] = value
            sources[key] = "--" + key.replace("_", "-")
    return values, sources


def _config_from(values: dict, sources: dict) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as e:
        source = sources.get(e.key, "")
        if source.startswith("config file"):
            raise ConfigError(f"{source}: {e}", key=e.key) from e
        raise


def _show(key: str, value) -> str:
    if isinstance(value, bool):
        return ("--" if value else "--no-") + key.replace("_", "-")
    return f"--{key.replace('_', '-')} {value}"


def _resume_settings(values: dict, sources: dict) -> dict:
    """``--resume``: the settings the run in the output folder was made with, updated by those
    given again: a setting that changes what the run computes must agree with the stored one (an
    explicit value equal to a default's effective value counts as agreeing); ``RUN_FREE_FIELDS``
    (device, progress, ...) may change. ConfigError naming every disagreeing setting."""
    from .checkpoints import load_run_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(map(str, set(values) - names))
    if unknown:
        TrainConfig.from_dict(values)  # the error for unknown keys, as without --resume
    out = values.get("output_dir")
    if out is None:  # the default folder follows from the settings that name it
        out = _config_from({k: v for k, v in values.items()
                            if k in ("dataset", "model", "method", "pruning_ratio", "seed")}, sources).default_output_dir()
    stored = {k: v for k, v in load_run_config(out).items() if k in names}
    try:
        stored_cfg = TrainConfig.from_dict({k: v for k, v in stored.items() if k not in ("resume", "output_dir")})
    except ConfigError as e:
        raise ConfigError(f"--resume: the settings stored in {out} are not valid in this version ({e}); "
                          "resume with the version that made the run") from e
    stored = stored_cfg.to_dict()
    disagree = []
    for key, value in values.items():
        if key in RUN_FREE_FIELDS or key not in names or stored.get(key) == value:
            continue
        try:
            given_cfg = _config_from({**stored, key: value}, sources)
        except ConfigError as e:
            if e.key == key:  # this value itself is wrong (its type): say so, not that it disagrees
                raise
            given_cfg = None
        prop = f"effective_{key}"
        if given_cfg is not None and hasattr(TrainConfig, prop) and getattr(given_cfg, prop) == getattr(stored_cfg, prop):
            continue  # e.g. --regrow-ratio 0.1 on an sca run made with the default (0.1)
        where = sources.get(key, "")
        shown = f"{key}: {value!r} in {where}" if where.startswith("config file") else _show(key, value)
        has = stored.get(key)
        if has is None and hasattr(TrainConfig, prop):
            disagree.append(f"{shown} (the run has {getattr(stored_cfg, prop)!r}, the default)")
        else:
            disagree.append(f"{shown} (the run has {has!r})")
    if disagree:
        raise ConfigError(f"--resume: {out} was made with other settings: {'; '.join(disagree)}; drop "
                          f"{'it' if len(disagree) == 1 else 'them'} (--resume reuses the run's settings) or choose "
                          "another --output-dir")
    merged = {k: v for k, v in stored.items() if k not in ("resume", "output_dir")}
    merged.update({k: v for k, v in values.items() if k in RUN_FREE_FIELDS})
    merged.update(resume=True, output_dir=str(out))
    return merged


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values, sources = _given_settings(args)
    if values.get("resume"):
        values = _resume_settings(values, sources)
    return _config_from(values, sources)


def _cmd_train(args) -> int:
    from .runner import run_training

    cfg = _train_config(args)
    run_training(cfg)
    return 0


def _cmd_eval(args) -> int:
    from .datasets import load_dataset
    from .checkpoints import METRICS, RunError, load_finalized_model, read_metrics
    from .training import evaluate, time_major

    run = Path(args.run_dir)
    metrics_path = run / METRICS
    if not metrics_path.is_file():
        raise RunError(f"{metrics_path} does not exist; is {run} a finished `sca-prune train` run?")
    cfg = TrainConfig.from_dict(read_metrics(run)["config"])
    import torch

    splits = load_dataset(cfg.dataset, data_root=args.data_root or cfg.data_root, time_steps=cfg.time_steps,
                          seed=cfg.seed, train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    model = load_finalized_model(run, args.device)
    loader = torch.utils.data.DataLoader(splits.test, batch_size=256)
    acc = evaluate(model, loader, splits.kind, torch.device(args.device))
    from .metrics import spiking_metrics

    spiking = spiking_metrics(model, (time_major(x.to(args.device), splits.kind) for x, _ in loader))
    result = {"run": str(run), "test_accuracy": acc, "parameters": sum(p.numel() for p in model.parameters()),
              "synops": spiking.get("synops"), "activation_sparsity": spiking.get("activation_sparsity")}
    if args.optimize:
        result["optimized"] = _eval_optimized(model, loader, splits.kind, args.device)
    print(json.dumps(result, indent=2))
    return 0


def _eval_optimized(model, loader, kind: str, device: str) -> dict:
    """Accuracy through :func:`sca_plugin.optimize_for_inference` beside the eager model's: the test
    predictions that differ, the outputs' largest difference, and the seconds of one pass over the
    test set of each (the second pass: the optimized model compiles once per batch shape first)."""
    import time

    import torch
    from spikingjelly.activation_based import functional

    from .inference import optimize_for_inference
    from .training import time_major

    batches = [(time_major(x.to(device), kind), y.to(device)) for x, y in loader]
    t0 = time.perf_counter()
    fast = optimize_for_inference(model, batches[0][0])
    compile_s = time.perf_counter() - t0
    timings, outs = {}, {}
    for name, net in (("eager", model), ("optimized", fast)):
        net.eval()
        for _ in range(2):
            t0, outs[name] = time.perf_counter(), []
            for x, _ in batches:
                with torch.no_grad():
                    outs[name].append(net(x))
                functional.reset_net(net)
            timings[name] = time.perf_counter() - t0
    eager, opt = torch.cat(outs["eager"]), torch.cat(outs["optimized"])
    labels = torch.cat([y for _, y in batches])
    return {"test_accuracy": int((opt.argmax(-1) == labels).sum()) / max(len(labels), 1),
            "predictions_differing": int((opt.argmax(-1) != eager.argmax(-1)).sum()),
            "output_max_abs_diff": float((opt - eager).abs().max()), "folded_batchnorms": len(fast.report["folded"]),
            "spike_differences_first_batch": sum(fast.report["check"]["spike_differences"].values()),
            "prepare_and_compile_s": round(compile_s, 2), "eager_s": round(timings["eager"], 3),
            "optimized_s": round(timings["optimized"], 3)}


def _cmd_report(args) -> int:
    from .plots import report

    for p in report(args.run_dirs, args.out):
        print(p)
    return 0


def _cmd_export(args) -> int:
    from .checkpoints import METRICS, read_metrics
    from .export import export_run

    metrics_path = Path(args.run_dir) / METRICS
    shape = read_metrics(Path(args.run_dir)).get("input_shape") if metrics_path.is_file() else None
    print(export_run(args.run_dir, args.out, args.format, input_shape=shape, optimize=args.optimize))
    return 0


def _put_cwd_on_path() -> None:
    """Make the current folder importable, as ``python -m sca_plugin`` does (the ``sca-prune``
    script has its own folder on ``sys.path`` instead): ``--model my_models:csnn`` then works from
    the folder holding ``my_models.py`` with either command, and gives the same module. Not under
    ``python -P`` / ``PYTHONSAFEPATH``, where ``python -m`` does not either."""
    if getattr(sys.flags, "safe_path", False):
        return
    cwd = os.getcwd()
    if cwd not in {os.path.abspath(p) for p in sys.path}:
        sys.path.insert(0, cwd)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``sca-prune`` with ``argv`` (default ``sys.argv[1:]``); the exit status (2: a one-line error)."""
    _put_cwd_on_path()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .datasets import DataError
    from .checkpoints import RunError

    try:
        return {"train": _cmd_train, "eval": _cmd_eval, "report": _cmd_report, "export": _cmd_export}[args.command](args)
    except (ConfigError, RunError, DataError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""What makes a training step cheaper on a small CPU: torch.compile, thread count, several runs at
once, and the data pipeline (issue 11: affording long quality sweeps on 2 cores).

    python benchmarks/training_speed.py [--quick] [--out benchmarks/results]

One process, variants interleaved step by step (the machine is shared and noisy: ratios of medians
from one interleaved run are what we compare). Rows, per network (``digits_cnn`` width 1 on 8x8
digits, ``digits_cnn`` width 0.5 at 28x28 as for MNIST; T = 4, batch 64, SGD):

* ``eager`` / ``compiled``: the step of a dense model, eager and under ``torch.compile``;
* ``eager + SCA`` / ``compiled + SCA``: the step with an :class:`sca_plugin.SCAPruner` attached
  (statistics hooks, masks, ``regularize()``);
* ``1 thread`` / ``2 threads``: eager + SCA steps with ``torch.set_num_threads``;
* ``loader`` / ``tensor batches``: one epoch's batches from ``torch.utils.data.DataLoader`` over the
  in-memory dataset (per-item ``__getitem__`` and collation) vs indexing the stacked tensors.

Sweep throughput (two runs at once with one thread each vs one run with two threads) is measured
by ``--throughput``: it times ``benchmarks/quality.py`` style runs in subprocesses.
Writes ``training_speed.json`` and ``training_speed.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, _clean, interleave, machine_info, train_step  # noqa: E402

import torch  # noqa: E402

from sca_plugin import SCAPruner  # noqa: E402
from sca_plugin.models import digits_cnn  # noqa: E402

NETWORKS = {
    "digits_cnn w1, 8x8": dict(width=1.0, size=8),
    "digits_cnn w0.5, 28x28": dict(width=0.5, size=28),
}


def _model(width: float, size: int, seed: int = 0):
    torch.manual_seed(seed)
    return digits_cnn(T=4, width=width, input_size=(size, size))


def _stepper(model, x, y, pruner=None, compiled: bool = False) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    net = torch.compile(model, dynamic=False) if compiled else None
    return lambda: train_step(model, opt, x, y, pruner, net)


def step_costs(width: float, size: int, repeats: int, warmup: int) -> Dict[str, List[float]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, size, size, generator=g) * 2, torch.randint(0, 10, (64,), generator=g)
    steps = {}
    for compiled in (False, True):
        name = "compiled" if compiled else "eager"
        steps[name] = _stepper(_model(width, size), x, y, compiled=compiled)
        m = _model(width, size)
        pruner = SCAPruner(m, x[:2], ignored_layers=[m.classifier])
        steps[f"{name} + SCA"] = _stepper(m, x, y, pruner, compiled=compiled)
    out = interleave(steps, repeats, warmup)
    # threads: the same eager + SCA step at 1 and 2 threads, alternating
    m = _model(width, size)
    pruner = SCAPruner(m, x[:2], ignored_layers=[m.classifier])
    base = _stepper(m, x, y, pruner)
    before = torch.get_num_threads()

    def with_threads(n):
        def fn():
            torch.set_num_threads(n)
            base()
        return fn
    out.update(interleave({"1 thread": with_threads(1), "2 threads": with_threads(2)}, repeats, warmup))
    torch.set_num_threads(before)
    return out


def data_costs(repeats: int) -> Dict[str, List[float]]:
    from sca_plugin.datasets import load_dataset

    splits = load_dataset("digits", seed=0)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    xs, ys = splits.train.tensors()

    def via_loader():
        for _ in loader:
            pass

    def via_tensors():
        perm = torch.randperm(len(ys))
        for i in range(0, len(ys), 64):
            idx = perm[i:i + 64]
            xs[idx], ys[idx]
    return interleave({"loader": via_loader, "tensor batches": via_tensors}, repeats, 1)


def throughput(epochs: int) -> Dict[str, float]:
    """Wall time of two digits runs: one after the other with 2 threads each, and at once with 1 each."""
    cmd = [sys.executable, "-m", "sca_plugin", "train", "--epochs", str(epochs), "--no-dense-baseline", "--no-progress",
           "--pruning-ratio", "0.8"]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        def run(tag, threads, together):
            env = dict(**__import__("os").environ, OMP_NUM_THREADS=str(threads))
            procs, t = [], time.perf_counter()
            for seed in (0, 1):
                p = subprocess.Popen(cmd + ["--seed", str(seed), "--output-dir", f"{d}/{tag}{seed}"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if together:
                    procs.append(p)
                else:
                    p.wait()
            for p in procs:
                p.wait()
            return time.perf_counter() - t
        return {"two runs in turn, 2 threads each (s)": run("a", 2, False),
                "two runs at once, 1 thread each (s)": run("b", 1, True)}


def _median_ms(v: List[float]) -> float:
    return 1000 * statistics.median(v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/training_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run)")
    parser.add_argument("--throughput", action="store_true", help="also time two whole runs in turn vs at once")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    repeats, warmup = (3, 2) if args.quick else (30, 10)
    results = {"machine": machine_info("cpu"), "repeats": repeats, "warmup": warmup, "networks": {}}
    lines = ["# Training-step cost: torch.compile, threads, data pipeline", "",
             f"Command: `python benchmarks/training_speed.py{' --quick' if args.quick else ''}"
             f"{' --throughput' if args.throughput else ''}`  ",
             f"Machine: {results['machine']['cpu_model']}, {results['machine']['cpu_cores']} cores, torch "
             f"{results['machine']['torch_version']}, {results['machine']['date']}. Medians of {repeats} interleaved "
             f"steps after {warmup} warm-up steps (compilation happens in the warm-up); T = 4, batch 64, SGD.", "",
             "| network | eager (ms) | compiled (ms) | eager + SCA (ms) | compiled + SCA (ms) | compiled / eager | "
             "compiled + SCA / eager + SCA | 1 thread (ms) | 2 threads (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, spec in NETWORKS.items():
        t = step_costs(spec["width"], spec["size"], repeats, warmup)
        med = {k: _median_ms(v) for k, v in t.items()}
        results["networks"][name] = {"median_ms": med, "times_s": t}
        lines.append(f"| {name} | {med['eager']:.1f} | {med['compiled']:.1f} | {med['eager + SCA']:.1f} | "
                     f"{med['compiled + SCA']:.1f} | {med['compiled'] / med['eager']:.2f}x | "
                     f"{med['compiled + SCA'] / med['eager + SCA']:.2f}x | {med['1 thread']:.1f} | {med['2 threads']:.1f} |")
        print(lines[-1], flush=True)
    d = data_costs(3 if args.quick else 10)
    dm = {k: _median_ms(v) for k, v in d.items()}
    results["data"] = {"median_ms": dm, "times_s": d}
    lines += ["", f"One digits training epoch's batches (1,437 images, batch 64): DataLoader {dm['loader']:.1f} ms, "
                  f"indexing stacked tensors {dm['tensor batches']:.1f} ms."]
    if args.throughput:
        tp = throughput(2 if args.quick else 10)
        results["throughput"] = tp
        lines += ["", "Sweep throughput (two `sca-prune train --pruning-ratio 0.8` digits runs): "
                  + "; ".join(f"{k}: {v:.1f}" for k, v in tp.items()) + "."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_speed.json").write_text(json.dumps(_clean(results), indent=2) + "\n")
    (out / "training_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of SCA pruning during training, as ratios measured in one run.

* training step with SCA (membrane-statistics hooks + channel masks + ``regularize``) vs a plain
  training step on an identical copy of the same model and the same batches, interleaved step by
  step (A B A B ...) after warm-up; median, IQR and ratio of medians; more interleaved variants in
  the same rounds split the cost: SCA with the statistics read from the stored membrane trace
  (``recorder.fused = False``: ``store_v_seq`` per forward, the way before issue 14) instead of
  fused into a step-by-step replay, plain training with the neurons storing their trace
  (``store_v_seq=True``), plain training with only the fused SCA statistics hooks attached (no
  masks, no regrowth hooks, no ``regularize``), and plain and SCA training with the model's
  forward under ``torch.compile`` (``sca-prune train --compile``; compiled in the warm-up);
* ``pruner.update_masks()`` as a fraction of an epoch-equivalent (steps_per_epoch x median SCA
  step time);
* ``pruner.finalize()`` wall time (with and without its float64 verification) for VGG16;
* peak resident memory (VmHWM from /proc/self/status) of a fresh subprocess per variant (plain / SCA /
  SCA with the trace statistics).

Step times are wall-clock (``time.perf_counter``) by default; ``--cpu-time`` times each call by the
CPU time of the calling thread (``time.thread_time``) instead, which the other processes of a loaded
machine inflate much less (with one torch thread the step runs on that thread; use it with
``OMP_NUM_THREADS=1``). The load average at the start and the end of the run is recorded.

``OMP_NUM_THREADS=1 python benchmarks/overhead.py [--quick|--smoke] [--cpu-time] [--out benchmarks/results]``
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (also puts the repository root on sys.path)

import torch  # noqa: E402

from common import train_step  # noqa: E402
from sca_plugin import SCAImportance, SCAPruner  # noqa: E402
from sca_plugin.models import digits_cnn, vgg16  # noqa: E402

# epoch-equivalents: scikit-learn digits train split (1437 images) in batches of 64 -> 23 steps;
# CIFAR-10 (50,000 images) in the batches of 16 timed here -> 3125 steps
STEPS_PER_EPOCH = {"digits_cnn": (23, "digits train split, 1437 images / batch 64"),
                   "vgg16": (3125, "CIFAR-10 train set, 50,000 images / batch 16")}

PROFILES = {
    #           train-step reps      finalize widths / reps   mask-update reps  memory (models, steps, repeats)
    "default": dict(reps={"digits_cnn": 60, "vgg16": 25}, vgg_width=0.25, fin_widths=(0.5, 1.0), fin_reps=3,
                    upd_reps=10, mem_models=("digits_cnn", "vgg16"), mem_steps=5, mem_repeats=2, compiled=True),
    "quick": dict(reps={"digits_cnn": 15, "vgg16": 6}, vgg_width=0.25, fin_widths=(0.5,), fin_reps=1,
                  upd_reps=3, mem_models=("digits_cnn", "vgg16"), mem_steps=2, mem_repeats=1, compiled=True),
    "smoke": dict(reps={"digits_cnn": 4, "vgg16": 2}, vgg_width=0.125, fin_widths=(0.125,), fin_reps=1,
                  upd_reps=2, mem_models=("digits_cnn",), mem_steps=1, mem_repeats=1, compiled=False),
}


def build(name: str, width: float):
    torch.manual_seed(0)
    if name == "digits_cnn":
        model = digits_cnn(T=4)
        x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    else:
        model = vgg16(width=width, T=4)
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    return model, x, y


def wall_timed(fn) -> float:
    return common.timed(fn)


def thread_cpu_timed(fn) -> float:
    """CPU seconds of this thread during ``fn()`` (one torch thread: the whole step's compute)."""
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def interleave(fns, reps: int, warmup: int, timer=wall_timed) -> dict:
    """:func:`common.interleave` (A B A B ..., the order alternating between rounds) with ``timer``."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(timer(fns[n]))
    return times


def make_pruner(model, x, **kw):
    return SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.1, ignored_layers=[model.classifier], **kw)


def _copies(plain, x, y, compiled: bool):
    """The interleaved variants: ``{key: (model, net or None, optimizer, pruner or None)}``."""
    out = {}

    def add(key, model, pruner=None, compiled=False):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        if pruner is not None:  # masks active from here on (the steady state of SCA training)
            train_step(model, opt, x, y, pruner)
            pruner.update_masks()
        out[key] = (model, torch.compile(model, dynamic=False) if compiled else None, opt, pruner)

    add("plain", plain)
    add("sca", (m := copy.deepcopy(plain)), make_pruner(m, x))
    trace = copy.deepcopy(plain)
    trace_pruner = make_pruner(trace, x)
    trace_pruner.importance.recorder.fused = False  # the statistics from the stored trace
    add("sca_trace", trace, trace_pruner)
    vseq = copy.deepcopy(plain)
    for mod in vseq.modules():
        if hasattr(mod, "store_v_seq"):
            mod.store_v_seq = True
    add("v_seq", vseq)
    stats = copy.deepcopy(plain)
    SCAImportance().attach(stats)
    add("stats", stats)
    if compiled:  # compiling takes minutes on a small CPU: not in the smoke profile
        add("plain_compiled", copy.deepcopy(plain), compiled=True)
        add("sca_compiled", (m := copy.deepcopy(plain)), make_pruner(m, x), compiled=True)
    return out


def bench_train_step(name: str, width: float, reps: int, upd_reps: int, compiled: bool = True,
                     timer=wall_timed) -> dict:
    plain, x, y = build(name, width)
    variants = _copies(plain, x, y, compiled)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(x.shape, generator=g), torch.randint(0, 10, y.shape, generator=g)) for _ in range(4)]
    it = dict.fromkeys(variants, 0)

    def stepper(key):
        model, net, opt, pruner = variants[key]

        def step():
            bx, by = batches[it[key] % len(batches)]; it[key] += 1
            train_step(model, opt, bx, by, pruner, net)
        return step

    times = interleave({k: stepper(k) for k in variants}, reps=reps, warmup=2, timer=timer)
    s = {k: common.summarize(v) for k, v in times.items()}
    pruner = variants["sca"][3]

    # mask update: after one SCA step (statistics and BN gradients exist), time update_masks()
    upd = []
    step_sca = stepper("sca")
    for _ in range(upd_reps):
        step_sca()
        upd.append(timer(pruner.update_masks))
    upd_s = common.summarize(upd)
    spe, spe_note = STEPS_PER_EPOCH[name]
    epoch_s = spe * s["sca"]["median"]
    r = lambda a, b: common.ratio(s[a]["median"], s[b]["median"])  # noqa: E731
    out = {
        "model": name, "width": width if name == "vgg16" else 1.0, "T": 4, "batch_shape": list(x.shape),
        "step_mode": "m", "pruned_fraction": pruner.sparsity(),
        "plain_step_s": s["plain"], "sca_step_s": s["sca"],
        "step_time_ratio": r("sca", "plain"),
        "sca_trace_step_s": s["sca_trace"], "sca_trace_ratio": r("sca_trace", "plain"),
        "store_v_seq_step_s": s["v_seq"], "stats_only_step_s": s["stats"],
        "store_v_seq_ratio": r("v_seq", "plain"),
        "stats_only_ratio": r("stats", "plain"),
        "update_masks_s": upd_s,
        "steps_per_epoch": spe, "steps_per_epoch_assumption": spe_note,
        "epoch_equivalent_s": epoch_s,
        "update_masks_fraction_of_epoch": common.ratio(upd_s["median"], epoch_s),
    }
    if compiled:
        out.update({"plain_compiled_step_s": s["plain_compiled"], "sca_compiled_step_s": s["sca_compiled"],
                    "compiled_step_time_ratio": r("sca_compiled", "plain_compiled"),
                    "compiled_vs_eager_plain": r("plain_compiled", "plain")})
    return out


def bench_finalize(width: float, reps: int) -> dict:
    out = {"model": "vgg16", "width": width, "T": 4, "input": "32x32",
           "example_inputs_shape": [2, 3, 32, 32]}
    for label, atol in (("verified", 1e-5), ("unverified", None)):
        ts = []
        for _ in range(reps):
            model, x, y = build("vgg16", width)
            pruner = make_pruner(model, x, verify_atol=atol)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            model.train()
            train_step(model, opt, x, y, pruner)
            pruner.update_masks()
            ts.append(common.timed(pruner.finalize))
        out[f"finalize_{label}_s"] = common.summarize(ts)
    return out


# --------------------------------------------------------------------------- memory
def memory_child(name: str, width: float, variant: str, steps: int) -> dict:
    """Runs in a fresh interpreter: build, note VmHWM/VmRSS, train ``steps`` steps, note it again."""
    model, x, y = build(name, width)
    before = _status_kib("VmHWM")
    rss_before = _status_kib("VmRSS")
    pruner = make_pruner(model, x) if variant.startswith("sca") else None
    if variant == "sca_trace":
        pruner.importance.recorder.fused = False  # the statistics from the stored trace (before issue 14)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for i in range(steps + 1):
        train_step(model, opt, x, y, pruner)
        if pruner is not None and i == 0:
            pruner.update_masks()
    after = _status_kib("VmHWM")
    return {"maxrss_before_training_kib": before, "maxrss_kib": after,  # Linux: KiB
            "rss_before_training_kib": rss_before, "rss_after_training_kib": _status_kib("VmRSS"),
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _status_kib(key: str) -> int:
    """VmHWM (peak RSS of this process image) or VmRSS from /proc/self/status, KiB.

    Not ``getrusage().ru_maxrss``: on Linux a child started by fork+exec inherits the parent's
    high-water mark in ru_maxrss, so it would report the benchmark parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def bench_memory(name: str, width: float, steps: int, repeats: int) -> dict:
    runs = {"plain": [], "sca": [], "sca_trace": []}
    for r in range(repeats):
        for variant in (("plain", "sca", "sca_trace") if r % 2 == 0 else ("sca_trace", "sca", "plain")):
            cmd = [sys.executable, __file__, "--_memory-child", name, str(width), variant, str(steps)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(res.stdout.strip().splitlines()[-1]))
    med = {v: statistics.median(r["maxrss_kib"] for r in runs[v]) for v in runs}
    base = {v: statistics.median(r["maxrss_before_training_kib"] for r in runs[v]) for v in runs}
    return {
        "model": name, "width": width if name == "vgg16" else 1.0, "steps": steps + 1, "repeats": repeats,
        "method": "VmHWM (peak RSS) of a fresh subprocess per variant, KiB, median over repeats; ru_maxrss not used because a fork+exec child inherits the parent's high-water mark",
        "plain_peak_rss_mib": med["plain"] / 1024, "sca_peak_rss_mib": med["sca"] / 1024,
        "plain_rss_before_training_mib": base["plain"] / 1024, "sca_rss_before_training_mib": base["sca"] / 1024,
        "peak_rss_ratio": common.ratio(med["sca"], med["plain"]),
        "sca_trace_peak_rss_mib": med["sca_trace"] / 1024,
        "trace_peak_rss_ratio": common.ratio(med["sca_trace"], med["plain"]),
        "training_rss_increase_plain_mib": (med["plain"] - base["plain"]) / 1024,
        "training_rss_increase_sca_mib": (med["sca"] - base["sca"]) / 1024,
        "plain_rss_growth_mib": statistics.median(r["rss_after_training_kib"] - r["rss_before_training_kib"]
                                                  for r in runs["plain"]) / 1024,
        "sca_rss_growth_mib": statistics.median(r["rss_after_training_kib"] - r["rss_before_training_kib"]
                                                for r in runs["sca"]) / 1024,
        "runs": runs,
    }


# --------------------------------------------------------------------------- report
def _conditions_md(data: dict) -> str:
    """The timer and the machine's load average (1/5/15 min) at the start and the end of the run."""
    timer = data.get("timer", "wall")
    what = ("thread CPU time (`--cpu-time`)" if timer == "thread_cpu" else "wall-clock time")
    load = [data.get("load_average_start"), data.get("load_average_end")]
    if not all(load):
        return f"Step times: {what}.\n"
    fmt = lambda la: "/".join(f"{v:.2f}" for v in la)  # noqa: E731
    busy = max(load[0][0], load[1][0]) > 0.5 * (data["machine"].get("cpu_affinity") or data["machine"]["cpu_cores"])
    return (f"Step times: {what}. Load average (1/5/15 min) {fmt(load[0])} at the start, {fmt(load[1])} at the end"
            + (": the machine was loaded by other processes, so the numbers are noisier than on an idle one.\n"
               if busy else ".\n"))


def markdown(data: dict) -> str:
    info = data["machine"]
    s = [f"# SCA overhead ({data['profile']})\n\n", common.machine_md(info), _conditions_md(data),
         "\n## Training step (interleaved A/B)\n\n"]
    rows = []
    for r in data["train_step"]:
        p, q = r["plain_step_s"], r["sca_step_s"]
        rows.append([f"{r['model']} w{r['width']:g}", "x".join(map(str, r["batch_shape"])), p["n"],
                     f"{common.ms(p['median']):.2f} ({common.ms(p['iqr']):.2f})",
                     f"{common.ms(q['median']):.2f} ({common.ms(q['iqr']):.2f})", f"{r['step_time_ratio']:.3f}"])
    s.append(common.md_table(["model", "batch", "reps", "plain ms median (IQR)", "SCA ms median (IQR)",
                              "SCA / plain"], rows))
    s.append("\nWhere the time goes (same interleaved run; ratios to the plain eager step): full SCA with the "
             "statistics fused into a step-by-step replay (the default) and with the statistics read from the "
             "stored membrane trace (`recorder.fused = False`, the way before issue 14); plain training with the "
             "neurons storing their trace (`store_v_seq=True`); plain training with only the fused statistics hooks "
             "(no masks / regrowth hooks / regularize). The rest of full SCA is the channel masks, the regrowth "
             "hooks and `regularize`.\n\n")
    rows = [[f"{r['model']} w{r['width']:g}", f"{r['step_time_ratio']:.3f}", f"{r['sca_trace_ratio']:.3f}",
             f"{r['store_v_seq_ratio']:.3f}", f"{r['stats_only_ratio']:.3f}"]
            for r in data["train_step"] if "sca_trace_ratio" in r]
    s.append(common.md_table(["model", "SCA fused / plain", "SCA trace / plain", "store_v_seq / plain",
                              "fused statistics hooks / plain"], rows))
    compiled_rows = [r for r in data["train_step"] if "compiled_step_time_ratio" in r]
    if compiled_rows:
        s.append("\nCompiled (`torch.compile(model, dynamic=False)` of the training forward, as `sca-prune train "
                 "--compile`; same interleaved run, compiled during the warm-up):\n\n")
        rows = [[f"{r['model']} w{r['width']:g}", f"{common.ms(r['plain_compiled_step_s']['median']):.2f}",
                 f"{common.ms(r['sca_compiled_step_s']['median']):.2f}", f"{r['compiled_step_time_ratio']:.3f}",
                 f"{r['compiled_vs_eager_plain']:.3f}"] for r in compiled_rows]
        s.append(common.md_table(["model", "plain compiled ms", "SCA compiled ms", "SCA / plain (compiled)",
                                  "plain compiled / plain eager"], rows))
    s.append("\n## Mask update vs epoch-equivalent\n\n")
    rows = [[f"{r['model']} w{r['width']:g}", f"{common.ms(r['update_masks_s']['median']):.2f}",
             f"{r['steps_per_epoch']} ({r['steps_per_epoch_assumption']})", f"{r['epoch_equivalent_s']:.2f}",
             f"{r['update_masks_fraction_of_epoch']:.2e}"] for r in data["train_step"]]
    s.append(common.md_table(["model", "update_masks ms (median)", "steps/epoch assumed",
                              "epoch-equivalent s", "fraction of epoch"], rows))
    s.append("\n## finalize() (VGG16, T=4, 32x32, example inputs 2x3x32x32)\n\n")
    rows = [[f"{r['width']:g}", r["finalize_verified_s"]["n"], f"{common.ms(r['finalize_verified_s']['median']):.1f}",
             f"{common.ms(r['finalize_unverified_s']['median']):.1f}"] for r in data["finalize"]]
    s.append(common.md_table(["width", "reps", "finalize ms (with float64 check)", "finalize ms (verify_atol=None)"],
                             rows))
    s.append("\n## Peak memory (VmHWM = peak RSS of a fresh subprocess per variant)\n\n")
    rows = [[f"{r['model']} w{r['width']:g}", r["steps"], f"{r['plain_peak_rss_mib']:.1f}",
             f"{r['sca_peak_rss_mib']:.1f}", f"{r['peak_rss_ratio']:.3f}",
             f"{r.get('trace_peak_rss_ratio', float('nan')):.3f}",
             f"{r['training_rss_increase_plain_mib']:.1f}", f"{r['training_rss_increase_sca_mib']:.1f}",
             f"{r['plain_rss_growth_mib']:.1f}", f"{r['sca_rss_growth_mib']:.1f}"]
            for r in data["memory"]]
    s.append(common.md_table(["model", "train steps", "plain peak MiB", "SCA peak MiB", "SCA / plain",
                              "SCA trace / plain",
                              "plain: peak growth MiB", "SCA: peak growth MiB",
                              "plain: VmRSS growth MiB", "SCA: VmRSS growth MiB"], rows))
    s.append("\nPeak RSS includes the interpreter, torch and the libraries (~hundreds of MiB), so the ratio "
             "understates the relative cost for the tensors. (`ru_maxrss` is not used: a fork+exec child inherits "
             "the parent's high-water mark there.) Peak growth = VmHWM after training minus VmHWM "
             "after building the model (0 when training never exceeds the import-time peak); VmRSS growth = "
             "resident memory after training minus after building (pruner, hooks, statistics, optimizer state "
             "that stay allocated). torch has no CPU allocator statistics in this build, hence RSS.\n")
    return "".join(s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (< ~60 s)")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite (schema only)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the training steps and mask updates by the thread's CPU time (for a loaded machine)")
    ap.add_argument("--out", default=str(common.REPO_ROOT / "benchmarks" / "results"))
    ap.add_argument("--_memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memory_child:
        name, width, variant, steps = args._memory_child
        print(json.dumps(memory_child(name, float(width), variant, int(steps))))
        return {}
    profile = "smoke" if args.smoke else "quick" if args.quick else "default"
    cfg = PROFILES[profile]
    t0 = time.perf_counter()
    data = {"benchmark": "overhead", "profile": profile, "machine": common.machine_info("cpu"),
            "timer": "thread_cpu" if args.cpu_time else "wall", "load_average_start": list(os.getloadavg()),
            "train_step": [], "finalize": [], "memory": []}
    timer = thread_cpu_timed if args.cpu_time else wall_timed
    for name in ("digits_cnn", "vgg16"):
        r = bench_train_step(name, cfg["vgg_width"], cfg["reps"][name], cfg["upd_reps"], cfg["compiled"], timer)
        data["train_step"].append(r)
        print(f"[overhead] {name}: SCA/plain step {r['step_time_ratio']:.3f}", flush=True)
    for w in cfg["fin_widths"]:
        data["finalize"].append(bench_finalize(w, cfg["fin_reps"]))
        print(f"[overhead] finalize vgg16 w{w:g}: {data['finalize'][-1]['finalize_verified_s']['median']:.3f} s",
              flush=True)
    for name in cfg["mem_models"]:
        data["memory"].append(bench_memory(name, cfg["vgg_width"], cfg["mem_steps"], cfg["mem_repeats"]))
        print(f"[overhead] memory {name}: SCA/plain peak RSS {data['memory'][-1]['peak_rss_ratio']:.3f}", flush=True)
    data["wall_time_s"] = time.perf_counter() - t0
    data["load_average_end"] = list(os.getloadavg())
    md = markdown(data)
    paths = common.write_results(args.out, "overhead", data, md)
    print(md)
    print(f"[overhead] wrote {paths['json']} and {paths['md']} in {data['wall_time_s']:.1f} s")
    return data


if __name__ == "__main__":
    main()

"""Inference speed-up of SCA-pruned (finalized) models over the dense model.

For each sparsity the model is pruned with ``SCAPruner`` after a couple of training steps on random
data (accuracy is irrelevant here), ``update_masks()`` and ``finalize()``; the dense model is an
untouched copy of the same initial network.  Both run in eval mode under ``torch.no_grad()`` with
``functional.reset_net`` before every call; dense and pruned calls are interleaved and summarised
by medians.  Reported: latency at batch 1, throughput at a large batch, and their ratios beside
the MACs ratio from ``sca_plugin.count_macs``.

The inference-path rows (issue 14) prune every layer to 20% of its channels (``global_pruning=False``,
sparsity 0.8) and time, interleaved at batch 1 and at the large batch: the dense model as users run
it (eager), the pruned model eager, the pruned model through ``sca_plugin.optimize_for_inference``
(BatchNorm folded, compiled with freezing) and, for reference, the dense model through it. Speed-ups
are against dense eager; "/ MACs" divides a speed-up by the MAC ratio (dense / pruned), the issue's
target being at least 0.5 for the optimized pruned model at the large batch.

``python benchmarks/inference.py [--quick|--smoke] [--device cpu|cuda] [--threads N] [--out benchmarks/results]``
(one torch thread by default)
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (also puts the repository root on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from spikingjelly.activation_based import functional  # noqa: E402

from sca_plugin import SCAPruner, count_macs, count_parameters, optimize_for_inference  # noqa: E402
from sca_plugin.models import digits_cnn, vgg16  # noqa: E402

PROFILES = {
    "default": dict(models=(("vgg16", 0.5, 32), ("digits_cnn", 1.0, 8)), sparsities=(0.3, 0.5, 0.8),
                    lat_reps=30, thr_reps=10, big_batch=64,
                    path_models=(("digits_cnn", 1.0, 28), ("digits_cnn", 1.0, 8), ("vgg16", 0.5, 32)),
                    path_lat_reps=60, path_thr_reps=15),
    "quick": dict(models=(("vgg16", 0.25, 32), ("digits_cnn", 1.0, 8)), sparsities=(0.3, 0.5, 0.8),
                  lat_reps=8, thr_reps=3, big_batch=32, path_models=(("digits_cnn", 1.0, 28),),
                  path_lat_reps=10, path_thr_reps=3),
    "smoke": dict(models=(("digits_cnn", 1.0, 8),), sparsities=(0.5,), lat_reps=3, thr_reps=2, big_batch=16,
                  path_models=(("digits_cnn", 0.5, 8),), path_lat_reps=2, path_thr_reps=2, path_compile=False),
}
PATH_SPARSITY = 0.8  # every layer keeps 20% of its channels


def build(name: str, width: float, size: int = 32):
    torch.manual_seed(0)
    if name == "digits_cnn":
        return digits_cnn(T=4, width=width, input_size=size), (1, size, size)
    return vgg16(width=width, T=4), (3, size, size)


def pruned_copy(dense, shape, sparsity: float, global_pruning: bool = True):
    model = copy.deepcopy(dense)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    pruner = SCAPruner(model, x[:2], pruning_ratio=sparsity, regrow_ratio=min(0.1, sparsity) if global_pruning else 0.0,
                       ignored_layers=[model.classifier], global_pruning=global_pruning,
                       max_pruning_ratio=None if global_pruning else sparsity)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); pruner.regularize(model); opt.step(); functional.reset_net(model)
    pruner.update_masks()
    pruner.finalize()
    return model, pruner.sparsity()


def forward_fn(model, x):
    def f():
        functional.reset_net(model)
        model(x)
    return f


def bench_pair(dense, pruned, shape, device, lat_reps, thr_reps, big_batch) -> dict:
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(1, *shape, generator=g).to(device)
    xb = torch.randn(big_batch, *shape, generator=g).to(device)
    with torch.no_grad():
        lat = common.interleave({"dense": forward_fn(dense, x1), "pruned": forward_fn(pruned, x1)},
                                reps=lat_reps, warmup=3, device=device)
        thr = common.interleave({"dense": forward_fn(dense, xb), "pruned": forward_fn(pruned, xb)},
                                reps=thr_reps, warmup=1, device=device)
    ld, lp = common.summarize(lat["dense"]), common.summarize(lat["pruned"])
    td, tp_ = common.summarize(thr["dense"]), common.summarize(thr["pruned"])
    return {
        "latency_b1_dense_s": ld, "latency_b1_pruned_s": lp,
        "latency_ratio": common.ratio(lp["median"], ld["median"]),  # pruned / dense (< 1: faster)
        "big_batch": big_batch,
        "batch_time_dense_s": td, "batch_time_pruned_s": tp_,
        "throughput_dense_per_s": big_batch / td["median"], "throughput_pruned_per_s": big_batch / tp_["median"],
        "throughput_ratio": common.ratio(td["median"], tp_["median"]),  # pruned / dense (> 1: faster)
    }


def optimized_fn(fast, x):
    def f():
        fast(x)  # starts from rest and runs under no_grad by itself
    return f


def path_variants(dense, pruned, example, compile: bool = True):
    """The four ways to run the model, and the seconds optimize_for_inference took (compiling for
    ``example``'s shape; the other batch size compiles at its warm-up call). ``compile=False``: the
    smoke profile (the test suite), which skips compiling to stay fast."""
    t0 = time.perf_counter()
    fast_pruned = optimize_for_inference(pruned, example, compile=compile)
    t1 = time.perf_counter()
    fast_dense = optimize_for_inference(dense, example, compile=compile)
    t2 = time.perf_counter()
    assert not fast_pruned.report["check"]["spike_differences"], fast_pruned.report["check"]
    return {"dense": dense, "pruned": pruned, "pruned_optimized": fast_pruned, "dense_optimized": fast_dense}, \
        {"pruned_optimized": t1 - t0, "dense_optimized": t2 - t1}


def bench_path(name: str, width: float, size: int, cfg: dict, device: str) -> dict:
    """One inference-path row: every layer at 20% of its channels, four variants interleaved."""
    dense, shape = build(name, width, size)
    pruned, achieved = pruned_copy(dense, shape, PATH_SPARSITY, global_pruning=False)
    x1 = torch.randn(1, *shape)
    dense_macs, pruned_macs = count_macs(dense, x1)["total"], count_macs(pruned, x1)["total"]
    dense, pruned = dense.to(device).eval(), pruned.to(device).eval()
    g = torch.Generator().manual_seed(2)
    batches = {1: torch.randn(1, *shape, generator=g).to(device),
               cfg["big_batch"]: torch.randn(cfg["big_batch"], *shape, generator=g).to(device)}
    models, compile_s = path_variants(dense, pruned, batches[cfg["big_batch"]], cfg.get("path_compile", True))
    r = {"model": name, "width": width, "input_size": size, "T": 4, "device": device, "target_sparsity": PATH_SPARSITY,
         "global_pruning": False, "channel_sparsity": achieved,
         "channels": [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)],
         "dense_macs": dense_macs, "pruned_macs": pruned_macs, "mac_ratio": common.ratio(dense_macs, pruned_macs),
         "optimize_s": compile_s, "compiled": cfg.get("path_compile", True), "batches": {}}
    for batch, x in batches.items():
        fns = {k: optimized_fn(m, x) if k.endswith("optimized") else forward_fn(m, x) for k, m in models.items()}
        reps = cfg["path_lat_reps"] if batch == 1 else cfg["path_thr_reps"]
        with torch.no_grad():
            times = common.interleave(fns, reps=reps, warmup=2, device=device)
        summary = {k: common.summarize(v) for k, v in times.items()}
        base = summary["dense"]["median"]
        speedup = {k: common.ratio(base, v["median"]) for k, v in summary.items()}
        r["batches"][str(batch)] = {"time_s": summary, "speedup_vs_dense_eager": speedup,
                                    "speedup_over_mac_ratio": {k: v / r["mac_ratio"] for k, v in speedup.items()}}
    return r


def path_markdown(data: dict) -> str:
    rows = []
    for r in data["inference_path"]:
        for batch, b in r["batches"].items():
            t, sp, rel = b["time_s"], b["speedup_vs_dense_eager"], b["speedup_over_mac_ratio"]
            rows.append([f"{r['model']} w{r['width']:g} {r['input_size']}x{r['input_size']}", batch,
                         f"{r['mac_ratio']:.1f}x", f"{common.ms(t['dense']['median']):.2f}",
                         f"{common.ms(t['pruned']['median']):.2f} ({sp['pruned']:.2f}x, {rel['pruned']:.2f})",
                         f"{common.ms(t['pruned_optimized']['median']):.2f} ({sp['pruned_optimized']:.2f}x, "
                         f"**{rel['pruned_optimized']:.2f}**)",
                         f"{common.ms(t['dense_optimized']['median']):.2f} ({sp['dense_optimized']:.2f}x)",
                         f"{r['optimize_s']['pruned_optimized']:.0f}"])
    head = ("\n## Inference path: `optimize_for_inference` at 20% of the channels per layer\n\n"
            "Every conv layer keeps 20% of its channels (`global_pruning=False`, sparsity 0.8). Times are medians "
            "in ms; in brackets the speed-up over the dense model run eagerly (as users run it) and that speed-up "
            "divided by the MAC ratio (dense / pruned MACs); the target is >= 0.5 for the optimized pruned model "
            "at the large batch. Optimized = `sca_plugin.optimize_for_inference` (BatchNorm folded, "
            "`torch.compile` with Inductor freezing); its spikes equal the pruned model's on the example batch "
            "(checked). Compile s: `optimize_for_inference` on the large batch (the batch-1 shape compiles at its "
            "warm-up).\n\n")
    return head + common.md_table(["model", "batch", "MAC ratio", "dense eager ms", "pruned eager ms",
                                   "pruned optimized ms", "dense optimized ms", "compile s"], rows)


def markdown(data: dict) -> str:
    s = [f"# Inference speed-up of finalized SCA models ({data['profile']})\n\n", common.machine_md(data["machine"]),
         "\nT=4, multi-step, eval mode, `torch.no_grad()`, `reset_net` before each call; dense and pruned calls "
         "interleaved; medians. Latency ratio = pruned/dense latency at batch 1 (lower is better); throughput "
         "ratio = pruned/dense samples per second at the large batch (higher is better); MACs ratio = "
         "pruned/dense MACs per sample (`count_macs`).\n\n"]
    rows = []
    for r in data["results"]:
        rows.append([f"{r['model']} w{r['width']:g}", f"{r['target_sparsity']:g}", f"{r['channel_sparsity']:.2f}",
                     f"{r['params_ratio']:.3f}", f"{r['macs_ratio']:.3f}",
                     f"{common.ms(r['latency_b1_dense_s']['median']):.2f}",
                     f"{common.ms(r['latency_b1_pruned_s']['median']):.2f}", f"{r['latency_ratio']:.3f}",
                     f"{r['throughput_dense_per_s']:.0f}", f"{r['throughput_pruned_per_s']:.0f}",
                     f"{r['throughput_ratio']:.3f}", f"{1.0 / r['macs_ratio']:.2f}"])
    s.append(common.md_table(["model", "sparsity", "channels masked", "params ratio", "MACs ratio",
                              "dense ms (b=1)", "pruned ms (b=1)", "latency ratio",
                              f"dense img/s (b={data['results'][0]['big_batch'] if data['results'] else '-'})",
                              "pruned img/s", "throughput ratio", "ideal speed-up (1/MACs)"], rows))
    if data.get("inference_path"):
        s.append(path_markdown(data))
    return "".join(s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller VGG (< ~60 s)")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite (schema only)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=str(common.REPO_ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    profile = "smoke" if args.smoke else "quick" if args.quick else "default"
    cfg = PROFILES[profile]
    t0 = time.perf_counter()
    data = {"benchmark": "inference", "profile": profile, "machine": common.machine_info(args.device),
            "results": []}
    for name, width, size in cfg["models"]:
        dense, shape = build(name, width, size)
        x1 = torch.randn(1, *shape)
        dense_macs, dense_params = count_macs(dense, x1)["total"], count_parameters(dense)
        for sp in cfg["sparsities"]:
            pruned, achieved = pruned_copy(dense, shape, sp)  # pruning on CPU, then moved
            pruned_macs, pruned_params = count_macs(pruned, x1)["total"], count_parameters(pruned)
            d, p = dense.to(args.device).eval(), pruned.to(args.device).eval()
            r = {"model": name, "width": width, "T": 4, "input_shape": list(shape), "device": args.device,
                 "target_sparsity": sp, "channel_sparsity": achieved,
                 "dense_macs": dense_macs, "pruned_macs": pruned_macs,
                 "macs_ratio": common.ratio(pruned_macs, dense_macs),
                 "dense_params": dense_params, "pruned_params": pruned_params,
                 "params_ratio": common.ratio(pruned_params, dense_params)}
            r.update(bench_pair(d, p, shape, args.device, cfg["lat_reps"], cfg["thr_reps"], cfg["big_batch"]))
            dense.to("cpu")
            data["results"].append(r)
            print(f"[inference] {name} w{width:g} s={sp}: MACs x{r['macs_ratio']:.3f}, latency x{r['latency_ratio']:.3f},"
                  f" throughput x{r['throughput_ratio']:.3f}", flush=True)
    data["inference_path"] = []
    for name, width, size in cfg["path_models"]:
        r = bench_path(name, width, size, cfg, args.device)
        data["inference_path"].append(r)
        for batch, b in r["batches"].items():
            print(f"[inference] path {name} w{width:g} {size}x{size} b={batch}: MAC ratio {r['mac_ratio']:.1f}, "
                  f"optimized x{b['speedup_vs_dense_eager']['pruned_optimized']:.2f} "
                  f"({b['speedup_over_mac_ratio']['pruned_optimized']:.2f} of it)", flush=True)
    data["wall_time_s"] = time.perf_counter() - t0
    md = markdown(data)
    paths = common.write_results(args.out, "inference", data, md)
    print(md)
    print(f"[inference] wrote {paths['json']} and {paths['md']} in {data['wall_time_s']:.1f} s")
    return data


if __name__ == "__main__":
    main()

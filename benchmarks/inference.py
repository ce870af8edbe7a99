"""Inference speed-up of SCA-pruned (finalized) models over the dense model.

For each sparsity the model is pruned with ``SCAPruner`` after a couple of training steps on random
data (accuracy is irrelevant here), ``update_masks()`` and ``finalize()``; the dense model is an
untouched copy of the same initial network.  Both run in eval mode under ``torch.no_grad()`` with
``functional.reset_net`` before every call; dense and pruned calls are interleaved and summarised
by medians.  Reported: latency at batch 1, throughput at a large batch, and their ratios beside
the MACs ratio from ``sca_plugin.count_macs``.

``python benchmarks/inference.py [--quick|--smoke] [--device cpu|cuda] [--out benchmarks/results]``
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

from sca_plugin import SCAPruner, count_macs, count_parameters  # noqa: E402
from sca_plugin.models import digits_cnn, vgg16  # noqa: E402

PROFILES = {
    "default": dict(models=(("vgg16", 0.5), ("digits_cnn", 1.0)), sparsities=(0.3, 0.5, 0.8),
                    lat_reps=30, thr_reps=10, big_batch=64),
    "quick": dict(models=(("vgg16", 0.25), ("digits_cnn", 1.0)), sparsities=(0.3, 0.5, 0.8),
                  lat_reps=8, thr_reps=3, big_batch=32),
    "smoke": dict(models=(("digits_cnn", 1.0),), sparsities=(0.5,), lat_reps=3, thr_reps=2, big_batch=16),
}


def build(name: str, width: float):
    torch.manual_seed(0)
    if name == "digits_cnn":
        return digits_cnn(T=4), (1, 8, 8)
    return vgg16(width=width, T=4), (3, 32, 32)


def pruned_copy(dense, shape, sparsity: float):
    model = copy.deepcopy(dense)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    pruner = SCAPruner(model, x[:2], pruning_ratio=sparsity, regrow_ratio=min(0.1, sparsity),
                       ignored_layers=[model.classifier])
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
    return "".join(s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller VGG (< ~60 s)")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite (schema only)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out", default=str(common.REPO_ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    profile = "smoke" if args.smoke else "quick" if args.quick else "default"
    cfg = PROFILES[profile]
    t0 = time.perf_counter()
    data = {"benchmark": "inference", "profile": profile, "machine": common.machine_info(args.device),
            "results": []}
    for name, width in cfg["models"]:
        dense, shape = build(name, width)
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
    data["wall_time_s"] = time.perf_counter() - t0
    md = markdown(data)
    paths = common.write_results(args.out, "inference", data, md)
    print(md)
    print(f"[inference] wrote {paths['json']} and {paths['md']} in {data['wall_time_s']:.1f} s")
    return data


if __name__ == "__main__":
    main()

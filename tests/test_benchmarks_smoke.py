"""Smoke test of the benchmark scripts: they run (tiny --smoke profile) and write the JSON schema.

Timings are never asserted against thresholds; only that ratios are positive finite numbers."""
from tests.helpers import load_benchmark
import json
import math
from pathlib import Path


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    return load_benchmark(name)


def _positive_finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_summary(s):
    assert set(s) >= {"median", "q1", "q3", "iqr", "min", "n"}
    assert _positive_finite(s["median"]) and s["n"] >= 1 and s["iqr"] >= 0


MACHINE_KEYS = {"cpu_model", "cpu_cores", "torch_version", "date", "command", "device", "torch_threads"}


def test_overhead_smoke(tmp_path):
    _load("overhead").main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert (tmp_path / "overhead.md").read_text().startswith("# SCA overhead")
    assert data["benchmark"] == "overhead" and data["profile"] == "smoke"
    assert set(data["machine"]) >= MACHINE_KEYS
    assert [r["model"] for r in data["train_step"]] == ["digits_cnn", "vgg16"]
    for r in data["train_step"]:
        _check_summary(r["plain_step_s"]); _check_summary(r["sca_step_s"]); _check_summary(r["update_masks_s"])
        assert _positive_finite(r["step_time_ratio"])
        assert _positive_finite(r["update_masks_fraction_of_epoch"])
        assert r["steps_per_epoch"] > 0 and r["steps_per_epoch_assumption"]
    assert data["finalize"]
    for r in data["finalize"]:
        _check_summary(r["finalize_verified_s"]); _check_summary(r["finalize_unverified_s"])
    assert data["memory"]
    for r in data["memory"]:
        assert _positive_finite(r["peak_rss_ratio"])
        assert _positive_finite(r["plain_peak_rss_mib"]) and _positive_finite(r["sca_peak_rss_mib"])


def test_inference_smoke(tmp_path):
    _load("inference").main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "inference.json").read_text())
    assert (tmp_path / "inference.md").exists()
    assert data["benchmark"] == "inference" and data["machine"]["device"] == "cpu"
    assert set(data["machine"]) >= MACHINE_KEYS
    assert data["results"]
    for r in data["results"]:
        _check_summary(r["latency_b1_dense_s"]); _check_summary(r["latency_b1_pruned_s"])
        _check_summary(r["batch_time_dense_s"]); _check_summary(r["batch_time_pruned_s"])
        for key in ("latency_ratio", "throughput_ratio", "macs_ratio", "params_ratio",
                    "throughput_dense_per_s", "throughput_pruned_per_s"):
            assert _positive_finite(r[key]), key
        assert r["macs_ratio"] < 1.0  # pruning removed channels (a count, not a timing)

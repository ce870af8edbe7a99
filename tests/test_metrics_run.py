"""metrics.json of a run: spiking metrics on the whole test set, NeuroBench figures, definitions."""
import json

from sca_plugin.config import TrainConfig
from sca_plugin.metrics import METRICS_JSON_DEFINITIONS
from sca_plugin.runner import run_training


def test_run_metrics_cover_the_whole_test_set_and_say_their_definitions(tmp_path):
    # 300 test samples with the test loader's 256-sample batches: two batches, the second partial.
    # global ranking: after one epoch on 128 images the per-layer default leaves this width-0.25 net silent
    cfg = TrainConfig(epochs=1, width=0.25, time_steps=2, progress=False, train_limit=128, test_limit=300,
                      fixed_mask_epochs=0, global_pruning=True, output_dir=str(tmp_path / "run"))
    metrics = run_training(cfg, log=lambda *_: None)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["metrics_samples"] == metrics["metrics_samples"] == 300
    # the settings whose default depends on others, as the run used them (read back as such by later versions)
    assert on_disk["effective_settings"] == {"regrow_ratio": 0.1, "bn_l1": 0.0, "schedule": "cubic",
                                             "global_pruning": True, "oneshot_epoch": None}
    assert on_disk["spiking_metrics"]["samples"] == 300 and on_disk["spiking_metrics"]["batches"] == 2
    assert on_disk["dense_baseline"]["metrics_samples"] == 300
    nb = on_disk["neurobench"]
    assert nb == on_disk["spiking_metrics"]["neurobench"]
    assert nb["effective_acs"] > 0 and nb["dense"] < on_disk["spiking_metrics"]["dense_macs"]
    assert nb["parameter_count"] == on_disk["parameters"]["after"]
    assert on_disk["dense_baseline"]["neurobench"]["parameter_count"] == on_disk["parameters"]["before"]
    assert on_disk["definitions"] == METRICS_JSON_DEFINITIONS
    for key in ("accuracy", "parameters", "macs", "synops", "activation_sparsity", "firing_rates", "energy",
                "neurobench", "metrics_samples", "spiking_metrics", "dense_baseline"):
        assert key in on_disk and key in on_disk["definitions"], key

"""The recommended schedule (issue 11): the dynamic SCA methods reach their target by a cubic ramp
over the first quarter of the epochs; everything else, the paper preset and one-shot pruning keep
the paper's constant target; a ramp where nothing ramps is refused before any work."""
import pytest

from sca_plugin.config import ConfigError, TrainConfig
from sca_plugin.methods import ramp_updates as _ramp_updates
from sca_plugin.runner import run_training


@pytest.mark.parametrize("method", ["sca", "sca-prune-only"])
def test_sca_methods_ramp_over_the_first_quarter_of_the_epochs(method):
    cfg = TrainConfig(method=method, epochs=150)
    assert (cfg.effective_schedule, cfg.effective_ramp_updates) == ("cubic", 37)
    assert TrainConfig(method=method, epochs=30).effective_ramp_updates == 7
    assert TrainConfig(method=method, epochs=3).effective_ramp_updates == 1  # too short to ramp: the full target


@pytest.mark.parametrize("method", ["l1", "bnscale", "taylor", "lamp", "random", "random-init", "nni-fpgm", "sdsnn"])
def test_other_methods_keep_the_constant_target(method):
    cfg = TrainConfig(method=method, epochs=150)
    assert (cfg.effective_schedule, cfg.effective_ramp_updates) == ("constant", 1)


def test_paper_preset_one_shot_and_explicit_settings():
    assert TrainConfig.from_dict({"preset": "paper", "epochs": 150}).effective_schedule == "constant"
    assert TrainConfig(method="sca", epochs=150, oneshot_epoch=37).effective_schedule == "constant"
    explicit = TrainConfig(method="sca", epochs=150, schedule="linear", ramp_updates=10)
    assert (explicit.effective_schedule, explicit.effective_ramp_updates) == ("linear", 10)
    assert TrainConfig(method="l1", epochs=150, schedule="cubic").effective_ramp_updates == 37


def test_ramp_with_a_step_interval_counts_the_updates_of_a_quarter_of_the_epochs():
    cfg = TrainConfig(method="sca", epochs=40, update_interval=5)
    assert cfg.effective_ramp_updates is None
    assert _ramp_updates(cfg, steps_per_epoch=23) == (10 * 23) // 5


@pytest.mark.parametrize("values, message", [
    (dict(method="random-init", schedule="cubic"), "prunes once"),
    (dict(method="nni-fpgm", schedule="linear"), "prunes once"),
    (dict(method="sca", schedule="cubic", oneshot_epoch=3), "with --oneshot-epoch"),
    (dict(method="sca", schedule="exp"), "schedule must be one of constant, linear, cubic"),
    (dict(method="sca", ramp_updates=0), "ramp_updates must be at least 1"),
])
def test_a_ramp_where_nothing_ramps_is_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_a_default_run_ramps_its_target_and_trains_its_final_structure(tmp_path):
    cfg = TrainConfig(epochs=8, width=0.25, time_steps=2, train_limit=128, test_limit=64, batch_size=32,
                      pruning_ratio=0.8, dense_baseline=False, progress=False, output_dir=str(tmp_path / "run"))
    metrics = run_training(cfg, log=lambda s: None)
    targets = [h["target_sparsity"] for h in metrics["history"]]
    assert len(targets) == 8 - cfg.effective_fixed_mask_epochs
    assert targets[0] < targets[1] == pytest.approx(0.8) and targets[-1] == pytest.approx(0.8)  # ramp over 2 updates
    assert metrics["config"]["schedule"] is None  # stored as given; the effective value is what ran

"""The paper-protocol configs load as `sca-prune train` settings and build their models at the data's
shapes; the step LR schedule of the reference code does what it says."""
from pathlib import Path

import pytest
import torch

from sca_plugin.config import ConfigError, TrainConfig, load_config_file
from sca_plugin.runner import build_model, run_training

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "paper"
# (classes, input channels, H x W) of each config's data set as the loaders give it
SHAPES = {"cifar10": (10, 3, (32, 32)), "cifar100": (100, 3, (32, 32)), "cifar10-dvs": (10, 2, (64, 64)),
          "mnist": (10, 1, (28, 28))}


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_config_loads_and_builds(path):
    cfg = TrainConfig.from_dict(load_config_file(str(path)))
    assert cfg.method == "sca" and cfg.mode == "rebuild" and cfg.lr_schedule == "step" and cfg.lr == 0.01
    assert cfg.preset == "paper" and cfg.masking == "soft" and cfg.regrow_signal == "last" and cfg.max_pruning_ratio == 1.0
    assert cfg.time_steps == (20 if cfg.dataset == "cifar10-dvs" else 4)
    classes, channels, size = SHAPES[cfg.dataset]
    cfg.width = 0.125  # the architecture at 1/8 width: same layers, a quick forward on CPU
    model = build_model(cfg, classes, channels, size)
    out = model(torch.rand(2, channels, *size))
    assert out.shape == (2, classes)


def test_step_lr_schedule(tmp_path):
    m = run_training(TrainConfig(method="dense", epochs=3, width=0.25, time_steps=2, progress=False, train_limit=128,
                                 test_limit=64, lr=0.1, lr_schedule="step", lr_step_size=1, lr_gamma=0.5,
                                 output_dir=str(tmp_path / "run")), log=lambda *_: None)
    assert [e["lr"] for e in m["epochs_log"]] == pytest.approx([0.05, 0.025, 0.0125])
    with pytest.raises(ConfigError, match="lr_schedule must be"):
        TrainConfig(lr_schedule="poly")
    with pytest.raises(ConfigError, match="lr_gamma must be in"):
        TrainConfig(lr_gamma=0.0)


def test_preset_paper_fills_unset_settings_and_explicit_ones_win():
    cfg = TrainConfig.from_dict({"preset": "paper"})
    assert (cfg.lr, cfg.lr_schedule, cfg.lr_step_size, cfg.mode, cfg.masking, cfg.regrow_signal, cfg.fixed_mask_epochs,
            cfg.max_pruning_ratio) == (0.01, "step", 100, "rebuild", "soft", "last", 0, 1.0)
    assert TrainConfig.from_dict({"preset": "paper", "lr": 0.05}).lr == 0.05
    assert TrainConfig().masking == "reset" and TrainConfig().lr == 0.1  # the recommended defaults
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig.from_dict({"preset": "iclr"})


def test_cli_preset_and_flag(tmp_path):
    from sca_plugin.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--preset", "paper", "--lr", "0.02", "--output-dir", str(tmp_path)])
    cfg = _train_config(args)
    assert cfg.lr == 0.02 and cfg.masking == "soft" and cfg.lr_schedule == "step"

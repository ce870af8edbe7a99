"""The demo (README main job) and the user example run end to end."""
import importlib
import pathlib

import torch

from sca_plugin import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_prints_measured_before_after_table(capsys):
    assert demo.main(["--epochs", "3", "--fixed-mask-epochs", "1", "--width", "0.5"]) == 0
    out = capsys.readouterr().out
    for row in ("accuracy", "parameters", "MACs / time step", "MACs total (T=4)", "channels features.7"):
        assert row in out
    assert "finalized accuracy" in out and ": True" in out


def test_user_example_runs_and_saves_a_loadable_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # the pickled model's class must be importable
    example = importlib.import_module("own_network")
    monkeypatch.chdir(tmp_path)
    example.main()
    model = torch.load(tmp_path / "my_snn_pruned.pt", weights_only=False)
    assert sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)) < 96

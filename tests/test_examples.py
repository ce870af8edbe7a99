"""The user example runs end to end."""
import importlib
import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_user_example_runs_and_saves_a_loadable_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # the pickled model's class must be importable
    example = importlib.import_module("own_network")
    monkeypatch.chdir(tmp_path)
    example.main()
    model = torch.load(tmp_path / "my_snn_pruned.pt", weights_only=False)
    assert sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)) < 96

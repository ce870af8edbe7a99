"""A 2-trial local NNI experiment (SCA vs NNI's L1NormPruner on digits) completes offline."""
import importlib
import pathlib
import socket
import subprocess


ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_trial_experiment_prints_a_comparison_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "nni_experiment"))
    experiment = importlib.import_module("run_experiment")
    text = experiment.run(tmp_path / "nni", ratios=(0.5,), regrow_ratios=(0.1,), pruners=("sca", "l1norm"),
                          epochs=2, port=free_port())  # 2: the last epoch trains the final structure
    rows = text.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["l1norm", "sca"]
    for r in rows:
        accuracy = float(r.split()[3].rstrip("%"))
        assert 20 < accuracy <= 100, r  # the trial learned (chance is 10%)
        assert int(r.split()[4].replace(",", "")) < 25978  # pruned below the dense 25,978
    assert any((tmp_path / "nni").iterdir())  # NNI's working directory is inside the output folder
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == [], "the experiment left processes behind"

"""The catalogue of misuses of the public API and the CLI (docs/bad-inputs.md).

Each case builds what a user would have, makes the mistake, and checks the exact error; the model
and the files involved must be unchanged afterwards. ``docs/bad-inputs.md`` is generated from this
catalogue (``python tests/test_bad_inputs.py`` rewrites it) and a test keeps the two in sync.
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron

# the CLI rows give `--model test_bad_inputs:fixed_snn`, a user's module importable from its folder
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests.helpers import assert_unchanged, snapshot, train_steps  # noqa: E402

from sca_plugin import SCAImportance, SCAPruner, SDSNNPruner, optimize_for_inference  # noqa: E402
from sca_plugin.cli import main as cli  # noqa: E402
from sca_plugin.models import digits_cnn  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
X = torch.rand(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))
TINY = ["--epochs", "2", "--width", "0.25", "--time-steps", "2", "--no-progress", "--train-limit", "64",
        "--test-limit", "32", "--no-dense-baseline"]


@dataclass
class Case:
    id: str
    misuse: str        # what the user did, in words
    call: str          # the offending call, as the user wrote it
    setup: Callable    # setup(tmp_path) -> (models to watch, files to watch, action raising the error)
    error: type        # exception type, or SystemExit for the CLI (exit status 2, one line on stderr)


def model():
    torch.manual_seed(0)
    return digits_cnn(T=2)


def _api(build: Callable[[nn.Module], Callable]) -> Callable:
    def setup(tmp_path):
        m = model()
        return [m], [], build(m)
    return setup


def _trained_pruner(m, **kw):
    p = SCAPruner(m, X, ignored_layers=[m.classifier], **kw)
    train_steps(m, X, Y, 1, p)
    return p


class PlainCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class NoBatchNormSNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.sn = layer.Conv2d(1, 4, 3), neuron.IFNode()
        self.classifier = layer.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.classifier(self.sn(self.conv(x)).flatten(1))


class OddNode(neuron.SimpleBaseNode):
    """A user's neuron with its own charge rule and no registered charge function."""

    def neuronal_charge(self, x):
        self.v = self.v * 0.5 + x


class OddNeuronSNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.sn = layer.Conv2d(1, 4, 3), layer.BatchNorm2d(4), OddNode()
        self.classifier = layer.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.classifier(self.sn(self.bn(self.conv(x))).flatten(1))


def _other_model(factory, build):
    def setup(tmp_path):
        m = factory()
        return [m], [], build(m)
    return setup


def _state_from(**kw):
    src = model()
    return _trained_pruner(src, **kw).state_dict()


def _replaced_layer(tmp_path):
    m = model()
    p = _trained_pruner(m)
    m.features[3] = layer.Conv2d(16, 32, 3, padding=1, bias=False, step_mode="m")
    return [m], [], p.update_masks


def _nni(build):
    def setup(tmp_path):
        pytest.importorskip("nni")
        m = model()
        return [m], [], lambda: build(m)
    return setup


def _speedup(masks_for):
    def setup(tmp_path):
        pytest.importorskip("nni")
        from sca_plugin.nni import ModelSpeedup

        m = model().eval()
        return [m], [], lambda: ModelSpeedup(m, X, masks_for(m)).speedup_model()
    return setup


def _cli(args_for: Callable[[Path], List[str]], files_for: Callable[[Path], List[Path]] = lambda t: []):
    def setup(tmp_path):
        args = args_for(tmp_path)
        return [], files_for(tmp_path), lambda: _run_cli(args)
    return setup


class CLIError(SystemExit):
    pass


def _run_cli(args):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(args)
    lines = err.getvalue().strip().splitlines()
    if code != 0:
        raise CLIError(f"exit {code}: " + (lines[-1] if lines else ""))


def _checkpoint_of_other_width(tmp_path):
    out = tmp_path / "run"
    assert cli(["train", *TINY, "--width", "0.5", "--output-dir", str(out)]) == 0
    (out / "metrics.json").unlink()  # an interrupted run: only its checkpoint is left
    return out


def _truncated_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert cli(["train", *TINY, "--output-dir", str(out)]) == 0
    (out / "metrics.json").unlink()
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    return out


def fixed_snn(num_classes):
    """A user's model factory without width, neuron, step_mode or T parameters."""
    return digits_cnn(num_classes=num_classes, T=2)


def _bad_config_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("epochs: two\n")
    return f


def _finished(tmp_path):
    out = tmp_path / "run"
    assert cli(["train", *TINY, "--output-dir", str(out)]) == 0
    return out


def _run_of_a_missing_module(tmp_path):
    """A finished run whose model's class lives in a module that is gone (not importable here)."""
    import importlib

    from sca_plugin.config import TrainConfig

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "gone_models.py").write_text("import torch.nn as nn\n\nclass Net(nn.Module):\n    pass\n")
    sys.path.insert(0, str(folder))
    try:
        net = importlib.import_module("gone_models").Net()
        out = tmp_path / "run"
        out.mkdir()
        torch.save(net, out / "model.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("gone_models", None)
    cfg = TrainConfig(model="gone_models:build", train_limit=64, test_limit=32, output_dir=str(out))
    (out / "metrics.json").write_text(__import__("json").dumps({"config": cfg.to_dict()}))
    (folder / "gone_models.py").unlink()
    return out


CASES: List[Case] = [
    Case("example-inputs-shape", "example inputs with the wrong number of channels",
         "SCAPruner(model, torch.rand(4, 3, 8, 8))  # model takes 1 channel", _api(
             lambda m: lambda: SCAPruner(m, torch.rand(4, 3, 8, 8), ignored_layers=[m.classifier])), ValueError),
    Case("not-spiking", "a network without spiking neurons", "SCAPruner(plain_cnn, x)", _other_model(
        PlainCNN, lambda m: lambda: SCAPruner(m, torch.rand(2, 1, 8, 8), ignored_layers=[m.fc])), ValueError),
    Case("ratio-range", "a pruning ratio outside [0, 1)", "SCAPruner(model, x, pruning_ratio=1.2)", _api(
        lambda m: lambda: SCAPruner(m, X, pruning_ratio=1.2, ignored_layers=[m.classifier])), ValueError),
    Case("regrow-above-ratio", "regrowing more than is pruned", "SCAPruner(model, x, pruning_ratio=0.2, regrow_ratio=0.3)",
         _api(lambda m: lambda: SCAPruner(m, X, pruning_ratio=0.2, regrow_ratio=0.3, ignored_layers=[m.classifier])),
         ValueError),
    Case("regrow-of-kept-above-ratio", "regrowing more than is pruned, counted against the kept channels",
         "SCAPruner(model, x, pruning_ratio=0.3, regrow_ratio=0.5, regrow_relative_to='kept')",
         _api(lambda m: lambda: SCAPruner(m, X, pruning_ratio=0.3, regrow_ratio=0.5, regrow_relative_to="kept",
                                          ignored_layers=[m.classifier])), ValueError),
    Case("no-batchnorm-for-regrowth", "a conv without a following BatchNorm while regrowth ranks by its gradient",
         "SCAPruner(conv_if_net, x, regrow_ratio=0.1)", _other_model(
             NoBatchNormSNN, lambda m: lambda: SCAPruner(m, torch.rand(2, 1, 8, 8), regrow_ratio=0.1,
                                                         ignored_layers=[m.classifier])), ValueError),
    Case("foreign-ignored-layer", "ignoring a layer of another model", "SCAPruner(model, x, ignored_layers=[other.classifier])",
         _api(lambda m: lambda: SCAPruner(m, X, ignored_layers=[digits_cnn(T=2).classifier])), ValueError),
    Case("unsupported-neuron", "the paper's membrane_l1 score on a neuron without a known charge function",
         "SCAPruner(odd_net, x, importance=SCAImportance('membrane_l1'))", _other_model(
             OddNeuronSNN, lambda m: lambda: SCAPruner(m, torch.rand(2, 1, 8, 8), importance=SCAImportance("membrane_l1"),
                                                       ignored_layers=[m.classifier])), ValueError),
    Case("update-before-training", "updating masks before any training forward", "pruner.update_masks()", _api(
        lambda m: SCAPruner(m, X, ignored_layers=[m.classifier]).update_masks), RuntimeError),
    Case("finalize-before-update", "finalizing before any mask exists", "pruner.finalize()", _api(
        lambda m: SCAPruner(m, X, ignored_layers=[m.classifier]).finalize), RuntimeError),
    Case("model-changed", "replacing a layer after the pruner was built", "model.features[3] = Conv2d(16, 32, 3); "
         "pruner.update_masks()", _replaced_layer, RuntimeError),
    Case("state-other-architecture", "loading pruner state saved for another architecture",
         "pruner.load_state_dict(state_of_half_width_model)", _api(
             lambda m: partial(SCAPruner(m, X, ignored_layers=[m.classifier]).load_state_dict,
                               _trained_pruner(digits_cnn(T=2, width=0.5)).state_dict())), ValueError),
    Case("state-other-settings", "loading pruner state saved with other settings",
         "SCAPruner(model, x, pruning_ratio=0.5).load_state_dict(state_at_0_3)", _api(
             lambda m: partial(SCAPruner(m, X, ignored_layers=[m.classifier]).load_state_dict,
                               _state_from(pruning_ratio=0.3))), ValueError),
    Case("regularize-other-model", "regularizing a different model", "pruner.regularize(other_model)", _api(
        lambda m: partial(SCAPruner(m, X, ignored_layers=[m.classifier]).regularize, digits_cnn(T=2))), ValueError),
    Case("sdsnn-N", "SD-SNN with a non-positive epoch count", "SDSNNPruner(model, x, N=0)", _api(
        lambda m: lambda: SDSNNPruner(m, X, ignored_layers=[m.classifier], N=0)), ValueError),
    Case("nni-unknown-key", "an NNI config key SCA does not understand",
         "sca_plugin.nni.SCAPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5, 'max_sparsity_per_layer': 0.9}], ...)",
         _nni(lambda m: __import__("sca_plugin.nni", fromlist=["SCAPruner"]).SCAPruner(
             m, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "max_sparsity_per_layer": 0.9}], example_inputs=X)),
         ValueError),
    Case("nni-ratio-range", "an NNI sparse_ratio outside [0, 1)",
         "sca_plugin.nni.SCAPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 1.5}], ...)",
         _nni(lambda m: __import__("sca_plugin.nni", fromlist=["SCAPruner"]).SCAPruner(
             m, [{"op_types": ["Conv2d"], "sparse_ratio": 1.5}], example_inputs=X)), ValueError),
    Case("nni-sdsnn-ratio", "a sparsity in an SD-SNN config list (its sparsity emerges)",
         "sca_plugin.nni.SDSNNPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}], ...)",
         _nni(lambda m: __import__("sca_plugin.nni", fromlist=["SDSNNPruner"]).SDSNNPruner(
             m, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], example_inputs=X)), ValueError),
    Case("speedup-mask-shape", "a mask whose shape does not match its parameter",
         "ModelSpeedup(model, x, {'features.0': {'weight': torch.ones(3)}})", _speedup(
             lambda m: {"features.0": {"weight": torch.ones(3)}}), ValueError),
    Case("speedup-unknown-module", "a mask for a module the model does not have (a wrapped model's name)",
         "ModelSpeedup(model, x, {'features.0._nni_wrapper': {'weight': mask}})", _speedup(
             lambda m: {"features.0._nni_wrapper": {"weight": torch.ones(1)}}), ValueError),
    Case("nni-builtin-name", "an NNI pruner name that does not exist", "NNIBuiltinPruning(model, x, 'l3norm', 0.5)",
         _nni(lambda m: __import__("sca_plugin.nni", fromlist=["NNIBuiltinPruning"]).NNIBuiltinPruning(
             m, X, "l3norm", 0.5)), ValueError),
    Case("cli-ratio", "a pruning ratio outside [0, 1) on the command line", "sca-prune train --pruning-ratio 1.5",
         _cli(lambda t: ["train", "--pruning-ratio", "1.5", "--output-dir", str(t / "run")]), SystemExit),
    Case("cli-one-epoch", "a prune-and-regrow run of one epoch (it would never train its final structure)",
         "sca-prune train --epochs 1", _cli(lambda t: ["train", "--epochs", "1", "--output-dir", str(t / "run")]),
         SystemExit),
    Case("api-masking", "an unknown masking mode", "SCAPruner(model, x, masking='hard')",
         _api(lambda m: lambda: SCAPruner(m, X, ignored_layers=[m.classifier], masking="hard")), ValueError),
    Case("cli-missing-data", "a data set that needs files nobody gave", "sca-prune train --dataset cifar10",
         _cli(lambda t: ["train", "--dataset", "cifar10", "--output-dir", str(t / "run")]), SystemExit),
    Case("cli-checkpoint-architecture", "resuming from a checkpoint of another architecture (other width)",
         "sca-prune train --width 0.25 --resume --output-dir RUN  # RUN was trained at width 0.5",
         _cli(lambda t: ["train", *TINY, "--output-dir", str(_checkpoint_of_other_width(t)), "--resume"],
              lambda t: [t / "run" / "checkpoint.pt"]), SystemExit),
    Case("cli-truncated-checkpoint", "resuming from a truncated checkpoint (a crash during a copy)",
         "sca-prune train --resume --output-dir RUN  # RUN/checkpoint.pt cut in half",
         _cli(lambda t: ["train", *TINY, "--output-dir", str(_truncated_checkpoint(t)), "--resume"],
              lambda t: [t / "run" / "checkpoint.pt"]), SystemExit),
    Case("cli-existing-run", "training into a folder that holds a finished run", "sca-prune train --output-dir RUN",
         _cli(lambda t: (cli(["train", *TINY, "--output-dir", str(t / "run")]), ["train", *TINY, "--output-dir",
                                                                                  str(t / "run")])[1],
              lambda t: [t / "run" / "metrics.json", t / "run" / "model.pt"]), SystemExit),
    Case("cli-pruner-settings-first", "pruner settings that contradict each other (checked before the dense "
         "baseline trains)", "sca-prune train --pruning-ratio 0.5 --regrow-ratio 0.6",
         _cli(lambda t: ["train", "--pruning-ratio", "0.5", "--regrow-ratio", "0.6", "--output-dir", str(t / "run")],
              lambda t: [t / "run" / "dense_baseline.json", t / "run" / "metrics.json"]), SystemExit),
    Case("cli-config-type", "a value of the wrong type in a config file", "sca-prune train --config run.yaml  "
         "# epochs: two", _cli(lambda t: ["train", "--config", str(_bad_config_file(t)), "--output-dir", str(t / "x")]),
         SystemExit),
    Case("cli-resume-other-flags", "resuming with a setting other than the run's",
         "sca-prune train --resume --output-dir RUN --epochs 3  # RUN was trained for 2",
         _cli(lambda t: ["train", "--resume", "--output-dir", str(_finished(t)), "--epochs", "3"],
              lambda t: [t / "run" / "metrics.json", t / "run" / "model.pt", t / "run" / "checkpoint.pt"]),
         SystemExit),
    Case("cli-model-flag-unused", "a flag the user's model factory does not take (it would be recorded, not used)",
         "sca-prune train --model test_bad_inputs:fixed_snn --neuron plif  # fixed_snn(num_classes)",
         _cli(lambda t: ["train", "--model", "test_bad_inputs:fixed_snn", "--neuron", "plif", "--output-dir",
                         str(t / "run")], lambda t: [t / "run" / "metrics.json"]), SystemExit),
    Case("cli-eval-module-missing", "evaluating a run whose model module is not importable here",
         "sca-prune eval RUN  # RUN's model class is in gone_models.py, which is not here",
         _cli(lambda t: ["eval", str(_run_of_a_missing_module(t))], lambda t: [t / "run" / "model.pt"]), SystemExit),
    Case("inference-unfinalized", "the inference path on a model an unfinalized pruner still masks",
         "optimize_for_inference(model, x)  # pruner.update_masks() ran, finalize() did not", _api(
             lambda m: (lambda p: (p.update_masks(), lambda: optimize_for_inference(m, X))[1])(_trained_pruner(m))),
         ValueError),
    Case("inference-input-shape", "the inference path with example inputs the model cannot take",
         "optimize_for_inference(model, torch.rand(2, 4, 3, 8, 8))  # model takes 1 channel", _api(
             lambda m: lambda: optimize_for_inference(m, torch.rand(2, 4, 3, 8, 8))), ValueError),
]


def _files_state(files) -> List[Optional[Tuple[str, int]]]:
    return [(hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns) if f.exists() else None for f in files]


def _message(exc: BaseException, tmp_path: Path) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.replace(str(tmp_path), "<tmp>")
    return re.sub(r"0x[0-9a-f]+", "0x…", text)


def run_case(case: Case, tmp_path: Path) -> str:
    """Make the mistake; check the error type and that nothing changed; return the message."""
    models, files, action = case.setup(tmp_path)
    before = [snapshot(m) for m in models]
    files_before = _files_state(files)
    with pytest.raises(case.error) as info:
        action()
    for m, snap in zip(models, before):
        assert_unchanged(m, snap)
    assert _files_state(files) == files_before
    if case.error is SystemExit:
        assert str(info.value).startswith("exit 2: sca-prune: error:"), str(info.value)
    return _message(info.value, tmp_path)


def render(rows: List[Tuple[Case, str]]) -> str:
    lines = [
        "# Bad inputs: what each misuse raises",
        "",
        "Every row is a test in `tests/test_bad_inputs.py`: it makes the mistake, checks the error below",
        "(message verbatim, first line; `<tmp>` is the test's folder) and that the model (parameters,",
        "buffers, train/eval mode, hooks, parameter objects) and the files involved are unchanged. API",
        "errors are raised before anything is modified; the CLI prints one line and exits with status 2.",
        "Regenerate this page with `PYTHONPATH=. python tests/test_bad_inputs.py`.",
        "",
        "| # | misuse | call | error |",
        "|---|---|---|---|",
    ]
    for i, (case, message) in enumerate(rows, 1):
        kind = "exit status 2" if case.error is SystemExit else case.error.__name__
        shown = message[len("exit 2: "):] if message.startswith("exit 2: ") else message
        esc = shown.replace("|", "\\|")
        lines.append(f"| {i} | {case.misuse} | `{case.call.replace('|', '/')}` | {kind}: {esc} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    message = run_case(case, tmp_path)
    doc = DOC.read_text()
    shown = message[len("exit 2: "):] if message.startswith("exit 2: ") else message
    assert shown.replace("|", "\\|") in doc, f"docs/bad-inputs.md is out of date for {case.id}: run python {__file__}"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)


if __name__ == "__main__":  # regenerate docs/bad-inputs.md
    import tempfile

    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            rows.append((case, run_case(case, Path(d))))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(rows))
    print(f"wrote {DOC} ({len(rows)} cases)")

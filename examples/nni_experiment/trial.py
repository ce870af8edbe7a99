"""One NNI trial: prune a spiking CNN on digits with SCA or NNI's L1NormPruner, speed it up, report.

NNI gives the parameters (``pruner``, ``sparse_ratio``, ``regrow_ratio``, ``epochs``); the trial
reports ``{"default": test accuracy, "parameters": ..., ...}`` with ``nni.report_final_result``.
Run by ``run_experiment.py``; standalone: ``python trial.py`` uses the defaults below.
"""
import nni
import torch
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from nni.compression.pruning import L1NormPruner
from spikingjelly.activation_based import functional

from sca_plugin.datasets import load_dataset
from sca_plugin.models import digits_cnn
from sca_plugin.nni import ModelSpeedup, SCAPruner

DEFAULTS = {"pruner": "sca", "sparse_ratio": 0.5, "regrow_ratio": 0.1, "epochs": 4, "seed": 0}


def batches(x, y, batch_size, generator):
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    functional.reset_net(model)
    model.train()
    return acc


def main():
    params = {**DEFAULTS, **(nni.get_next_parameter() or {})}
    if "variant" in params:  # "sca:0.1" or "l1norm" from run_experiment.py's grid
        pruner, _, regrow = params.pop("variant").partition(":")
        params.update(pruner=pruner, regrow_ratio=float(regrow) if regrow else 0.0)
    torch.manual_seed(params["seed"])
    digits = load_dataset("digits", seed=params["seed"])
    (x, y), (x_test, y_test) = digits.train.tensors(), digits.test.tensors()
    generator = torch.Generator().manual_seed(params["seed"])
    model = digits_cnn(T=4)
    example = x[:8]
    config_list = [{"op_names": ["features.0", "features.3", "features.7"], "sparse_ratio": params["sparse_ratio"],
                    "global_group_id": 0}]

    def training_step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for _ in range(max_epochs or 1):
            for batch in batches(x, y, 64, generator):
                loss = training_step(batch, model)
                optimizers.zero_grad()
                loss.backward()
                optimizers.step()
                functional.reset_net(model)

    def optimizer_for(model):
        return nni.trace(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9)

    params_before = sum(p.numel() for p in model.parameters())
    if params["pruner"] == "sca":  # prune and regrow while training, then remove
        evaluator = TorchEvaluator(training_func, optimizer_for(model), training_step)
        # masks change after every epoch but the last, which trains the final structure (as
        # `sca-prune train --fixed-mask-epochs`); the budget equals L1NormPruner's
        pruner = SCAPruner(model, config_list, evaluator, regrow_ratio=params["regrow_ratio"],
                           interval_steps=len(range(0, len(x), 64)), total_times=max(1, params["epochs"] - 1),
                           example_inputs=example)
        _, masks = pruner.compress(max_steps=None, max_epochs=params["epochs"])
        pruner.unwrap_model()
        ModelSpeedup(model, example, masks).speedup_model()
    elif params["pruner"] == "l1norm":  # NNI's built-in: one-shot at init, then the same training budget
        config_list[0].pop("global_group_id")
        pruner = L1NormPruner(model, config_list)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        ModelSpeedup(model, example, masks).speedup_model()
        training_func(model, optimizer_for(model), training_step, max_epochs=params["epochs"])
    else:
        raise ValueError(f"unknown pruner {params['pruner']!r}; use 'sca' or 'l1norm'")
    result = {"default": accuracy(model, x_test, y_test), "parameters": sum(p.numel() for p in model.parameters()),
              "parameters_before": params_before}
    nni.report_final_result(result)
    print(params, result)


if __name__ == "__main__":
    main()

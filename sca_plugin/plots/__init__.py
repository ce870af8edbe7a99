"""Figures of pruning runs, read from the ``metrics.json`` files that ``sca-prune train`` writes.

The figures follow the SCA paper (Li et al., ICML 2024):

* :func:`plot_accuracy_vs_ratio` (Figure 2): test accuracy per pruning ratio as bars (mean ± std
  over seeds, one colour per method, the dense run at ratio 0), and the parameters and SynOps (MACs
  per time step where SynOps were not measured) as lines on a second axis, in % of the dense model.
* :func:`plot_channels_over_training` (Figure 3, left): channels kept per layer at each mask update.
* :func:`plot_final_channels` (Figure 3, right): channels per layer after pruning, one bar per
  pruning ratio, the unpruned width as a dashed outline.
* :func:`plot_importance_distribution` (Figure 4a): the last importance scores, pooled histogram
  coloured by layer and a per-layer strip plot (log scale when they span more than two decades).
* :func:`make_report`: every figure the runs allow and a ``report.md`` table that embeds them.

matplotlib is imported inside the functions, never when ``sca_plugin`` is imported, and the figures
are drawn on their own Agg canvas (``matplotlib.figure.Figure``, not ``pyplot``): no global backend
switch, no figure left open in pyplot's registry, works on machines without a display.

Also a command line: ``python -m sca_plugin.plots RUN_DIR [RUN_DIR ...] -o OUT_DIR`` (an alias of
``sca-prune report``).

The modules: :mod:`~sca_plugin.plots.runs` (loading and grouping runs), :mod:`~sca_plugin.plots.figures`
(the figures), :mod:`~sca_plugin.plots.report` (the report).
"""
from .figures import (plot_accuracy_vs_ratio, plot_channels_over_training, plot_final_channels,
                      plot_importance_distribution)
from .report import FIGURE_FILES, main, make_report, report, report_table
from .runs import RunNotFoundError, group_runs, load_runs

__all__ = [
    "load_runs",
    "group_runs",
    "plot_accuracy_vs_ratio",
    "plot_channels_over_training",
    "plot_final_channels",
    "plot_importance_distribution",
    "make_report",
    "report",
    "report_table",
    "FIGURE_FILES",
    "RunNotFoundError",
    "main",
]

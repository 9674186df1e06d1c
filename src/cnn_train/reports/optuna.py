"""The Optuna part of a sweep report: parameter importances and the objective trial by trial.

The study is rebuilt from the jobs: the search space from the sweeper's `params` (parsed by the Optuna
sweeper's own distribution builder), each finished job's swept values from its overrides, its value from
results.json. So the section needs neither a study storage nor the process that ran the search.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cnn_train.analysis import plots
from cnn_train.reports.page import figure

log = logging.getLogger(__name__)


def rebuild_study(sweeper: dict[str, Any], rows: list[dict[str, Any]]) -> Any:
    """An in-memory study holding one finished trial per job that returned a value."""
    import warnings

    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    parser = OverridesParser.create()
    space = {}
    for name, spec in (sweeper.get("params") or {}).items():
        override = parser.parse_override(f"{name}={spec}")
        if override.is_sweep_override():
            space[name] = create_optuna_distribution_from_override(override)
    finished = [r for r in rows if isinstance(r.get("metric"), (int, float))]
    drawn = [
        {o.key_or_group: o.value() for o in parser.parse_overrides(r["overrides"].split())} for r in finished
    ]
    # A param the command line fixed (data.batch_size=8 beside a choice over it) was not searched: dropped.
    space = {k: d for k, d in space.items() if all(_fits(d, params.get(k)) for params in drawn)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(direction=str(sweeper.get("direction", "maximize")))
    for r, given in zip(finished, drawn, strict=True):
        params = {k: given[k] for k in space}
        trial = optuna.trial.create_trial(params=params, distributions=space, value=r["metric"])
        study.add_trial(trial)
    return study


def _fits(distribution: Any, value: Any) -> bool:
    try:
        distribution.to_internal_repr(value)
    except (ValueError, TypeError):
        return False
    return value is not None and distribution._contains(distribution.to_internal_repr(value))


def history(sweep_dir: Path, study: Any, maximize: bool) -> dict[str, Any]:
    """Each trial's objective in trial order, and the best so far."""
    values = [t.value for t in study.trials]
    best = [max(values[: i + 1]) if maximize else min(values[: i + 1]) for i in range(len(values))]
    steps = list(range(len(values)))
    path = sweep_dir / "optuna_history.png"
    plots.plot_lines({"trial": (steps, values), "best so far": (steps, best)}, "trial", "objective", path)
    return figure(path, "objective per trial (finished trials, in trial order)")


def importances(sweep_dir: Path, study: Any) -> dict[str, Any] | str:
    """Mean-decrease-in-impurity importances (a random forest on the trials; at least two of them), or the
    line that says why there are none.

    Not Optuna 2.x's default fANOVA: its tree code fails on current scikit-learn (arrays where it expects
    scalars), and the hydra-optuna-sweeper pins Optuna below 3.
    """
    import optuna

    if len(study.trials) < 2:
        return "parameter importances need at least two finished trials"
    try:
        evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as e:  # e.g. every trial drew the same values
        return f"parameter importances could not be computed: {e}"
    path = sweep_dir / "optuna_importances.png"
    plots.plot_bars(dict(values), "importance (mean decrease in impurity)", path)
    return {
        "figure": figure(path, "parameter importances"),
        "rows": [[k, float(v)] for k, v in values.items()],
    }


def optuna_data(sweep_dir: Path, sweeper: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The context of sweep/optuna.html.j2 (and its figures)."""
    study = rebuild_study(sweeper, rows)
    if not study.trials:
        return {"error": None, "trials": 0}
    maximize = str(sweeper.get("direction", "maximize")) == "maximize"
    return {
        "error": None,
        "trials": len(study.trials),
        "best_value": study.best_trial.value,
        "best_params": study.best_trial.params,
        "importances": importances(sweep_dir, study),
        "history": history(sweep_dir, study, maximize),
    }

"""Finding runs: the newest of a flow, and the `champion` tag (which training run serving
loads and MonitorFlow watches).

A run becomes champion when its test mean accuracy beats the majority baseline and the
newest champion trained on the same dataset fingerprint. Older champions keep their tag, so
the history stays visible; serving takes the newest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from metaflow import Flow, Run, namespace
from metaflow.exception import MetaflowNotFound

CHAMPION = "champion"
# The flows whose runs become champions, are served and are monitored: one node or several.
TRAIN_FLOWS = ("TrainFlow", "TrainMultiNodeFlow")


def newest_runs(flow_names: Iterable[str], *tags: str) -> list[Run]:
    """The flows' runs with all `tags`, across namespaces, newest first; a flow never run has
    none."""
    namespace(None)
    runs = []
    for flow_name in flow_names:
        try:
            runs += Flow(flow_name).runs(*tags)
        except MetaflowNotFound:
            continue
    return sorted(runs, key=lambda r: r.created_at, reverse=True)


def current_champion(fingerprint: str | None = None, exclude: str | None = None) -> Run | None:
    """The newest run of a training flow tagged champion, across namespaces; with a
    fingerprint, the newest whose dataset has it."""
    for run in newest_runs(TRAIN_FLOWS, CHAMPION):
        if run.pathspec == exclude:
            continue
        if fingerprint is None:
            return run
        try:
            if run["prepare_data"].task.data.dataset["fingerprint"] == fingerprint:
                return run
        except (KeyError, MetaflowNotFound):
            continue
    return None


def champion_pathspec(advice: str) -> str:
    """The current champion's run, or a LookupError that ends with `advice`."""
    champion = current_champion()
    if champion is None:
        raise LookupError(f"no {' or '.join(TRAIN_FLOWS)} run is tagged {CHAMPION}: {advice}")
    return champion.pathspec


def resolve_model_run(model_run: str, advice: str) -> str:
    """The given training run, checked to exist, or else the current champion (a LookupError
    that ends with `advice` when there is none)."""
    namespace(None)
    return Run(model_run).pathspec if model_run else champion_pathspec(advice)


def headline(metrics: dict[str, Any]) -> str:
    return (
        f"test mean accuracy {metrics['mean_accuracy']:.4f} (majority baseline "
        f"{metrics['majority_baseline_accuracy']:.4f}), mean balanced accuracy "
        f"{metrics['mean_balanced_accuracy']:.4f}"
    )


def promote_if_better(
    run_pathspec: str, dataset: dict[str, Any], metrics: dict[str, Any]
) -> tuple[bool, str]:
    """Tag the run champion if it earns it; return (promoted, reason)."""
    if not metrics["beats_baseline"]:
        return False, "test mean accuracy does not beat the majority baseline"
    champion = current_champion(dataset["fingerprint"], exclude=run_pathspec)
    if champion is not None:
        best = champion["evaluate"].task.data.metrics["mean_accuracy"]
        ours = metrics["mean_accuracy"]
        if ours <= best:
            return (
                False,
                f"{champion.pathspec} stays champion ({best:.4f} >= {ours:.4f})",
            )
    namespace(None)
    Run(run_pathspec).add_tag(CHAMPION)
    previous = f"over {champion.pathspec}" if champion else "first on this dataset"
    return True, f"promoted to champion ({previous})"

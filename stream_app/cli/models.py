"""`rung train` and `rung evaluate`: the model commands (registered by stream_app.cli.app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scorers.models.defaults import ARTIFACTS_DIR, FALLBACK_DIR, PRIMARY_DIR

app = typer.Typer(help="Train and evaluate rung's primary and fallback models.",
                  no_args_is_help=True)


@app.command()
def train(
    out_dir: Annotated[Path, typer.Option(help="writes <out-dir>/primary and /fallback")] = (
        ARTIFACTS_DIR),
    seed: Annotated[int, typer.Option(help="simulator and training seed")] = 0,
) -> None:
    """Simulate the handbook dataset, train primary + fallback, write model dirs."""
    from scorers.lab.training.train import pick_device, train_all

    typer.echo(f"training on {pick_device()} (seed {seed}) ...")
    for model in train_all(out_dir, seed):
        m = model.manifest
        typer.echo(f"{m.name}: {m.version} -> {model.model_dir} "
                   f"review>={m.thresholds.review:.4f} block>={m.thresholds.block:.4f} "
                   f"delay-week AUC {m.metrics['valid_auc_roc']:.3f} "
                   f"AP {m.metrics['valid_average_precision']:.3f}")


@app.command()
def evaluate(
    primary_dir: Annotated[Path, typer.Option()] = PRIMARY_DIR,
    fallback_dir: Annotated[Path, typer.Option()] = FALLBACK_DIR,
    seed: Annotated[int, typer.Option(help="simulator seed (models: seed 0)")] = 0,
    plot: Annotated[Path, typer.Option(help="PR curves PNG")] = Path("docs/img/pr_curves.png"),
) -> None:
    """Every tier on the handbook protocol's test week: AUC, AP, Card Precision@100."""
    from scorers.lab.training.evaluate import evaluate as run_evaluation
    from scorers.lab.training.evaluate import markdown_table
    from scorers.lab.training.plots import plot_pr_curves

    result = run_evaluation(primary_dir, fallback_dir, seed)
    typer.echo(f"test week: {result.n_test} transactions, {result.n_fraud} frauds")
    typer.echo(markdown_table(result))
    typer.echo(f"PR curves -> {plot_pr_curves(result.y_true, result.scores, plot)}")


if __name__ == "__main__":
    app()

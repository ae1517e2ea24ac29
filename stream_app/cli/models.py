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
    out_dir: Annotated[Path, typer.Option(help="writes <out-dir>/primary, /fallback and "
                                                 "/selection.json")] = ARTIFACTS_DIR,
    seed: Annotated[int, typer.Option(help="simulator and training seed")] = 0,
    baselines: Annotated[bool, typer.Option(help="also choose the handbook baselines' "
                                                  "hyper-parameters (selection.json)")] = True,
    search: Annotated[bool, typer.Option(help="only compare the primary's candidate "
                                              "architectures on the validation protocol "
                                              "(writes nothing)")] = False,
) -> None:
    """Simulate the handbook dataset; choose epochs, thresholds and baseline settings on the
    validation period (days 101-121, before the test week); refit and write model dirs."""
    from scorers.lab.training.train import pick_device, search_primary, train_all

    typer.echo(f"training on {pick_device()} (seed {seed}) ...")
    if search:
        for name, (ap, epochs) in search_primary(seed).items():
            typer.echo(f"validation AP {ap:.4f} (best epoch {epochs:2d})  {name}")
        return
    for model in train_all(out_dir, seed, with_baselines=baselines):
        m = model.manifest
        typer.echo(f"{m.name}: {m.version} -> {model.model_dir} "
                   f"review>={m.thresholds.review:.4f} block>={m.thresholds.block:.4f} "
                   f"epochs {int(m.metrics['epochs'])}, validation-week "
                   f"AUC {m.metrics['valid_auc_roc']:.3f} "
                   f"AP {m.metrics['valid_average_precision']:.3f}")


@app.command()
def evaluate(
    primary_dir: Annotated[Path, typer.Option()] = PRIMARY_DIR,
    fallback_dir: Annotated[Path, typer.Option()] = FALLBACK_DIR,
    seed: Annotated[int, typer.Option(help="simulator seed (models: seed 0)")] = 0,
    plot: Annotated[Path, typer.Option(help="PR curves PNG")] = Path("docs/img/pr_curves.png"),
    selection: Annotated[Path, typer.Option(help="baseline hyper-parameters chosen by "
                                                 "`rung train` (selected afresh if missing)")]
    = ARTIFACTS_DIR / "selection.json",
    baselines: Annotated[bool, typer.Option(help="refit and score the handbook "
                                                  "baselines")] = True,
) -> None:
    """Every tier and the handbook baselines on the test week: AUC, AP, Card Precision@100.
    The last line is JSON."""
    from scorers.lab.training.evaluate import evaluate as run_evaluation
    from scorers.lab.training.evaluate import markdown_table, summary_json
    from scorers.lab.training.plots import plot_pr_curves

    result = run_evaluation(primary_dir, fallback_dir, seed, selection=selection,
                            with_baselines=baselines)
    typer.echo(f"test week: {result.n_test} transactions, {result.n_fraud} frauds")
    typer.echo(markdown_table(result))
    png = plot_pr_curves(result.y_true, result.scores, plot, dashed=result.baseline_params)
    typer.echo(f"PR curves -> {png}")
    typer.echo(summary_json(result))


if __name__ == "__main__":
    app()

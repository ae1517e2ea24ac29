"""`rung train` and `rung evaluate`, and the registry commands `rung models list | add | promote |
rollback | canary | canary-stop` (`registry_app`); registered by stream_app.cli.app."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from scorers.models.defaults import ARTIFACTS_DIR, FALLBACK_DIR, PRIMARY_DIR

if TYPE_CHECKING:
    from scorers.models.registry import Registry as RegistryT

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


# ---- `rung models ...`: the model registry (scorers/models/registry.py) ----------------------
registry_app = typer.Typer(help="The model registry: versions, promotion, rollback, canary.",
                           no_args_is_help=True)
Registry_ = Annotated[Path, typer.Option("--registry", envvar="RUNG_MODELS__REGISTRY_DIR",
                                         help="registry directory (versions/, promoted.json)")]
Reason = Annotated[str, typer.Option(help="recorded in promoted.json's events")]


def _open(registry: Path) -> RegistryT:
    from scorers.models.registry import Registry

    return Registry(registry)


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


LoadCheck = Annotated[bool, typer.Option(help="also load and warm the version on the CPU, "
                                              "as a worker will (else: the checksum only)")]


def _load_check(reg: RegistryT, version: str) -> None:
    """What a worker does before serving a version: checksum, load, warm-up on zeros with
    the pipeline's features (`stream_app.live.model_watch.load_version`), on the CPU."""
    from scorers.features import EVENT_FEATURE_NAMES, ONLINE_FEATURE_NAMES
    from scorers.models.torch_model import TorchModel
    from stream_app.live.model_watch import ModelRefused, load_version

    try:
        load_version(reg, version, lambda d: TorchModel.load(d, device="cpu"),
                     (*EVENT_FEATURE_NAMES, *ONLINE_FEATURE_NAMES))
    except ModelRefused as exc:
        _fail(exc)


@registry_app.command("list")
def list_versions(registry: Registry_) -> None:
    """Every version with its checksum status; which one is live, which is the canary."""
    reg = _open(registry)
    try:
        p = reg.pointer()
    except RuntimeError as exc:
        _fail(exc)
    canary = p.canary
    typer.echo(f"registry {registry}  generation {p.generation}")
    for v in reg.versions():
        role = ("LIVE" if v.version == p.champion else
                f"CANARY {canary.fraction:.1%} by {canary.key}"
                if canary is not None and v.version == canary.version else
                "previous" if v.version in p.previous else "")
        ap = v.manifest.metrics.get("valid_average_precision") if v.manifest else None
        status = "ok" if not v.problem else f"REFUSED: {v.problem}"
        typer.echo(f"{v.version:32s} {role:28s} {status}"
                   + (f"  valid AP {ap:.3f}" if ap is not None else ""))
    for e in p.events[-5:]:
        typer.echo(f"  {e.action:12s} {e.version} {e.reason}".rstrip())


@registry_app.command()
def add(model_dir: Annotated[Path, typer.Argument(help="a model dir: manifest.json + weights")],
        registry: Registry_,
        version: Annotated[str | None, typer.Option(help="version name (default: the "
                                                         "manifest's)")] = None,
        promote: Annotated[bool, typer.Option(help="promote it at once")] = False) -> None:
    """Copy a model directory in as a new version (checksum verified)."""
    from scorers.models.manifest import ModelIntegrityError
    from scorers.models.registry import RegistryError

    reg = _open(registry)
    try:
        name = reg.add(model_dir, version)
        typer.echo(f"added {name}")
        if promote:
            typer.echo(f"promoted {reg.promote(name, 'added').champion}")
    except (RegistryError, ModelIntegrityError, OSError) as exc:
        _fail(exc)


@registry_app.command("promote")
def promote_version(version: str, registry: Registry_, reason: Reason = "",
                    load_check: LoadCheck = True) -> None:
    """Make VERSION live (its checksum is verified first); workers swap without restart."""
    from scorers.models.manifest import ModelIntegrityError
    from scorers.models.registry import RegistryError

    reg = _open(registry)
    if load_check:
        _load_check(reg, version)
    try:
        p = reg.promote(version, reason)
    except (RegistryError, ModelIntegrityError) as exc:
        _fail(exc)
    typer.echo(f"live: {p.champion} (generation {p.generation})")


@registry_app.command()
def rollback(registry: Registry_, reason: Reason = "") -> None:
    """Make the previous live version live again."""
    from scorers.models.manifest import ModelIntegrityError
    from scorers.models.registry import RegistryError

    try:
        p = _open(registry).rollback(reason)
    except (RegistryError, ModelIntegrityError) as exc:
        _fail(exc)
    typer.echo(f"live: {p.champion} (generation {p.generation})")


@registry_app.command()
def canary(version: str, registry: Registry_,
           fraction: Annotated[float, typer.Option(help="share of entities, (0, 1]")] = 0.05,
           key: Annotated[str, typer.Option(help="customer_id | terminal_id")] = "customer_id",
           min_records: Annotated[int, typer.Option(help="rows before the rule may trip")] = 200,
           max_error_rate: Annotated[float, typer.Option()] = 0.05,
           max_review_rate_delta: Annotated[float, typer.Option(
               help="candidate review rate minus the champion's")] = 0.05,
           window_s: Annotated[float, typer.Option()] = 300.0, reason: Reason = "",
           load_check: LoadCheck = True) -> None:
    """Route FRACTION of entities (stable hash of KEY) to VERSION next to the live one,
    with an automatic rollback rule."""
    from scorers.models.canary import RollbackBounds
    from scorers.models.manifest import ModelIntegrityError
    from scorers.models.registry import RegistryError

    reg = _open(registry)
    if load_check:
        _load_check(reg, version)
    try:
        bounds = RollbackBounds(min_records, max_error_rate, max_review_rate_delta, window_s)
        p = reg.start_canary(version, fraction, key, bounds, reason)
    except (RegistryError, ModelIntegrityError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"canary: {version} on {fraction:.1%} of {key} next to {p.champion} "
               f"(generation {p.generation})")


@registry_app.command("canary-stop")
def canary_stop(registry: Registry_, reason: Reason = "stopped by hand") -> None:
    """End the canary: every entity back on the live version."""
    from scorers.models.registry import RegistryError

    try:
        p = _open(registry).stop_canary(reason)
    except RegistryError as exc:
        _fail(exc)
    typer.echo(f"no canary; live: {p.champion} (generation {p.generation})")


if __name__ == "__main__":
    app()

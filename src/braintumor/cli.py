"""The ``braintumor`` command line: thin Typer commands over the Python API.

Library errors become one-line messages: exit code 2 for usage/data errors, 1 for other failures.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import BrainTumorError

app = typer.Typer(
    name="braintumor", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Train, evaluate, explain and serve brain-MRI tumour classifiers.\n\n"
         "Quick start: braintumor synth data/phantoms && braintumor train data/phantoms --out runs/demo",
    rich_markup_mode="rich",
)
console = Console(stderr=False)
err_console = Console(stderr=True)


def handle_errors(fn):
    """Turn library errors into one line on stderr and an exit code; never a traceback for bad input."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrainTumorError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def metrics_table(metrics: dict, title: str = "metrics") -> Table:
    from .evaluate import HEADLINE

    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in HEADLINE:
        v = metrics.get(k)
        if v is not None:
            t.add_row(k, f"{v:.3f}")
    return t


@app.command()
@handle_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write (created)."),
    n: int = typer.Option(200, "--n", help="Number of images."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    tumour_fraction: float = typer.Option(0.5, help="Fraction of images with a lesion."),
):
    """Write synthetic brain-MRI phantoms: OUT/yes, OUT/no and lesion masks in OUT/_masks/yes.

    Example: braintumor synth data/phantoms --n 200 --size 128 --seed 0
    """
    from rich.progress import track  # noqa: F401

    from .data.synthetic import write_phantoms

    if n < 4 or size < 32:
        raise typer.BadParameter("need --n >= 4 and --size >= 32")
    with console.status(f"writing {n} phantoms to {out}"):
        counts = write_phantoms(out, n=n, size=size, seed=seed, tumour_fraction=tumour_fraction)
    console.print(f"wrote {sum(counts.values())} phantoms to {out} ({counts}); masks in {out}/_masks/yes")


@app.command()
@handle_errors
def train(
    data_dir: Path | None = typer.Argument(None, help="Folder with one sub-folder per class."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (see `braintumor models`)."),
    img_size: int | None = typer.Option(None, "--img-size", help="Input side in pixels (default 224)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs of the main phase (fine-tuning / scratch)."),
    epochs_frozen: int | None = typer.Option(None, "--epochs-frozen", help="Epochs with the backbone frozen."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate of the main phase."),
    lr_frozen: float | None = typer.Option(None, "--lr-frozen", help="Learning rate of the frozen phase."),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<time>-<data>-<model>)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; options given here override it."),
    val_dir: Path | None = typer.Option(None, "--val-dir", help="Separate labelled validation folder."),
    val_fraction: float | None = typer.Option(None, "--val-fraction", help="Validation share (default 0.2)."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained", help="Use ImageNet weights."),
    crop: bool | None = typer.Option(None, "--crop/--no-crop", help="Crop to the brain before resizing."),
    strict: bool | None = typer.Option(None, "--strict", help="Stop at the first unreadable file."),
    class_weights: bool | None = typer.Option(None, "--class-weights", help="Weight the loss by class frequency."),
    augment: bool | None = typer.Option(None, "--augment/--no-augment"),
    group: bool | None = typer.Option(None, "--group/--no-group",
                                      help="Keep duplicate groups on one side of the split (default on)."),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience (0 disables)."),
    precision: str | None = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1..."),
):
    """Train a classifier on DATA_DIR/<class>/<images> and write a run folder.

    Example: braintumor train data/brain_mri_yes_no --model efficientnet-lite0 --out runs/navoneel
    """
    from .config import TrainConfig
    from .train import train as run_train

    if resume is not None:
        result = run_train(None, out=resume, resume=True, console=console)
    else:
        base = TrainConfig.load(config).to_dict() if config else TrainConfig().to_dict()
        given = dict(data_dir=str(data_dir) if data_dir else None, model=model, img_size=img_size, epochs=epochs,
                     epochs_frozen=epochs_frozen, lr=lr, lr_frozen=lr_frozen, batch_size=batch_size,
                     val_dir=str(val_dir) if val_dir else None, val_fraction=val_fraction, seed=seed,
                     pretrained=pretrained, crop_brain=crop, strict=strict, class_weights=class_weights,
                     augment=augment, group_duplicates=group, patience=patience, precision=precision,
                     device=device)
        base.update({k: v for k, v in given.items() if v is not None})
        if not base.get("data_dir"):
            raise typer.BadParameter("give DATA_DIR (or data_dir in --config, or --resume RUN_DIR)")
        result = run_train(TrainConfig.from_dict(base), out=out, console=console)
    console.print(metrics_table(result.metrics, "validation (best checkpoint)"))
    console.print(f"run folder: [bold]{result.run_dir}[/bold]")


@app.command()
@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `braintumor train`."),
    data: Path = typer.Option(..., "--data", "-d", help="Labelled folder: <class>/<images>."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default RUN/evaluations/<name>)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file."),
):
    """Metrics (accuracy, F1, ROC-AUC, MCC, per class) and plots of a trained model on a labelled folder.

    Example: braintumor evaluate runs/navoneel --data data/holdout
    """
    from .evaluate import evaluate as run_eval

    def skip(path, reason):
        err_console.print(f"[yellow]skipped[/yellow] {path}: {reason}")

    with console.status("evaluating"):
        res = run_eval(run_dir, data, out, strict=strict, on_skip=skip)
    console.print(metrics_table(res.metrics, f"{data} ({res.metrics['n']} images)"))
    if res.skipped:
        console.print(f"{len(res.skipped)} unreadable file(s) skipped")
    console.print(f"written to [bold]{res.out_dir}[/bold]")


@app.command()
@handle_errors
def models():
    """List the registered models.

    Example: braintumor models
    """
    from .models import available_models, get_spec

    t = Table(show_header=True)
    for col in ("name", "pretrained", "Grad-CAM layer", "description"):
        t.add_column(col)
    for name in available_models():
        s = get_spec(name)
        t.add_row(name, "bundled" if s.pretrained_default else ("download" if s.pretrained_source else "-"),
                  s.target_layer, s.description)
    console.print(t)


def main() -> None:
    app(prog_name="braintumor")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)

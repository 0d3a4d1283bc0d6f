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

from .display import markup
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
            err_console.print(f"[red]error:[/red] {markup(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def metrics_table(metrics: dict, title: str = "metrics") -> Table:
    from .evaluation import HEADLINE

    ci = metrics.get("ci") or {}
    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value [95% CI]" if ci else "value", justify="right")
    for k in HEADLINE:
        v = metrics.get(k)
        if v is not None:
            c = ci.get(k)
            t.add_row(k, f"{v:.3f} [{c['low']:.3f}, {c['high']:.3f}]" if c else f"{v:.3f}")
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
    from .errors import UsageError
    from .evaluation import check_out_folder

    check_out_folder(out, what="phantoms go into a new folder", flag="OUT")  # a file, a run folder: refused
    if out.is_dir() and any(out.glob("*/phantom_*.png")):
        raise UsageError(f"OUT {markup(out)} already holds phantoms; pick a new folder (nothing is overwritten)")
    with console.status(f"writing {n} phantoms to {out}"):
        counts = write_phantoms(out, n=n, size=size, seed=seed, tumour_fraction=tumour_fraction)
    console.print(f"wrote {sum(counts.values())} phantoms to {markup(out)} ({counts}); masks in "
                  f"{markup(out)}/_masks/yes", highlight=False)


def _base_config(config: Path | None, recipe: str | None):
    """The config options start from: a YAML file, a shipped recipe, or the defaults.

    The file is read safely and checked through the schema (:func:`braintumor.schema.read_config_file`,
    :func:`~braintumor.schema.validate_config`): a folder, a binary file, a non-mapping or a bad value is one line
    (exit 2) before any work starts.
    """
    from .config import TrainConfig
    from .errors import UsageError

    if config and recipe:
        raise UsageError("give --config or --recipe, not both")
    return TrainConfig.load(config) if config else TrainConfig.recipe(recipe) if recipe else TrainConfig()


@app.command()
@handle_errors
def train(
    data_dirs: list[Path] | None = typer.Argument(None, help="Folder(s) with one sub-folder per class; several "
                                                  "folders are several sources (map their classes with --classes)."),
    classes: list[str] | None = typer.Option(None, "--classes", help="CLASS=FOLDER[,FOLDER...], once per class: "
                                             "which class folders of the sources make up each class of the run."),
    balance_sources: bool | None = typer.Option(None, "--balance-sources/--no-balance-sources",
                                                help="Draw training epochs so that every source counts equally."),
    mri_augment: bool | None = typer.Option(None, "--mri-augment/--no-mri-augment", help="MRI-specific "
                                            "augmentation (bias field, Gibbs, spikes, gamma, inversion, low "
                                            "resolution, JPEG, orientation) on top of the usual."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (see `braintumor models`)."),
    img_size: int | None = typer.Option(None, "--img-size", help="Input side in pixels (default 224)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs of the main phase (fine-tuning / scratch)."),
    epochs_frozen: int | None = typer.Option(None, "--epochs-frozen", help="Epochs with the backbone frozen."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate of the main phase."),
    lr_frozen: float | None = typer.Option(None, "--lr-frozen", help="Learning rate of the frozen phase."),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<time>-<data>-<model>)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; options given here override it."),
    recipe: str | None = typer.Option(None, "--recipe", help="A shipped recipe as the base config, e.g. "
                                      "tumour-detector (several sources -> tumour / no_tumour)."),
    val_dir: Path | None = typer.Option(None, "--val-dir", help="Separate labelled validation folder."),
    val_fraction: float | None = typer.Option(None, "--val-fraction", help="Validation share (default 0.2)."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained", help="Use ImageNet weights."),
    crop: bool | None = typer.Option(None, "--crop/--no-crop", help="Crop to the brain before resizing."),
    intensity: str | None = typer.Option(None, "--intensity", help="none (default) or percentile: stretch each "
                                         "image's head intensities (0.5-99.5th percentiles) to the full range."),
    strict: bool | None = typer.Option(None, "--strict", help="Stop at the first unreadable file."),
    class_weights: bool | None = typer.Option(None, "--class-weights", help="Weight the loss by class frequency."),
    augment: bool | None = typer.Option(None, "--augment/--no-augment"),
    group: bool | None = typer.Option(None, "--group/--no-group",
                                      help="Keep duplicate groups on one side of the split (default on)."),
    group_by: str | None = typer.Option(None, "--group-by", help="Patient groups kept on one side of every split: "
                                        "id-runs, id-blocks:N (slices numbered per patient, e.g. figshare: "
                                        "id-blocks:40) or a CSV file path,group."),
    masks: Path | None = typer.Option(None, "--masks", help="Folder of tumour masks (<class>/<name> or <name>, "
                                      "matched by file name, any image extension): adds a tumour-map decoder."),
    mask_weight: float | None = typer.Option(None, "--mask-weight", help="Weight of the mask loss (default 1)."),
    erase_lesions: bool | None = typer.Option(None, "--erase-lesions/--no-erase-lesions", help="With --masks: each "
                                              "masked tumour image also trains as a no-tumour image with its lesion "
                                              "erased (mirrored tissue of the other hemisphere)."),
    paste_lesions: bool | None = typer.Option(None, "--paste-lesions/--no-paste-lesions", help="With --masks: the "
                                              "lesion of each masked tumour image is also pasted into a no-tumour "
                                              "image, which trains as a tumour image."),
    paste_per_normal: int | None = typer.Option(None, "--paste-per-normal", help="With --paste-lesions: at most N "
                                                "lesions pasted into one no-tumour image (default 0: no cap)."),
    paste_bright: float | None = typer.Option(None, "--paste-bright", help="With --paste-lesions: the share (0-1) "
                                              "of pasted lesions made bright throughout, a crude T2/FLAIR look "
                                              "(default 0)."),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience (0 disables)."),
    mixup: float | None = typer.Option(None, "--mixup", help="Mixup alpha (e.g. 0.2): train on mixtures of two "
                                       "images and their labels; 0 disables (default)."),
    swa: bool | None = typer.Option(None, "--swa/--no-swa", help="Keep the average of the fine-tuning phase's "
                                    "second-half weights instead of its lowest-validation-loss epoch (default on)."),
    precision: str | None = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1..."),
    target_sensitivity: float | None = typer.Option(
        None, "--target-sensitivity", help="Binary: pick the decision threshold reaching this validation "
        "sensitivity (e.g. 0.95); default argmax."),
    slices: str | None = typer.Option(None, "--slices", help="Volumes (NIfTI, multi-frame DICOM, DICOM series "
                                      "folders): middle, all or K evenly spaced slices each (default middle)."),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start from the backbone of this run folder "
                                          "(same model; e.g. one trained on a larger MRI set) instead of ImageNet."),
    exclude_copies_of: Path | None = typer.Option(
        None, "--exclude-copies-of", help="Leave out every image with a copy in this folder (pretrain here, "
        "test there without leakage)."),
    ood_check: bool | None = typer.Option(None, "--ood-check/--no-ood-check", help="Fit the input check (is an "
                                          "input like the training data?) after training (default on)."),
    min_confidence: float | None = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                help="Abstention: below this calibrated probability of the "
                                                     "predicted class the verdict is 'uncertain' (default 0.6)."),
    track: str | None = typer.Option(None, "--track", help="Also log the run to mlflow (MLFLOW_TRACKING_URI, else "
                                     "./mlruns/mlflow.db) or tensorboard (RUN/tensorboard/); needs "
                                     "pip install 'braintumor[track]'."),
):
    """Train a classifier on DATA_DIR/<class>/<images> (one folder or several sources) and write a run folder.

    Example: braintumor train data/brain_mri_yes_no --model efficientnet-lite0 --out runs/navoneel

    Several sources: braintumor train data/nickparvar/Training data/brain_mri_yes_no
    --classes tumour=glioma,meningioma,pituitary,yes --classes no_tumour=notumor,no --out runs/detector

    With tumour masks (a tumour map beside the class): braintumor train data/figshare/images
    --masks data/figshare/masks --group-by id-blocks:40 --out runs/figshare-seg

    Tracked in MLflow (see docs/guide/tracking.md): braintumor train data/brain_mri_yes_no --track mlflow
    """
    from .config import TrainConfig
    from .training import train as run_train

    if resume is not None:
        result = run_train(None, out=resume, resume=True, console=console)
    else:
        base = _base_config(config, recipe).to_dict()
        dirs = [str(d) for d in data_dirs or []]
        given = dict(data_dir=(dirs[0] if len(dirs) == 1 else dirs) or None, classes=classes or None,
                     balance_sources=balance_sources, mri_augment=mri_augment, model=model, img_size=img_size,
                     epochs=epochs, epochs_frozen=epochs_frozen, lr=lr, lr_frozen=lr_frozen, batch_size=batch_size,
                     val_dir=str(val_dir) if val_dir else None, val_fraction=val_fraction, seed=seed,
                     pretrained=pretrained, crop_brain=crop, intensity=intensity, strict=strict,
                     class_weights=class_weights, augment=augment, group_duplicates=group, patience=patience, swa=swa,
                     group_by=group_by, masks=str(masks) if masks else None, mask_weight=mask_weight,
                     erase_lesions=erase_lesions, paste_lesions=paste_lesions, paste_per_normal=paste_per_normal,
                     paste_bright=paste_bright, mixup=mixup, precision=precision,
                     device=device, target_sensitivity=target_sensitivity, slices=slices,
                     init_from=str(init_from) if init_from else None,
                     exclude_copies_of=str(exclude_copies_of) if exclude_copies_of else None,
                     ood_check=ood_check, min_confidence=min_confidence, track=track)
        base.update({k: v for k, v in given.items() if v is not None})
        if not base.get("data_dir"):
            raise typer.BadParameter("give DATA_DIR (or data_dir in --config, or --resume RUN_DIR)")
        result = run_train(TrainConfig.from_dict(base), out=out, console=console)
    if not result.metrics:  # a non-zero rank of a torchrun job: rank 0 reports
        return
    console.print(metrics_table(result.metrics, "validation (best checkpoint)"))
    th = result.metadata.get("threshold_info")
    if th:
        console.print(f"threshold {th['threshold']:.4f} reaches sensitivity {th['sensitivity']:.3f} (target "
                      f"{th['target_sensitivity']}) at specificity {th['specificity'] or 0:.3f} on validation "
                      f"(argmax: {th['argmax_sensitivity']:.3f} / {th['argmax_specificity'] or 0:.3f})")
    console.print(f"run folder: [bold]{markup(result.run_dir)}[/bold]", highlight=False)


@app.command()
@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `braintumor train`."),
    data: Path = typer.Option(..., "--data", "-d", help="Labelled folder: <class>/<images>."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default RUN/evaluations/<name>)."),
    classes: list[str] | None = typer.Option(None, "--classes", help="CLASS=NAME[,NAME...], once per class: "
                                             "map the model's classes and the folder's onto common classes."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file."),
    backend: str = typer.Option("auto", "--backend",
                                help="Engine: auto (onnxruntime on the CPU, via RUN/model.onnx exported on demand; "
                                     "else torch), onnx or torch. Always FP32 (never the INT8 copy)."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation: each image's probabilities (and "
                                                  "tumour map) averaged with its left-right mirror image's."),
    with_runs: list[Path] | None = typer.Option(None, "--with", help="Another run folder (repeat for more): "
                                                "evaluate the ensemble, RUN's and these runs' probabilities and "
                                                "tumour maps averaged (same classes and preprocessing; needs --out)."),
):
    """Metrics (accuracy, F1, ROC-AUC, MCC, per class) and plots of a trained model on a labelled folder.

    Example: braintumor evaluate runs/navoneel --data data/holdout

    Other class names (a 4-class model as a tumour detector on a yes/no folder): braintumor evaluate runs/nick
    --data data/brain_mri_yes_no --classes tumour=glioma,meningioma,pituitary,yes --classes no_tumour=notumor,no

    An ensemble of two trainings: braintumor evaluate runs/seed0 --with runs/seed1 --data data/holdout --out
    evaluations/ensemble
    """
    from .errors import UsageError
    from .evaluation import evaluate as run_eval

    def skip(path, reason):
        err_console.print(f"[yellow]skipped[/yellow] {markup(path)}: {markup(reason)}", highlight=False)

    model = run_dir
    if with_runs:
        if out is None:
            raise UsageError("--with evaluates an ensemble, whose figures belong to no one run: give --out")
        from .ensemble import load_ensemble
        from .evaluation import check_out_folder

        check_out_folder(out, data_dirs=[data], runs=[run_dir, *with_runs], what="evaluations go into a folder")
        model = load_ensemble([run_dir, *with_runs], backend=backend, notice=_notice, precision="fp32")
    with console.status("evaluating"):
        res = run_eval(model, data, out, classes=classes or None, strict=strict, on_skip=skip, backend=backend,
                       notice=_notice, tta=tta)
    console.print(metrics_table(res.metrics, f"{markup(data)} ({res.metrics['n']} images)"))
    chk = res.metrics.get("input_check")
    if chk:
        ans = chk.get("answered") or {}
        acc = f"; accuracy on the {ans['n']} answered: {ans['accuracy']:.3f}" if ans.get("accuracy") is not None \
            else ""
        console.print(f"input check: flagged {chk['flagged']:.1%} (not_brain_mri {chk['not_brain_mri']:.1%}, "
                      f"unfamiliar {chk['unfamiliar']:.1%}), uncertain {chk['uncertain']:.1%}{acc} "
                      f"(metrics above: all images)")
    det = (res.metrics.get("tumour_map") or {}).get("detector")
    if det:
        console.print(_detector_line("tumour map as a detector", det))
    either = (res.metrics.get("tumour_map") or {}).get("head_or_map")
    if either:
        console.print(_either_line("class head or tumour map", either))
    if res.skipped:
        console.print(f"{len(res.skipped)} unreadable file(s) skipped")
    if not with_runs and res.out_dir is not None and \
            Path(res.out_dir).resolve().parent == (Path(run_dir) / "evaluations").resolve():
        from .report import CHECK_SECTION, refresh_report_section

        refresh_report_section(run_dir, CHECK_SECTION)  # its input-check section lists the run's evaluations
    console.print(f"written to [bold]{markup(res.out_dir)}[/bold]", highlight=False)


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


@app.command()
@handle_errors
def cv(
    data_dirs: list[Path] = typer.Argument(..., help="Folder(s) with one sub-folder per class (several: sources)."),
    classes: list[str] | None = typer.Option(None, "--classes", help="CLASS=FOLDER[,FOLDER...], once per class: "
                                             "which class folders of the sources make up each class."),
    by_source: bool = typer.Option(False, "--by-source", help="Leave one source out: train on the others, test on "
                                   "it (minus copies); beside each model's within-source figures."),
    balance_sources: bool | None = typer.Option(None, "--balance-sources/--no-balance-sources",
                                                help="Draw training epochs so that every source counts equally."),
    mri_augment: bool | None = typer.Option(None, "--mri-augment/--no-mri-augment",
                                            help="MRI-specific augmentation on top of the usual."),
    intensity: str | None = typer.Option(None, "--intensity", help="none or percentile (see train --help)."),
    class_weights: bool | None = typer.Option(None, "--class-weights", help="Weight the loss by class frequency."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate of the main phase."),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of folds."),
    repeats: int = typer.Option(1, "--repeats", help="Repeat the k-fold with new shuffles."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (see `braintumor models`)."),
    img_size: int | None = typer.Option(None, "--img-size", help="Input side in pixels (default 224)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs of the main phase (fine-tuning / scratch)."),
    epochs_frozen: int | None = typer.Option(None, "--epochs-frozen", help="Epochs with the backbone frozen."),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    seed: int | None = typer.Option(None, "--seed"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML training config; options override it."),
    recipe: str | None = typer.Option(None, "--recipe", help="A shipped recipe as the base config (tumour-detector)."),
    target_sensitivity: float | None = typer.Option(None, "--target-sensitivity",
                                                    help="Binary: per-fold threshold reaching this sensitivity."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/<time>-<data>-cv)."),
    show_leakage: bool = typer.Option(False, "--show-leakage",
                                      help="Also run a naive image-level split and report the inflation."),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start every fold from the backbone of this "
                                          "run folder (trained without copies of DATA_DIR: --exclude-copies-of)."),
    masks: Path | None = typer.Option(None, "--masks", help="Tumour masks: every fold trains a tumour-map decoder "
                                      "too (see train --help)."),
    erase_lesions: bool | None = typer.Option(None, "--erase-lesions/--no-erase-lesions", help="With --masks: "
                                              "erased copies of masked tumour images train as no-tumour images."),
    paste_lesions: bool | None = typer.Option(None, "--paste-lesions/--no-paste-lesions", help="With --masks: "
                                              "no-tumour images with a pasted lesion train as tumour images."),
    paste_per_normal: int | None = typer.Option(None, "--paste-per-normal", help="With --paste-lesions: at most N "
                                                "lesions per no-tumour image (0: no cap)."),
    paste_bright: float | None = typer.Option(None, "--paste-bright", help="With --paste-lesions: the share of "
                                              "pasted lesions made bright (a crude T2/FLAIR look)."),
    hold_out: list[str] | None = typer.Option(None, "--hold-out", help="With --by-source: leave out only this "
                                              "source (its folder path or name; repeat for several)."),
    group_by: str | None = typer.Option(None, "--group-by", help="Patient groups kept inside one fold: id-runs, "
                                        "id-blocks:N or a CSV path,group."),
    track: str | None = typer.Option(None, "--track", help="Also log to mlflow (one run, a nested run per fold) or "
                                     "tensorboard (each fold's RUN/tensorboard/); see train --help."),
):
    """Cross-validate: one model per fold (group-aware), mean and 95% CI per metric, pooled out-of-fold results.

    Example: braintumor cv data/brain_mri_yes_no --folds 5 --out runs/cv-navoneel

    Across sources (train on all but one, test on the one left out): braintumor cv data/nickparvar/Training
    data/brain_mri_yes_no --classes tumour=glioma,meningioma,pituitary,yes --classes no_tumour=notumor,no --by-source

    Tracked in MLflow (a parent run, one nested run per fold): braintumor cv data/brain_mri_yes_no --track mlflow
    """
    from .crossval import CV_METRICS, LABEL_CHECK_BELOW
    from .crossval import cv as run_cv
    from .stats import format_ci

    cfg = _base_config(config, recipe)
    given = dict(model=model, img_size=img_size, epochs=epochs, epochs_frozen=epochs_frozen, batch_size=batch_size,
                 seed=seed, target_sensitivity=target_sensitivity, classes=classes or None,
                 balance_sources=balance_sources, mri_augment=mri_augment, intensity=intensity, lr=lr,
                 class_weights=class_weights, init_from=str(init_from) if init_from else None,
                 masks=str(masks) if masks else None, erase_lesions=erase_lesions, paste_lesions=paste_lesions,
                 paste_per_normal=paste_per_normal, paste_bright=paste_bright, group_by=group_by, track=track)
    data = [str(d) for d in data_dirs]
    res = run_cv(data[0] if len(data) == 1 else data, folds, repeats=repeats, config=cfg, out=out,
                 show_leakage=show_leakage, console=console, by_source=by_source,
                 hold_out=[str(h) for h in hold_out] if hold_out else None,
                 **{k: v for k, v in given.items() if v is not None})
    if by_source:
        _print_by_source(res)
        return
    t = Table(title=f"{folds}-fold CV ({'group-aware' if res.grouped else 'image-level'}"
                    + (f", {res.n_groups} groups" if res.n_groups else "") + ")", show_header=True)
    t.add_column("metric")
    t.add_column("mean [95% CI] over folds", justify="right")
    t.add_column("pooled [95% bootstrap CI]", justify="right")
    if res.leakage:
        t.add_column("naive split", justify="right")
        t.add_column("inflation", justify="right")
    for k in CV_METRICS:
        s = res.summary.get(k, {})
        if s.get("mean") is None:
            continue
        c = res.pooled_ci.get(k)
        row = [k, format_ci(s["mean"], s["low"], s["high"]),
               format_ci(c["estimate"], c["low"], c["high"]) if c else format_ci(res.pooled.get(k))]
        if res.leakage:
            leak = res.leakage.get(k)
            row += [f"{leak['naive']:.3f}", f"{leak['inflation']:+.3f}"] if leak else ["-", "-"]
        t.add_row(*row)
    console.print(t)
    secs = ", ".join(f"{f['seconds']:.0f}" for f in res.folds)
    console.print(f"wall time per fold (s): {secs}")
    ic = res.input_check
    if ic and ic["n"]:
        lo, hi = ic["flagged_ci"]
        console.print(f"input check: {ic['counts']['flagged']} of {ic['n']} held-out images flagged "
                      f"({100 * ic['flagged']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]), each by the check of the fold "
                      "that never saw it: its false-alarm rate on images like these")
    check = res.labels_to_check
    if check:
        console.print(f"{len(check)} image(s) whose out-of-fold model gives their own label p < "
                      f"{LABEL_CHECK_BELOW}: check these labels first (all in cv.json and report.html)")
        for d in check[:10]:
            console.print(f"  {markup(d['path'])}  label {markup(d['label'])}, p = {d['p_label']:.2f}, predicted "
                          f"{markup(d['predicted'])}", highlight=False)
    console.print(f"results: [bold]{markup(res.out_dir)}[/bold] (cv.json, folds.csv, oof_predictions.csv, "
                  "report.html)", highlight=False)


def _detector_line(what: str, det: dict) -> str:
    """One console line for a tumour map scored as a detector (``metrics.json`` ``tumour_map.detector``)."""
    return (f"{what} (a region >= 0.5 found): sensitivity {det['sensitivity']:.3f}, specificity "
            f"{det['specificity']:.3f}, ROC-AUC of its maximum {det['roc_auc']:.3f}")


def _either_line(what: str, m: dict) -> str:
    """One console line for the rule "the head says tumour or the map outlines a region" (``head_or_map``)."""
    return (f"{what} (tumour if either says so): sensitivity {m['sensitivity']:.3f}, specificity "
            f"{m['specificity']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f}")


def _print_by_source(res) -> None:
    t = Table(title="leave one source out (95% CI)", show_header=True)
    for col in ("trained on", "tested on", "kind", "n", "bal. acc.", "sens.", "spec.", "AUC", "flagged"):
        t.add_column(col, justify="left" if col in ("trained on", "tested on", "kind") else "right")
    for r in res.rows:
        m, ci = r["metrics"], r["ci"]
        ba, c = m.get("balanced_accuracy"), ci.get("balanced_accuracy")
        cells = ["-" if ba is None else f"{ba:.3f} [{c['low']:.2f}, {c['high']:.2f}]" if c else f"{ba:.3f}"]
        cells += ["-" if m.get(k) is None else f"{m[k]:.3f}" for k in ("sensitivity", "specificity", "roc_auc")]
        cells.append("-" if r.get("flagged") is None else f"{100 * r['flagged']:.1f}%")
        t.add_row(" + ".join(r["trained_on"]), r["tested_on"], r["kind"], str(r["n"]), *cells)
    console.print(t)
    for r in res.rows:
        det = r.get("map_detector")
        if det:  # runs trained with masks: the tumour map as a detector on the held-out source
            console.print(_detector_line(f"tumour map on {markup(r['tested_on'])}", det))
        if r.get("head_or_map"):
            console.print(_either_line(f"class head or tumour map on {markup(r['tested_on'])}", r["head_or_map"]))
    for s in res.skipped:
        console.print(f"[yellow]not left out[/yellow] {markup(s['held_out'])}: {markup(s['reason'])}")
    for f in res.findings:
        console.print(f"- {markup(f)}")
    console.print(f"results: [bold]{markup(res.out_dir)}[/bold] (cv.json, by_source.csv, report.html, folds/)",
                  highlight=False)


# ------------------------------------------------------------------------ predict / export / serve


def _expand_paths(paths: list[str], slices=None) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> image files; a missing plain path is kept (it becomes an error row).

    ``slices``: volumes become these slice references (``None``: one entry per volume, its middle slice).
    """
    from .data.discover import list_images

    files: list[Path] = []
    empty: list[str] = []
    for p in paths:
        found = list_images(p, slices=slices)
        if found:
            files.extend(found)
        elif not any(ch in p for ch in "*?[") and not Path(p).is_dir():
            files.append(Path(p))
        else:
            empty.append(p)
    return files, empty


def _check_out_file(out: Path, model: Path, inputs: list[Path]) -> None:
    """``--out FILE`` of predict, checked before any work: not a folder, in a folder that can be written, and none
    of the files that matter (an input image, the model, an existing file of the run folder).

    Raises:
        UsageError: one line naming --out and why.
    """
    from .display import printable
    from .errors import UsageError
    from .evaluation import check_writable_place

    shown = printable(out)
    if out.is_dir():
        raise UsageError(f"--out {shown}: is a folder; give a file name (e.g. predictions.csv)")
    check_writable_place(out, out.absolute().parent)
    if not out.exists():
        return
    target = out.resolve()
    if target == model.resolve() or (model.is_dir() and target.is_relative_to(model.resolve())):
        raise UsageError(f"--out {shown} is a file of the model {printable(model)}: it would be overwritten; "
                         "write the predictions elsewhere")
    if any(f.exists() and target == f.resolve() for f in inputs):
        raise UsageError(f"--out {shown} is one of the input images: it would be overwritten; write the "
                         "predictions elsewhere")


def _prediction_rows(preds, classes: list[str]) -> list[list[str]]:
    return [[p.path, p.label or "", *[f"{p.probabilities[c]:.6f}" if p.ok else "" for c in classes], p.error or ""]
            for p in preds]


#: The input check's CSV columns (after ``error``).
CHECK_COLUMNS = ["verdict", "in_distribution", "ood_score", "ood_reasons"]


def _check_cells(p) -> list[str]:
    ind = "" if p.in_distribution is None else str(int(p.in_distribution))
    return [p.verdict or "", ind, "" if p.ood_score is None else f"{p.ood_score:.4f}", "; ".join(p.ood_reasons)]


def _format_predictions(preds, predictor, fmt: str) -> str:
    """The predictions as text (any file name: :func:`~braintumor.display.printable`, exact bytes in
    ``path_bytes`` where it had to change the name)."""
    import io
    import json

    from .display import csv_text, json_names

    classes = predictor.classes
    if fmt == "json":
        return json.dumps(json_names({"model": predictor.model_info(), "n": len(preds),
                                      "n_failed": sum(not p.ok for p in preds),
                                      "predictions": [p.to_dict() for p in preds]}), indent=2) + "\n"
    if fmt == "csv":
        return csv_text(["path", "label", *[f"p_{c}" for c in classes], "error", *CHECK_COLUMNS],
                        [row + _check_cells(p) for p, row in zip(preds, _prediction_rows(preds, classes),
                                                                 strict=True)], lineterminator="\n")
    buf_console = Console(record=True, width=160, file=io.StringIO())
    buf_console.print(_prediction_table(preds, classes))
    return buf_console.export_text()


def _notice(message: str) -> None:
    """One line on stderr (backend choice, on-demand export)."""
    err_console.print(f"[yellow]note[/yellow]: {markup(message)}", highlight=False, soft_wrap=True)


def _verdict_cell(p) -> str:
    """The table's answer: the class, or the input check's refusal in colour."""
    if not p.ok:
        return ""
    v = p.verdict or p.label or ""
    if v in ("not_brain_mri", "unfamiliar"):
        return f"[bold red]{v}[/bold red]"
    if v == "uncertain":
        return f"[yellow]{v}[/yellow]"
    return markup(v)


def _prediction_table(preds, classes: list[str]) -> Table:
    t = Table(show_header=True)
    checked = any(p.in_distribution is not None for p in preds)
    for col in ("path", "verdict", "label", *[f"p({c})" for c in classes], *(["ood score"] if checked else []),
                "error"):
        t.add_column(col, overflow="fold")
    for p, row in zip(preds, _prediction_rows(preds, classes), strict=True):
        cells = [f"{float(v):.3f}" if 2 <= i < 2 + len(classes) and v else markup(v) for i, v in enumerate(row)]
        score = [f"{p.ood_score:.2f}" if p.ood_score is not None else ""] if checked else []
        t.add_row(cells[0], _verdict_cell(p), *cells[1:-1], *score, cells[-1])
    return t


def _verdict_notes(preds, predictor) -> None:
    """Under the table: how many inputs the check refused, or that the run has none."""
    from .ood import VERDICT_TEXT

    ok = [p for p in preds if p.ok]
    if ok and all(p.in_distribution is None for p in ok):
        if getattr(predictor, "input_check", None) is None:
            err_console.print("[yellow]note[/yellow]: this run has no input check (made before it existed): every "
                              "input gets a class; fit one with `braintumor fit-input-check RUN`", highlight=False)
        return
    for v, text in VERDICT_TEXT.items():
        n = sum(p.verdict == v for p in ok)
        if n:
            err_console.print(f"{n} of {len(ok)} image(s) [bold]{v}[/bold]: {text}", highlight=False)


def _format_volumes(vols, fmt: str) -> str:
    import json

    from .display import csv_text, json_names

    rows = [v.to_dict() for v in vols]
    if fmt == "json":
        return json.dumps(json_names(rows), indent=2) + "\n"
    return csv_text(["source", "label", "tumour_probability", "slice", "n_slices", "errors"], [
        [r["source"], r["label"] or "", "" if r["tumour_probability"] is None else f"{r['tumour_probability']:.6f}",
         "" if r["slice"] is None else r["slice"], r["n_slices"],
         "; ".join(f"{e['path']}: {e['error']}" for e in r["errors"])] for r in rows],
        name_columns=("source",), lineterminator="\n")


def _volume_table(vols) -> Table:
    t = Table(show_header=True, title="per volume (the slice with the highest tumour probability)")
    for col in ("volume", "label", "p(tumour)", "slice", "slices", "unreadable"):
        t.add_column(col, overflow="fold")
    for v in vols:
        t.add_row(markup(v.source), markup(v.label or ""),
                  "" if v.tumour_probability is None else f"{v.tumour_probability:.3f}",
                  "" if v.slice is None else str(v.slice), str(v.n_slices), str(len(v.errors)))
    return t


@app.command()
@handle_errors
def predict(
    model: Path = typer.Argument(..., help="A run folder or an exported .onnx file."),
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or glob patterns."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Write the results to this file (with --format table: csv for .csv, "
                                         "json for .json, else the text table)."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Write heatmap overlays (the default explanation "
                                                                   "method) here (run folder only)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda... (run folders)."),
    backend: str = typer.Option("auto", "--backend",
                                help="Engine for a run folder: auto (onnxruntime on the CPU when installed, via "
                                     "RUN/model.onnx exported on demand and cached; else torch), onnx or torch."),
    precision: str = typer.Option("auto", "--precision",
                                  help="Run folders on onnxruntime: auto (the run's INT8 model when `export --int8` "
                                       "kept one, else FP32), int8 (insist) or fp32."),
    slices: str | None = typer.Option(None, "--slices",
                                      help="Volumes: middle, all or K evenly spaced slices each (default: what the "
                                           "run was trained with)."),
    by_volume: bool = typer.Option(False, "--by-volume",
                                   help="One row per volume (DICOM series, NIfTI file, multi-frame DICOM): the "
                                        "slice with the highest tumour probability decides; 2-D images stay "
                                        "one row each."),
    outline: bool = typer.Option(False, "--outline",
                                 help="Add the tumour outline of each image (runs trained with --masks): area in "
                                      "pixels and mm² (DICOM/NIfTI pixel spacing), bounding box and contour in "
                                      "the image's own coordinates. Same model pass as the probabilities."),
    outline_threshold: float = typer.Option(0.5, "--outline-threshold", min=0.0, max=1.0,
                                            help="Tumour-map probability at and above which a pixel is tumour."),
    ood_check: bool = typer.Option(True, "--ood-check/--no-ood-check",
                                   help="Check that each input is a brain MRI slice like the training data (the "
                                        "run's input check); --no-ood-check gives every input a class."),
    min_confidence: float | None = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                help="Verdict 'uncertain' below this probability of the predicted "
                                                     "class (default: the run's, 0.6)."),
    tta: bool = typer.Option(False, "--tta", help="Mirror test-time augmentation: each image's probabilities (and "
                                                  "outline) averaged with its left-right mirror image's (twice "
                                                  "the model work)."),
    with_runs: list[Path] | None = typer.Option(None, "--with", help="Another run folder or .onnx file (repeat "
                                                "for more): predict with the ensemble, the probabilities and "
                                                "tumour maps of all of them averaged (same classes and "
                                                "preprocessing; the input check is MODEL's)."),
):
    """Classify images with a run folder or an exported .onnx file; one row per file, unreadable files reported.

    Volumes (NIfTI, DICOM series folders, multi-frame DICOM) are read as the slices the run was trained on
    (`--slices`), one row per slice (`scan.nii.gz#12`), plus a per-volume summary in the table; `--by-volume`
    writes only the per-volume rows. `--outline` adds the tumour outline (table: tumour area; csv: area, box and
    the outline as JSON; json: the outline object). Exit code 0 when every file was read, 1 when some could not
    be, 2 on a usage error.

    Each row has a verdict: the class, or `not_brain_mri` (not a brain MRI slice), `unfamiliar` (unlike the
    training data: the class is not to be trusted) or `uncertain` (probability of the class below
    --min-confidence), from the run's input check; csv/json add `verdict`, `in_distribution`, `ood_score` (above 1:
    unfamiliar) and `ood_reasons`. `label` is always the model's class.

    Example: braintumor predict runs/navoneel scans/ --format csv --out predictions.csv

    An ensemble of two trainings: braintumor predict runs/seed0 scans/ --with runs/seed1
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .backends import load_predictor
    from .errors import UsageError

    fmt = fmt.lower()
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format must be table, csv or json, not '{fmt}'")
    if backend.lower() not in ("auto", "onnx", "onnxruntime", "torch"):
        raise typer.BadParameter(f"--backend must be auto, onnx or torch, not '{backend}'")
    files, empty = _expand_paths(paths)
    for p in empty:
        err_console.print(f"[yellow]warning[/yellow]: no images in {markup(p)}", highlight=False, soft_wrap=True)
    if not files:
        raise UsageError(f"no image files found in {', '.join(paths)}")
    if heatmaps is not None and model.is_file():
        raise UsageError("--heatmaps needs the torch model of a run folder; an .onnx file has no Grad-CAM")
    if heatmaps is not None and with_runs:
        raise UsageError("--heatmaps explains one model: an ensemble (--with) has no Grad-CAM")
    if out is not None:  # before any work: a file that can be written, and not one that matters
        for m in [model, *(with_runs or [])]:
            _check_out_file(out, m, files)
    if heatmaps is not None:
        from .evaluation import check_out_folder

        check_out_folder(heatmaps, runs=[model], data_dirs=[p for p in paths if Path(p).is_dir()],
                         what="--heatmaps names a folder", flag="--heatmaps")
    if outline:
        from .outline import NO_DECODER, outline_summary, predict_outlines, require_tumour_map
        from .rundir import RunDir

        if by_volume:
            raise UsageError("--outline gives one outline per image: use it without --by-volume")
        if model.is_dir() and not isinstance(RunDir(model).read_metadata().get("tumour_map"), dict):
            raise UsageError(NO_DECODER)  # said before any on-demand ONNX export
    if with_runs:
        from .ensemble import load_ensemble

        predictor = load_ensemble([model, *with_runs], device=device, backend=backend, notice=_notice,
                                  precision=precision)
    else:
        predictor = load_predictor(model, device=device, backend=backend, notice=_notice, precision=precision)
    predictor.check_inputs = ood_check
    predictor.tta = tta
    if min_confidence is not None and predictor.input_check is not None:
        predictor.input_check.min_confidence = min_confidence
    if outline:
        require_tumour_map(predictor)
    from .data.slices import parse_slices, summarise_volumes

    slices = parse_slices(slices or (predictor.metadata.get("data") or {}).get("slices"))
    if slices != "middle":
        files, _ = _expand_paths(paths, slices=slices)
    explainer = predictor if predictor.model is not None else None
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True, disable=len(files) <= batch_size) as bar:
        task = bar.add_task("predicting", total=len(files))
        if outline:  # probabilities and tumour maps from one model pass per batch
            preds = predict_outlines(predictor, files, batch_size=batch_size, threshold=outline_threshold,
                                     progress=lambda n: bar.advance(task, n))
        else:
            preds = predictor.predict_paths(files, batch_size=batch_size, progress=lambda n: bar.advance(task, n))
    if heatmaps is not None:
        try:
            from .explanation import explain
        except ImportError as exc:
            raise UsageError(f"Grad-CAM is not available in this installation ({exc})") from None
        if explainer is None:  # predictions on onnxruntime: Grad-CAM needs the run's torch model
            explainer = load_predictor(model, device=device, backend="torch")
        ok = [p for p in preds if p.ok]
        stems: dict[str, int] = {}
        with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), console=err_console,
                      transient=True, disable=len(ok) <= batch_size) as bar:
            task = bar.add_task("Grad-CAM", total=len(ok))
            for p in ok:
                stem = Path(p.path).name.split(".")[0] or "image"
                stems[stem] = stems.get(stem, 0) + 1
                if stems[stem] > 1:
                    stem = f"{stem}_{stems[stem]}"
                explain(explainer, p.path).save(heatmaps, stem)
                bar.advance(task)
        err_console.print(f"heatmap overlays of {len(ok)} image(s) in {markup(heatmaps)}", highlight=False)
    out_fmt = fmt
    if out is not None and fmt == "table":
        out_fmt = {".csv": "csv", ".json": "json"}.get(out.suffix.lower(), "table")
    vols = summarise_volumes(preds, predictor.positive_class, include_images=by_volume)

    def outline_table() -> Table:
        t = Table(show_header=True)
        for col in ("path", "verdict", "label", *[f"p({c})" for c in predictor.classes], "tumour area", "error"):
            t.add_column(col, overflow="fold")
        for p, row in zip(preds, _prediction_rows(preds, predictor.classes), strict=True):
            cells = [f"{float(v):.3f}" if 2 <= i < 2 + len(predictor.classes) and v else markup(v)
                     for i, v in enumerate(row)]
            t.add_row(cells[0], _verdict_cell(p), *cells[1:-1], outline_summary(p.outline), cells[-1])
        return t

    if by_volume:
        text = _format_volumes(vols, "json" if out_fmt == "json" else "csv")
    elif outline and out_fmt == "csv":
        import json

        from .display import csv_text

        rows = []
        for p, row in zip(preds, _prediction_rows(preds, predictor.classes), strict=True):
            o = p.outline or {}
            rows.append([*row, *_check_cells(p), "" if not o else int(o["found"]), o.get("area_px", ""),
                         "" if o.get("area_mm2") is None else o["area_mm2"],
                         "" if not o.get("bbox") else " ".join(map(str, o["bbox"])),
                         json.dumps(o, separators=(",", ":")) if o else ""])
        text = csv_text(["path", "label", *[f"p_{c}" for c in predictor.classes], "error", *CHECK_COLUMNS,
                         "tumour_found", "tumour_area_px", "tumour_area_mm2", "tumour_bbox", "outline"], rows,
                        lineterminator="\n")
    elif outline and out_fmt == "table":
        import io

        buf_console = Console(record=True, width=160, file=io.StringIO())
        buf_console.print(outline_table())
        text = buf_console.export_text()
    else:
        text = _format_predictions(preds, predictor, out_fmt)
    if out is not None:
        from .rundir import atomic_write_text

        atomic_write_text(out, text)  # whole or not at all (creates the parent folders)
        err_console.print(f"wrote {len(vols) if by_volume else len(preds)} "
                          f"{'volume' if by_volume else 'prediction'}(s) to {markup(out)}", highlight=False)
    elif fmt == "table":
        if not by_volume:
            console.print(outline_table() if outline else _prediction_table(preds, predictor.classes))
        if vols:
            console.print(_volume_table(vols))
    if fmt == "table" and not by_volume:
        _verdict_notes(preds, predictor)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    failed = [p for p in preds if not p.ok]
    if failed:
        err_console.print(f"{len(failed)} of {len(preds)} file(s) could not be read:", highlight=False)
        for p in failed[:20]:
            err_console.print(f"  {markup(p.path)}: {markup(p.error)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("fit-input-check")
@handle_errors
def fit_input_check_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by `braintumor train`."),
    quantile: float = typer.Option(0.99, "--quantile", min=0.5, max=0.9999,
                                   help="Quantile of the validation distances (log-normal fit) that becomes the "
                                        "threshold."),
    min_confidence: float | None = typer.Option(None, "--min-confidence", min=0.0, max=1.0,
                                                help="Abstention limit stored with the check (default: the run's, "
                                                     "else 0.6)."),
):
    """Fit (or refit) a run's input check from its own split: for runs made before the check existed.

    Reads the training and validation images listed in RUN_DIR/split.csv, fits the feature distance on the
    training split and its threshold on the validation split, and writes RUN_DIR/ood.npz and the `input_check`
    entry of metadata.json (a cached ONNX export is made again on next use, with the `ood_score` output).

    Example: braintumor fit-input-check runs/navoneel
    """
    from .inference import refit_input_check

    def skip(path, reason):
        err_console.print(f"[yellow]skipped[/yellow] {markup(path)}: {markup(reason)}", highlight=False)

    with console.status("fitting the input check"):
        check = refit_input_check(run_dir, quantile=quantile, min_confidence=min_confidence, on_skip=skip)
    from .report import CHECK_SECTION, refresh_report_section

    refresh_report_section(run_dir, CHECK_SECTION)
    s = check.summary
    console.print(f"input check of [bold]{markup(run_dir)}[/bold]: threshold {check.threshold:.4g} "
                  f"({check.distance.dim}-d features, {s['n_train']} training / {s['n_val']} validation images); "
                  f"validation flagged: unfamiliar {s['val_flagged_unfamiliar']:.1%}, not brain MRI "
                  f"{s.get('val_flagged_not_brain', 0):.1%}, uncertain {s['val_uncertain']:.1%}")


@app.command("model-card")
@handle_errors
def model_card_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by `braintumor train`."),
):
    """Write (or bring up to date) RUN_DIR/model_card.md: intended use, data, preprocessing, metrics with CIs,
    calibration, input check, evaluations, known failure modes, licence of the weights.

    Training writes the card, and fit-input-check and evaluate (into RUN_DIR/evaluations/) refresh it; this
    command gives a run made before cards existed its own, or rewrites one by hand.

    Example: braintumor model-card runs/navoneel
    """
    from .model_card import write_model_card

    path = write_model_card(run_dir)
    console.print(f"model card: {markup(path)}", highlight=False)


def _check_export_out(out: Path, run_dir: Path) -> None:
    """``export --out``: a new file or an existing ``.onnx`` file, never a folder or another file of the run."""
    from .display import printable
    from .errors import UsageError

    shown = printable(out)
    if out.is_dir():
        raise UsageError(f"--out {shown}: is a folder; give a file name (e.g. model.onnx)")
    if not out.exists():
        return
    inside = run_dir.is_dir() and out.resolve().is_relative_to(run_dir.resolve())
    if out.suffix.lower() != ".onnx" or (inside and out.resolve() != (run_dir / "model.onnx").resolve()):
        raise UsageError(f"--out {shown}: an existing file that is not an ONNX export"
                         f"{' of this run' if inside else ''}; it would be overwritten: choose another name")


@app.command()
@handle_errors
def export(
    run_dir: Path = typer.Argument(..., help="A run folder written by `braintumor train`."),
    out: Path | None = typer.Option(None, "--out", "-o", help="The .onnx file (default RUN_DIR/model.onnx)."),
    check: list[str] | None = typer.Option(None, "--check-images",
                                           help="Images/folders/globs for the parity check "
                                                "(default: the run's validation images)."),
    atol: float = typer.Option(1e-4, "--atol", help="Largest accepted probability difference torch vs ONNX."),
    int8: bool = typer.Option(False, "--int8", help="Also make RUN_DIR/model.int8.onnx: static INT8 quantisation "
                                                    "calibrated on the run's training images, kept only when it "
                                                    "agrees with FP32 on the validation split (predict/serve then "
                                                    "use it)."),
    int8_calibration: int = typer.Option(300, "--int8-calibration", min=16, max=5000,
                                         help="Training images used to calibrate INT8."),
):
    """Export a run to one ONNX file (dynamic batch, metadata embedded) after a parity check against torch.

    The export fails (exit 1, nothing written) when onnxruntime's probabilities differ from torch's by more
    than --atol on real images. A run trained with --masks also exports its tumour map (a third output,
    `tumour_map`), checked the same way (largest difference 1e-3). `predict RUN_DIR` and `serve RUN_DIR` reuse
    RUN_DIR/model.onnx while it matches the run's best checkpoint (and export it themselves when it is missing or
    stale).

    With --int8 the run also gets an INT8 copy (see docs: "INT8"), used by `predict`/`serve` with `--precision
    auto` (default) only while it passes its agreement bar (>= 99.5% labels as FP32 on the validation split,
    accuracy within 0.5 point); otherwise one line says why and FP32 stays in use.

    Example: braintumor export runs/navoneel --out navoneel.onnx
    """
    from .export import export_onnx

    if out is not None:
        _check_export_out(out, run_dir)
    with console.status("exporting to ONNX and checking parity"):
        res = export_onnx(run_dir, out, check_images=check or None, atol=atol)
    console.print(f"wrote [bold]{markup(res.path)}[/bold] ({res.size_bytes / 1e6:.1f} MB); parity on "
                  f"{markup(res.check_source)}: "
                  f"max |p_torch - p_onnx| = {res.max_abs_diff:.2e} (<= {atol:g}), labels agree: {res.labels_agree}")
    if res.map_max_abs_diff is not None:
        console.print(f"tumour map output 'tumour_map': max |map_torch - map_onnx| = {res.map_max_abs_diff:.2e} "
                      f"(<= 1e-3)")
    if int8:
        from .quantize import quantize_run
        from .report import INT8_SECTION, refresh_report_section

        with console.status("quantising to INT8 (calibration, then agreement with FP32)"):
            q = quantize_run(run_dir, n_calibration=int8_calibration)
        refresh_report_section(run_dir, INT8_SECTION)  # the card was refreshed by quantize_run; the report too
        figures = (f"{q.label_agreement:.1%} of {q.n_validation} validation labels as FP32, accuracy "
                   f"{q.int8_accuracy:.3f} vs {q.fp32_accuracy:.3f} (recipe {q.recipe})")
        if q.passed and q.guard_band:
            figures += (f"; INT8 alone {q.raw_label_agreement:.1%}, so FP32 decides the images within "
                        f"{q.guard_band:.2f} of a label change ({q.guarded_share:.1%} of the validation images)")
        if q.passed:
            console.print(f"wrote [bold]{markup(run_dir / q.path)}[/bold] ({q.size_bytes / 1e6:.1f} MB): {figures}; "
                          f"predict and serve use it")
        else:
            _notice(f"INT8 not kept, FP32 stays in use: {q.reason}")


@app.command()
@handle_errors
def serve(
    model: Path = typer.Argument(..., help="A run folder (Grad-CAM available) or an exported .onnx file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest accepted upload."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    backend: str = typer.Option("auto", "--backend",
                                help="Engine of plain predictions for a run folder: auto (onnxruntime when "
                                     "installed, via RUN/model.onnx exported on demand; else torch), onnx or "
                                     "torch. Grad-CAM (explain=true) always uses the run's torch model."),
    precision: str = typer.Option("auto", "--precision",
                                  help="Run folders on onnxruntime: auto (the run's INT8 model when `export --int8` "
                                       "kept one, else FP32), int8 (insist) or fp32."),
    ood_check: bool = typer.Option(True, "--ood-check/--no-ood-check",
                                   help="Apply the run's input check (verdict not_brain_mri / unfamiliar / "
                                        "uncertain); requests may still turn it off with ood_check=false."),
    api_key: list[str] = typer.Option(None, "--api-key",
                                      help="Require this key on every /v1/* request (Authorization: Bearer KEY "
                                           "or X-API-Key: KEY; 401 without). Repeatable; keys in "
                                           "$BRAINTUMOR_API_KEYS (comma-separated) are added."),
    rate_limit: str = typer.Option(None, "--rate-limit",
                                   help="Per-client limit on /v1/* (the API key, else the client address), e.g. "
                                        "60/minute; 429 with Retry-After past it. Default: none."),
    cors_origin: list[str] = typer.Option(None, "--cors-origin",
                                          help="Allow browser pages of this origin (https://host[:port], or *) to "
                                               "call the API. Repeatable. Default: CORS off."),
    log_format: str = typer.Option("text", "--log-format",
                                   help="text (uvicorn's lines) or json (one JSON line per request: time, client, "
                                        "method, path, status, duration, bytes, model; no image content)."),
    max_concurrent: int = typer.Option(None, "--max-concurrent",
                                       help="Uploads decoded and predicted at once (default: CPU count, at most "
                                            "4); others wait, then get 503 with Retry-After."),
    queue_timeout: float = typer.Option(10.0, "--queue-timeout", help="Seconds an upload waits for a free slot."),
    request_timeout: float = typer.Option(30.0, "--request-timeout",
                                          help="Seconds for decoding + prediction of one upload (504 past it)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout",
                                         help="Seconds a client has to send its request line and headers."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", help="Seconds a client has to send its upload."),
    max_connections: int = typer.Option(1000, "--max-connections",
                                        help="Open connections beyond which new requests get 503."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels",
                                   help="Largest image or slice, in pixels (from the header; 413 past it)."),
    max_voxels: int = typer.Option(40_000_000, "--max-voxels",
                                   help="Largest DICOM/NIfTI volume, in voxels (from the header; 413 past it)."),
    max_decompressed_mb: float = typer.Option(256.0, "--max-decompressed-mb",
                                              help="Largest size a .nii.gz or deflated DICOM may expand to (MiB)."),
):
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /metrics, /docs and a web page at /.

    For a network: --api-key, --rate-limit, --log-format json, and TLS from a reverse proxy (docs/guide/deploy.md).

    Example: braintumor serve runs/navoneel --port 8000 --api-key "$KEY" --rate-limit 60/minute --log-format json
    """
    import math

    from .errors import UsageError
    from .serve import create_app

    try:
        import uvicorn
    except ImportError:
        raise UsageError("serving needs the 'serve' extra: pip install 'braintumor[serve]'") from None
    from .serve.security import api_keys_from
    from .serve.server import server_config

    if backend.lower() not in ("auto", "onnx", "onnxruntime", "torch"):
        raise typer.BadParameter(f"--backend must be auto, onnx or torch, not '{backend}'")
    if log_format.lower() not in ("text", "json"):
        raise UsageError(f"--log-format '{log_format}' is not allowed: choose text or json")
    if log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise UsageError(f"--log-level '{log_level}' is not allowed: choose critical, error, warning, info, debug "
                         f"or trace")
    for name, value in (("--max-upload-mb", max_upload_mb), ("--queue-timeout", queue_timeout),
                        ("--request-timeout", request_timeout), ("--header-timeout", header_timeout),
                        ("--body-timeout", body_timeout), ("--max-decompressed-mb", max_decompressed_mb)):
        if not (math.isfinite(value) and 0 < value <= 1e6):
            raise UsageError(f"{name} {value:g} is not allowed: need a number above 0 and at most 1000000")
    for name, value in (("--max-connections", max_connections), ("--max-pixels", max_pixels),
                        ("--max-voxels", max_voxels), ("--max-concurrent", max_concurrent or 1)):
        if not 1 <= value <= 1 << 48:
            raise UsageError(f"{name} {value} is not allowed: need a whole number from 1 to {1 << 48}")
    keys = api_keys_from(api_key)
    json_logs = log_format.lower() == "json"
    application = create_app(model, max_upload_bytes=int(max_upload_mb * 1024 * 1024), backend=backend,
                             notice=_notice, ood_check=ood_check, api_keys=keys, rate_limit=rate_limit,
                             cors_origins=cors_origin, max_concurrent=max_concurrent, queue_timeout=queue_timeout,
                             request_timeout=request_timeout, body_timeout=body_timeout, max_pixels=max_pixels,
                             max_voxels=max_voxels, max_decompressed_bytes=int(max_decompressed_mb * (1 << 20)),
                             access_log=json_logs, precision=precision)
    config = server_config(application, host, port, log_level=log_level.lower(),
                           log_format="json" if json_logs else "text", header_timeout=header_timeout,
                           body_timeout=body_timeout + 5, max_connections=max_connections)
    service = application.state.service
    engine = (service.info["backend"] + (" INT8" if service.info.get("precision") == "int8" else "")
              + (", Grad-CAM on torch" if service.can_explain else ", no Grad-CAM"))
    guard = f"API key required ({len(keys)} key{'s' if len(keys) != 1 else ''})" if keys else "no API key"
    err_console.print(f"serving {model} on http://{host}:{port}/ ({engine}; {guard}; research use only, not a "
                      f"medical device)", highlight=False, soft_wrap=True)
    if not keys and host not in ("127.0.0.1", "localhost", "::1"):
        _notice(f"listening on {host} without an API key: anyone who can reach this port can use the model "
                f"(--api-key, and TLS from a reverse proxy: docs/guide/deploy.md)")
    uvicorn.Server(config).run()


data_app = typer.Typer(no_args_is_help=True, help="Public data sets: download from Kaggle, verify a local copy.")
app.add_typer(data_app, name="data")


@data_app.command("download")
@handle_errors
def data_download(
    dataset: str = typer.Argument(..., help="navoneel or nickparvar."),
    to: Path = typer.Option(..., "--to", help="Folder to download into (created)."),
):
    """Download a data set from Kaggle (needs `pip install kagglehub` and network), then verify it.

    Without kagglehub or network: one message with the manual steps, exit code 2.

    Example: braintumor data download navoneel --to data/brain_mri_yes_no
    """
    from .data.datasets import download, verify

    with console.status(f"downloading {dataset} to {to}"):
        root = download(dataset, to)
    console.print(f"downloaded {markup(dataset)} to [bold]{markup(root)}[/bold]", highlight=False)
    _print_verify(verify(root, dataset))


def _print_verify(report, limit: int = 200) -> None:
    t = Table(title=f"{report.dataset}: {report.root}", show_header=True)
    for col in ("split", "class", "found", "expected"):
        t.add_column(col, justify="right" if col in ("found", "expected") else "left")
    for (split, cls), (found, expected) in report.counts.items():
        mark = "" if found == expected else "[red]"
        t.add_row(split or "-", cls, f"{mark}{found}", str(expected))
    console.print(t)
    for p in report.problems[:limit]:
        console.print(f"  {p}", highlight=False, soft_wrap=True, markup=False)
    if len(report.problems) > limit:
        console.print(f"  ... and {len(report.problems) - limit} more")
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("verify")
@handle_errors
def data_verify(
    root: Path = typer.Argument(..., help="The data set folder (see --dataset)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="navoneel or nickparvar."),
    decode: bool = typer.Option(True, "--decode/--no-decode",
                                help="Decode images no SHA-256 manifest covers, to find corrupt files."),
):
    """Check a local copy: layout, class counts, and every file (missing, extra or corrupt files are named).

    navoneel: ROOT holds yes/ (155) and no/ (98). nickparvar: ROOT is Training/ or Testing/, or their parent.
    Exit code 0 when everything matches, 1 when something is missing, extra or corrupt, 2 on a usage error.

    Example: braintumor data verify data/brain_mri_yes_no --dataset navoneel
    """
    from .data.datasets import verify

    with console.status(f"verifying {root}"):
        report = verify(root, dataset, decode=decode)
    _print_verify(report)


# ---------------------------------------------------------------------------------------------------- explain


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems for output names; clashes (yes/1.jpg and no/1.jpg) get the parent folder, then a counter."""
    stems = [p.name.split(".")[0] or "image" for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out, seen = [], set()
    for p, s in zip(paths, stems, strict=True):
        name = f"{p.parent.name}_{s}" if counts[s] > 1 and p.parent.name else s
        base, k = name, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        out.append(name)
    return out


def _explain_table(summary: dict) -> Table:
    t = Table(title=f"explanation metrics ({summary['method']}, {summary['n']} images, "
                    f"{summary['n_masked']} with masks)", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    tol = summary.get("tolerance_px")
    rows = [
        ("pointing_game", "map peak inside the lesion mask (masked images)"),
        ("pointing_game_tolerant", "peak within " + (f"{tol:.0f} px" if tol else "15/224 of the side")
         + " of the mask"),
        ("pointing_game_correct", f"strict, correctly classified masked images ({summary['n_masked_correct']})"),
        ("chance", "lesion area fraction: a random peak's strict hit rate"),
        ("iou", "IoU of map >= 0.5 with the mask"),
        ("dice_05", "Dice of map >= 0.5 with the mask"),
        ("dice_best", "Dice at each image's best threshold (0.05..0.95; optimistic)"),
        ("dice_fixed", f"Dice at the one best threshold ({summary.get('dice_fixed_threshold')})"),
        ("peak_outside_brain", "share of maps whose peak is off the head (all images)"),
        ("deletion_auc", "lower = more faithful"),
        ("random_deletion_auc", "the same for a random map"),
        ("insertion_auc", "higher = more faithful"),
        ("random_insertion_auc", "the same for a random map"),
        ("randomisation_spearman", "|Spearman| trained vs randomised weights; low = passes"),
    ]
    for key, meaning in rows:
        v = summary.get(key)
        ci = summary.get(f"{key}_ci")
        text = "-" if v is None else f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        units = summary.get("ci_units")
        t.add_row(key, text, meaning + (f"; 95% interval, {units} resampled unit{'s' * (units != 1)}" if ci else ""))
    return t


@app.command("explain")
@handle_errors
def explain_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by `braintumor train`."),
    images: list[str] = typer.Argument(..., help="Image files, folders (recursive) or glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for figures, overlays and raw heatmaps (.npy)."),
    method: str | None = typer.Option(None, "--method",
                                      help="gradcam, gradcam++, hirescam, layercam (multi-layer), layercam-last, "
                                           "layercam-tta (layercam at 1.5x the side plus the mirror image), "
                                           "occlusion or seg (the run's tumour-map decoder; runs trained with "
                                           "--masks). Default: braintumor.explanation.DEFAULT_METHOD "
                                           "(layercam-tta)."),
    target: str | None = typer.Option(None, "--target", help="Class to explain (default: the predicted one)."),
    masks: Path | None = typer.Option(None, "--masks",
                                      help="Lesion masks (<dir>/<class>/<name> or <dir>/<name>): report pointing "
                                           "game, IoU, deletion/insertion AUC and the randomisation check."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per batch."),
    steps: int = typer.Option(20, "--steps", min=2, help="Deletion/insertion steps (with --masks)."),
    group_by: str | None = typer.Option(None, "--group-by",
                                        help="With --masks: patient groups for the pointing game's 95% interval "
                                             "(slices of one patient resampled together): id-runs, id-blocks:N "
                                             "(figshare: id-blocks:40) or a CSV with columns path,group. "
                                             "Default: each image."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda..."),
    ood_check: bool = typer.Option(True, "--ood-check/--no-ood-check",
                                   help="Write no map for inputs the run's input check rejects (not a brain MRI "
                                        "slice, or unlike the training data)."),
):
    """Heatmaps (Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM, occlusion, tumour map): figure, overlay, raw map.

    Writes OUT/<name>.png (original | heatmap | overlay, titled with the prediction), OUT/<name>_overlay.png and
    OUT/<name>_heatmap.npy (float32 in [0, 1] at the model-input size, high = important). With --masks, also
    OUT/explain_metrics.json (overall and per class: pointing game strict and within 15/224 of the side, each
    with a 95% bootstrap interval (--group-by resamples whole patients), IoU,
    Dice at 0.5 and at the best threshold, peaks off the head, deletion/insertion AUC against a random map, the
    randomisation check) and OUT/explain_metrics.csv (one row per image). Images the run's input check rejects
    (`not_brain_mri`, `unfamiliar`) get no map: a heatmap of a photograph explains nothing about a tumour.

    Example: braintumor explain runs/navoneel data/brain_mri_yes_no/yes --out explanations --method gradcam++
    """
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .data.cache import load_images
    from .display import csv_text, json_names
    from .errors import UsageError
    from .explanation import as_predictor, evaluate_explanations, explain_prepared
    from .explanation.saliency import DEFAULT_METHOD, check_method
    from .inference import Predictor
    from .rundir import atomic_write_text

    method = check_method(method or DEFAULT_METHOD)
    if masks is not None and not masks.is_dir():
        raise UsageError(f"--masks {masks}: no such folder")
    if group_by is not None and masks is None:
        raise UsageError("--group-by groups the pointing game's interval: it needs --masks")
    files, empty = _expand_paths(images)
    for p in empty:
        err_console.print(f"[yellow]warning[/yellow]: no images in {markup(p)}", highlight=False, soft_wrap=True)
    if not files:
        raise UsageError(f"no image files found in {', '.join(images)}")
    predictor = as_predictor(Predictor.from_run(run_dir, device=device))
    from .evaluation import check_out_folder

    # before any work: not a file, not the run folder (a figure named roc.png would replace the run's), not inside
    # a folder of images being explained
    check_out_folder(out, runs=[run_dir], data_dirs=[p for p in images if Path(p).is_dir()],
                     what="explanations go into a folder")
    predictor.check_inputs = ood_check and masks is None  # --masks measures maps on labelled brain slices
    stems = dict(zip(files, _unique_stems(files), strict=True))
    withheld: list[tuple[Path, str, str]] = []
    failed: list[tuple[Path, str]] = []

    def skip(path: Path, reason: str) -> None:
        failed.append((path, reason))
        err_console.print(f"[yellow]skipped[/yellow] {markup(path)}: {markup(reason)}", highlight=False,
                          soft_wrap=True)

    written = 0
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(f"explaining ({method})", total=len(files))
        if masks is not None:
            def save(ex, path):
                nonlocal written
                ex.save(out, stems[Path(path)])
                written += 1

            report = evaluate_explanations(predictor, files, masks, method, target, steps=steps,
                                           batch_size=batch_size, on_skip=skip, on_explanation=save,
                                           progress=lambda n: bar.advance(task, n), group_by=group_by)
        else:
            for i in range(0, len(files), batch_size):
                chunk = files[i:i + batch_size]
                # layercam-tta prepares the decoded originals again at a larger side: kept from the same read
                loaded = load_images(chunk, predictor.preprocessor, on_skip=skip, stats=True,
                                     originals=method == "layercam-tta")
                ok = [chunk[j] for j in loaded.kept]
                if ok:
                    for ex, p in zip(explain_prepared(predictor, loaded.images, method, target,
                                                      [str(p) for p in ok], batch_size, loaded.stats,
                                                      originals=loaded.originals), ok,
                                     strict=True):
                        if ex.withheld:  # the input check rejected it: no map is presented as an explanation
                            withheld.append((p, ex.verdict, "; ".join(ex.ood_reasons)))
                            continue
                        ex.save(out, stems[p])
                        written += 1
                bar.advance(task, len(chunk))
    console.print(f"wrote {written} explanation(s) ({method}) to [bold]{markup(out)}[/bold]", highlight=False)
    if withheld:
        err_console.print(f"{len(withheld)} image(s) not explained: the input check rejected them "
                          f"(--no-ood-check explains them anyway):", highlight=False)
        for p, v, why in withheld[:20]:
            err_console.print(f"  {markup(p)}: {v}{f' ({markup(why)})' if why else ''}", highlight=False,
                              soft_wrap=True)
    if masks is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "explain_metrics.json", json.dumps(json_names(report.summary), indent=2) + "\n")
        header = list(report.rows[0])
        atomic_write_text(out / "explain_metrics.csv", csv_text(
            header, [[r.get(k, "") for k in header] for r in report.rows], name_columns=("path",)))
        console.print(_explain_table(report.summary))
        per_class = report.summary.get("per_class") or {}
        if len(per_class) > 1:
            keys = ("n", "n_masked", "accuracy", "pointing_game", "pointing_game_tolerant", "dice_best", "dice_05",
                    "peak_outside_brain", "deletion_auc", "random_deletion_auc")
            t = Table(title="per class (image folder)", show_header=True)
            t.add_column("class")
            for k in keys:
                t.add_column(k, justify="right")
            for c, d in per_class.items():
                t.add_row(c, *("-" if d.get(k) is None else str(d[k]) if isinstance(d[k], int) else f"{d[k]:.3f}"
                               for k in keys))
            console.print(t)
        if not report.summary["n_masked"]:
            err_console.print(f"[yellow]warning[/yellow]: no masks found in {markup(masks)} for these images",
                              highlight=False)
    if failed:
        err_console.print(f"{len(failed)} of {len(files)} file(s) could not be read")
        raise typer.Exit(1)


@app.command("audit")
@handle_errors
def audit_cmd(
    data_dir: Path = typer.Argument(..., help="Labelled folder: <class>/<images>."),
    against: Path | None = typer.Option(None, "--against", help="Second labelled folder to check for copies of "
                                        "DATA_DIR's images (e.g. a test or pretraining set)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON to this file."),
    show: int = typer.Option(10, "--show", help="Groups/files listed per section."),
):
    """Duplicate and leakage audit: exact and near-duplicate groups, label conflicts, copies in another folder,
    unreadable files, class balance and source confounders.

    Example: braintumor audit data/brain_mri_yes_no --against data/nickparvar/Training --json audit.json
    """
    import json

    from .data.audit import audit as run_audit
    from .errors import UsageError
    from .rundir import atomic_write_text

    if json_out is not None and json_out.is_dir():  # said before the audit, not after it
        raise UsageError(f"--json {json_out}: is a folder; give a file name (e.g. audit.json)")
    with console.status(f"auditing {markup(data_dir)}" + (f" against {markup(against)}" if against else "")):
        r = run_audit(data_dir, against=against)

    def listing(title: str, groups: list, colour: str) -> None:
        if not groups:
            return
        console.print(f"[{colour}]{title}: {len(groups)}[/{colour}]")
        for g in groups[:show]:
            if isinstance(g, dict) and "matches" in g:
                m = g["matches"]
                console.print(f"  {markup(g['file'])} ({markup(g['class'])}) -> " + ", ".join(
                    f"{markup(x['file'])} ({markup(x['class'])}, {x['kind']} {x['score']:.2f})" for x in m[:3])
                    + (f" +{len(m) - 3}" if len(m) > 3 else ""), highlight=False)
            elif isinstance(g, dict):
                console.print("  " + ", ".join(f"{markup(f)} ({markup(c)})"
                                               for f, c in zip(g["files"], g["classes"], strict=True))
                              + f"  [dim]min score {g['min_score']:.2f}[/dim]", highlight=False)
            else:
                console.print("  " + ", ".join(markup(x) for x in g), highlight=False)
        if len(groups) > show:
            console.print(f"  ... {len(groups) - show} more (see --json)")

    listing("cross-class duplicate groups (label conflicts)", r.cross_class_groups, "red")
    if against is not None:
        listing(f"images with a copy in {against}", r.leaks, "red")
    listing("byte-identical groups", r.byte_groups, "yellow")
    listing("identical-pixel groups (different bytes)", r.pixel_groups, "yellow")
    listing("near-duplicate groups", r.near_groups, "yellow")
    listing("unreadable files", [[f"{u['file']}: {u['reason']}"] for u in r.unreadable], "red")

    t = Table(title=f"{r.data_dir}: {r.n_images} files, {r.n_distinct} distinct", show_header=True)
    for col in ("class", "files", "distinct", "median size", "aspect", "colour", "formats", "mean grey",
                "brain box"):
        t.add_column(col, justify="left" if col in ("class", "formats") else "right")
    for c, s in r.class_stats.items():
        size = f"{s['width'].get('median', 0):.0f}x{s['height'].get('median', 0):.0f}" if s["readable"] else "-"
        fmts = ", ".join(f"{k} {v}" for k, v in s["formats"].items())
        if s["name_mismatch"]:
            fmts += f" ({s['name_mismatch']} misnamed)"
        t.add_row(c, str(s["n"]), str(r.distinct_per_class.get(c, 0)), size,
                  f"{s['aspect'].get('median', 0):.2f}", f"{s['colour_fraction']:.0%}", fmts,
                  f"{s['mean_intensity'].get('mean', 0):.0f}", f"{s['brain_fraction'].get('median', 0):.2f}")
    console.print(t)
    conf = r.confounders
    if "auc" in conf:
        console.print(f"trivial model on image statistics ({conf['model']}, {conf['folds']}-fold grouped CV): "
                      f"accuracy {conf['accuracy']:.3f} (chance {conf['chance_accuracy']:.3f}), "
                      f"AUC {conf['auc']:.3f}", highlight=False)
    src = r.source_confounder or {}
    if "sources" in src:
        sa, sb = src["sources"]
        st = Table(title=f"source check: image statistics alone, {sa} (A) vs {sb} (B)", show_header=True)
        for col in ("subset", "A", "B", "AUC", "bal. acc.", "model"):
            st.add_column(col, justify="left" if col in ("subset", "model") else "right")
        rows = [("all images", src)] + list(src.get("per_class", {}).items())
        for name, v in rows:
            auc = f"{v['auc']:.3f}" if "auc" in v else v.get("skipped", "-")
            bal = f"{v['balanced_accuracy']:.3f}" if "balanced_accuracy" in v else "-"
            st.add_row(name, str(v["n"][0]), str(v["n"][1]), auc, bal, v.get("model", "-"))
        console.print(st)
        if src.get("top_features"):
            console.print("top features (AUC of each alone): " + ", ".join(
                f"{f['words']} {f['auc']:.2f}" + (f" (higher in {'B' if f['higher_in'] == sb else 'A'})"
                                                  if f["higher_in"] else "") for f in src["top_features"]),
                highlight=False)
        console.print("class balance (A | B): " + ", ".join(f"{c} {a}|{b}" for c, (a, b) in
                                                            src["class_counts"].items())
                      + (f"; {src['excluded_b']} copies of A's images left out of B" if src["excluded_b"] else ""),
                      highlight=False)
    for w in r.warnings:
        console.print(f"[yellow]warning[/yellow]: {w}", highlight=False)
    console.print(f"byte-identical: {len(r.byte_groups)} groups / {r.n_byte_duplicates} files; near-duplicate "
                  f"groups: {len(r.near_groups)}; cross-class groups: {len(r.cross_class_groups)}; distinct images: "
                  f"{r.n_distinct}" + (f"; with copies in {against}: {r.leak_counts['files']}" if against else "")
                  + f" ({r.seconds:.1f} s)", highlight=False)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(r.to_dict(), indent=1) + "\n")
        console.print(f"written to [bold]{markup(json_out)}[/bold]", highlight=False)


def main() -> None:
    app(prog_name="braintumor")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)

"""The ``uqkit`` command: ``uqkit report``, ``uqkit demo``.

Errors in the user's input are printed as one readable line (``error: ...``) with exit code 2;
there is no traceback.
"""

from __future__ import annotations

import functools
import sys
import zipfile
from pathlib import Path

import click
import numpy as np


def _user_errors(fn):
    """Turn the library's input errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="uqkit")
def main() -> None:
    """uqkit: Bayesian inference and uncertainty quantification for PyTorch."""


@main.command()
@click.argument("predictions", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.html, metrics.json and report.md.")
@click.option("--recalibrate", type=click.Choice(["temperature"]), default=None,
              help="Fit a recalibrator on --validation and report before and after.")
@click.option("--validation", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="npz with validation logits and labels, for --recalibrate.")
@click.option("--title", default=None, help="Report title.")
@click.option("--ood-score", default=None, help="OOD score: msp, max_logit, energy, entropy, mutual_information, variance.")
@_user_errors
def report(predictions: Path, out_dir: Path, recalibrate: str | None, validation: Path | None,
           title: str | None, ood_score: str | None) -> None:
    """Score PREDICTIONS.npz and write an HTML, JSON and Markdown report.

    The npz holds classification arrays (logits or probs [N, C] or [S, N, C], labels [N], optional
    ood_logits / ood_probs) or regression arrays (mean [N] or [S, N], var or std, y, optional
    ood_mean with ood_var / ood_std).
    """
    from uqkit.calibration.evaluate import evaluate, predictive_from_arrays

    arrays = load_npz(predictions, "PREDICTIONS")
    pred = predictive_from_arrays(arrays)
    target_key = "labels" if pred.task == "classification" else "y"
    if target_key not in arrays:
        raise ValueError(f"PREDICTIONS: {pred.task} predictions need a '{target_key}' array; found keys {sorted(arrays)}")
    ood = predictive_from_arrays(arrays, prefix="ood_") if any(k.startswith("ood_") for k in arrays) else None
    meta = {"source": predictions.name}
    if recalibrate is not None:
        pred, ood, before = _recalibrate(arrays, validation, pred, ood)
        meta.update({f"before_{k}": round(v, 6) for k, v in before.items()})
    result = evaluate(pred, arrays[target_key], ood=ood, ood_score=ood_score,
                      title=title or f"uqkit report: {predictions.name}", meta=meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = result.to_html(out_dir)
    result.to_json(out_dir / "metrics.json")
    _write_figures(result, out_dir / "figures")
    result.to_markdown(out_dir / "report.md", figure_dir="figures")
    for name, value in result.metrics.items():
        click.echo(f"{name:>28s}  {value:.6g}")
    click.echo(f"wrote {html_path}, {out_dir / 'metrics.json'}, {out_dir / 'report.md'}")


def _recalibrate(arrays, validation: Path | None, pred, ood):
    from uqkit.calibration.evaluate import evaluate
    from uqkit.calibration.recalibrate import TemperatureScaler

    if validation is None:
        raise ValueError("--validation: --recalibrate needs a validation npz with 'logits' and 'labels'")
    if "logits" not in arrays:
        raise ValueError("PREDICTIONS: temperature scaling needs 'logits' (not probabilities)")
    val = load_npz(validation, "--validation")
    for key in ("logits", "labels"):
        if key not in val:
            raise ValueError(f"--validation: expected a '{key}' array; found keys {sorted(val)}")
    before = evaluate(pred, arrays["labels"], ood=ood, make_figures=False).metrics
    scaler = TemperatureScaler().fit(val["logits"], val["labels"])
    click.echo(f"temperature scaling: T = {float(scaler.temperature_):.4f} (fitted on {validation.name})")
    new_ood = scaler.transform(ood) if ood is not None else None
    return scaler.transform(pred), new_ood, {**before, "temperature": float(scaler.temperature_)}


def _write_figures(result, fig_dir: Path) -> None:
    from uqkit.calibration.report import figure_filename

    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, png in result.figures.items():
        (fig_dir / figure_filename(name)).write_bytes(png)


def load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Read an ``.npz`` without unpickling anything; a clear error for missing or foreign files."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{what}: {path} is not a readable .npz file of numeric arrays ({err})") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise ValueError(f"{what}: {path} is not a readable .npz file of numeric arrays (entry {key!r} is not one)")
    return arrays


@main.command()
@click.option("--out", "out_dir", default="uqkit-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Directory for the demo's reports.")
@click.option("--seed", default=0, show_default=True, help="Seed for data splits and training.")
@_user_errors
def demo(out_dir: Path, seed: int) -> None:
    """The main job on bundled data: train, freeze, recalibrate, score ID and OOD, write reports."""
    from uqkit.demo import run_demo

    run_demo(out_dir, seed=seed, echo=click.echo)


@main.group()
def pfn() -> None:
    """Prior-data fitted networks: train on a prior, predict in one forward pass."""


@pfn.command("train")
@click.option("--prior", "prior_name", required=True, help="Prior simulator: gp, gp-hyper or gp-classification.")
@click.option("--steps", required=True, type=int, help="Optimiser steps (the cosine schedule ends here).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint (.safetensors).")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option("--batch-size", default=16, show_default=True, help="Datasets per step.")
@click.option("--seq-len", default=128, show_default=True, help="Points per dataset (context + queries).")
@click.option("--max-context", default=100, show_default=True, help="Largest context size.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--warmup", default=200, show_default=True, help="Linear warm-up steps.")
@click.option("--checkpoint-every", default=250, show_default=True, help="Steps between checkpoints.")
@click.option("--d-model", default=128, show_default=True, help="Transformer width.")
@click.option("--layers", default=4, show_default=True, help="Transformer layers.")
@click.option("--buckets", default=1000, show_default=True, help="Bar-distribution buckets.")
@click.option("--seed", default=0, show_default=True, help="Seed of the data stream and initial weights.")
@click.option("--data-shards", default=None, type=int,
              help="Draw each batch in this many seeded shards (default: the torchrun world size, else 1).")
@click.option("--context-power", default=1.0, show_default=True,
              help="Context sizes p drawn with weights ∝ (seq_len - p) ** -power: 1 equal query losses per size, 0 equal steps.")
@click.option("--init-from", default=None, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Start from this checkpoint's weights and borders (fine-tuning with a fresh schedule).")
@click.option("--threads", default=1, show_default=True, help="torch intra-op threads.")
@_user_errors
def pfn_train(prior_name: str, steps: int, out: Path, resume: bool, batch_size: int, seq_len: int,
              max_context: int, lr: float, warmup: int, checkpoint_every: int, d_model: int, layers: int,
              buckets: int, seed: int, data_shards: int | None, context_power: float, init_from: Path | None,
              threads: int) -> None:
    """Train a PFN on a prior; checkpoints go to --out (resumable with --resume).

    Under ``torchrun --nproc_per_node=N uqkit pfn train ...`` the processes train one model with
    DistributedDataParallel (gloo on CPU, nccl on GPUs), rank r drawing shard r of every batch.
    """
    import os

    import torch

    from uqkit.inference.pfn import PFNConfig, TrainConfig, train_pfn
    from uqkit.models.pfn_priors import prior_by_name

    torch.set_num_threads(threads)
    simulator = prior_by_name(prior_name)
    outputs = getattr(simulator, "num_classes", buckets)
    model = PFNConfig(max_input_dim=simulator.input_dims[1], num_outputs=outputs, d_model=d_model,
                      num_heads=4, num_layers=layers, d_ff=2 * d_model)
    shards = data_shards if data_shards is not None else int(os.environ.get("WORLD_SIZE", "1"))
    train = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, max_context=max_context, lr=lr,
                        warmup=warmup, checkpoint_every=checkpoint_every, seed=seed, data_shards=shards,
                        context_power=context_power)
    command = "uqkit pfn train " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["pfn", "train"] else sys.argv[1:])
    result = train_pfn(simulator, out, train, model, resume=resume, init_from=init_from, num_buckets=buckets,
                       command=command)
    info = result.training_info
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"wrote {out}: {info['steps']} steps, {info['wall_time_s']} s, final loss {info['final_loss_ema']:.4f}")


if __name__ == "__main__":  # pragma: no cover
    main()

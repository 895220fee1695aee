"""`alexrepro train OUT --recipe R --run RUN`: parse, map options onto the recipe, train, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from alexrepro.cli.app import app
from alexrepro.errors import UserError
from alexrepro.loaders import kinds_text
from alexrepro.progress import console, count_noun, emit_json

SET_HELP = "Override a recipe value: section.key=value (repeatable), e.g. --set optim.lr=0.02"


def option_overrides(
    epochs: int | None, seed: int | None, precision: str | None, channels_last: bool | None,
    compile_: bool | None, loader: str | None, checkpoint_every: int | None,
) -> list[str]:
    """The recipe fields the command-line options stand for, as section.key=value overrides."""
    pairs = [
        ("schedule.epochs", epochs), ("run.seed", seed), ("run.precision", precision),
        ("run.channels_last", channels_last), ("run.compile", compile_), ("data.loader", loader),
        ("run.checkpoint_every", checkpoint_every),
    ]
    out = []
    for key, value in pairs:
        if value is None:
            continue
        out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


@app.command("train")
def train_command(
    out: Path = typer.Argument(..., metavar="OUT", help="The prepared set (alexrepro prep SRC OUT)."),
    recipe: str | None = typer.Option(
        None, "--recipe", "-r", help="A shipped recipe (alexrepro recipe list) or a .toml path; "
        "on --resume the checkpoint's recipe by default."),
    run: Path = typer.Option(..., "--run", help="The run folder: recipe.toml, metrics.jsonl, log.txt, checkpoints/."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs in all (schedule.epochs)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs on this machine: one data-parallel process each (NCCL)."),
    procs: int = typer.Option(
        1, "--procs", help="Data-parallel processes on the CPU (gloo), for --device cpu; the global batch is split."),
    parallel: str | None = typer.Option(
        None, "--parallel", help="data (one process per device) or model (§3.2's two-GPU split; needs --gpus 2; "
        "ALEXREPRO_TOWER_DEVICES=cuda:0,cuda:0 puts both towers on one GPU, to check that path)."),
    loader: str | None = typer.Option(None, "--loader", help=f"{kinds_text()} (data.loader)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (run.precision; autocast)."),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="NHWC memory layout (run.channels_last)."),
    compile_: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the net (run.compile)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (run.seed)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    checkpoint_every: int | None = typer.Option(
        None, "--checkpoint-every", help="Also checkpoint every N steps within an epoch (run.checkpoint_every)."),
    resume: bool = typer.Option(
        False, "--resume", help="Carry on from the run's loadable checkpoint furthest along (by epoch, batch, step)."),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="Carry on from this checkpoint file."),
    auto_resume: bool = typer.Option(
        False, "--auto-resume", help="Carry on when RUN holds a checkpoint, start a new run when it does not: one "
        "command for the first start and every restart (torchrun --max-restarts, a requeued SLURM job)."),
    group_timeout: float | None = typer.Option(
        None, "--group-timeout", help="Seconds a process waits for the others in a collective before the job ends, "
        "naming the process that stopped answering (several processes, torchrun; default 600, NCCL's own)."),
    force: bool = typer.Option(
        False, "--force", help="With --resume: continue although the recipe differs from the checkpoint's. "
        "Without: start a new run in a folder that holds an earlier one, whose files first move to RUN/previous-<time>/."),
    allow_changed_data: bool = typer.Option(
        False, "--allow-changed-data", help="With --resume: continue although OUT is not the prepared set the "
        "checkpoint was trained on (prepared again since with other settings, source or images)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard scalars to RUN/tensorboard."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the run summary) on stdout."),
) -> None:
    """Train AlexNet with §5's SGD on a prepared set; checkpoints, metrics and logs go to RUN."""
    from alexrepro.training.loop import TrainOptions, run_training

    if resume_from is not None and not resume_from.is_file():
        raise UserError(f"--resume-from {resume_from}: no such checkpoint file")
    overrides = list(set_) + option_overrides(epochs, seed, precision, channels_last, compile_, loader,
                                              checkpoint_every)
    opts = TrainOptions(
        out=out, run_dir=run, recipe=recipe, overrides=overrides, device=device, gpus=gpus, procs=procs,
        parallel=parallel, resume=str(resume_from) if resume_from else ("" if resume else None), force=force,
        auto_resume=auto_resume, group_timeout=group_timeout, allow_changed_data=allow_changed_data,
        tensorboard=tensorboard, show_progress=progress,
    )
    summary = run_training(opts)
    if summary is not None:  # None: a torchrun rank other than 0
        render(summary, run, json_out)


def render(summary: dict[str, Any], run: Path, json_out: bool) -> None:
    """The run's summary: one JSON object on stdout, or one line on stderr."""
    if json_out:
        emit_json(summary)
    else:
        print_summary(summary, run)


def print_summary(summary: dict[str, Any], run: Path) -> None:
    """The run's last line on stderr: epochs, steps, time, the best and last validation errors."""
    best, last = summary["best_val_top1_error"], summary["last_val_top1_error"]
    if best is None:
        console.print(f"nothing to train: {run} has already run {count_noun(summary['epochs'], 'epoch')}")
        return
    console.print(
        f"done: {count_noun(summary['epochs'], 'epoch')}, {count_noun(summary['steps'], 'step')} in "
        f"{summary['seconds']:.0f} s; "
        f"validation top-1 error best {100 * best:.2f}% (Epoch: [{summary['best_epoch']}]), last {100 * last:.2f}%; "
        f"checkpoints in {run / 'checkpoints'}", soft_wrap=True,
    )

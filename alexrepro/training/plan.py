"""Planning a training run: what `alexrepro train` asked for (TrainOptions) resolved into a TrainPlan.

The resolved recipe (a resumed run's recipe compared with the checkpoint's, --force to accept
differences), the device type, the number of data-parallel processes, the checkpoint to resume
from, and whether an earlier run in the folder is kept aside first (a new run with --force). Every bad
request is a UserError here, before any process starts or any file is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from alexrepro.data.manifest import set_identity
from alexrepro.data.split import open_split
from alexrepro.distributed import GROUP_TIMEOUT, launcher_command, resolve_launch
from alexrepro.errors import UserError
from alexrepro.loaders.order import BatchPlan
from alexrepro.nets.lrn import check_kernel_device
from alexrepro.process.locking import command_args
from alexrepro.recipe import Recipe, diff_recipes
from alexrepro.recipe_reader import apply_overrides, load_recipe
from alexrepro.training.checkpoint import (
    Checkpoint,
    checkpoint_candidates,
    checkpoint_dir,
    find_resumable,
    read_checkpoint,
)
from alexrepro.training.run_folder import PREVIOUS, earlier_run, refuse_earlier_run
from alexrepro.training.stopping import resume_command

# Recipe fields that change how a run executes but not what it computes: a resume may change them
# without --force (schedule.epochs extends or shortens the run).
RESUME_MAY_CHANGE = {
    "schedule.epochs", "data.workers", "data.loader", "run.log_every", "run.checkpoint_every",
    "run.keep_last", "run.stall_steps", "run.compile", "run.channels_last", "run.lrn_kernel",
    "run.grouped_conv",
}


@dataclass
class TrainOptions:
    """What `alexrepro train` was asked for (recipe overrides already include the mapped options)."""

    out: Path
    run_dir: Path
    recipe: str | None = None  # a shipped name or a .toml path; None on resume = the checkpoint's
    overrides: list[str] = field(default_factory=list)  # section.key=value
    device: str = "auto"  # cpu | cuda | auto
    gpus: int = 1
    procs: int = 1  # data-parallel gloo processes on the CPU
    parallel: str | None = None  # data | model; None = data when more than one GPU
    resume: str | None = None  # None = fresh run; "" = the loadable checkpoint of the run furthest along; else a path
    # resume ("") when RUN holds a checkpoint, else a new run (an earlier run's files without one kept aside):
    # what torchrun's restarts and a requeued SLURM job run
    auto_resume: bool = False
    force: bool = False  # resume: accept a changed recipe; a new run: keep an earlier run in RUN aside
    group_timeout: float | None = None  # s a rank waits in a collective before the job ends; None = GROUP_TIMEOUT
    allow_changed_data: bool = False  # resume: continue on a prepared set other than the checkpoint's
    tensorboard: bool = False
    show_progress: bool = True


@dataclass
class TrainPlan:
    """A resolved run: what every training process needs (picklable)."""

    out: Path
    run_dir: Path
    recipe: Recipe
    device_type: str  # cpu | cuda
    world_size: int  # data-parallel processes this launch starts (1 = none)
    parallel: str  # none | data | model
    resume_path: Path | None
    tensorboard: bool
    show_progress: bool
    notes: list[str] = field(default_factory=list)
    keep_aside: bool = False  # a new run with --force: move the earlier run's files to RUN/previous-<time>/
    resume_command: str = ""  # the command that continues this run (said when it stops on a signal)
    group_timeout: float = GROUP_TIMEOUT  # s: the process group's timeout (TrainOptions.group_timeout)
    set_identity: str | None = None  # OUT's data.manifest.set_identity, which every checkpoint of the run records


def group_timeout_of(opts: TrainOptions) -> float:
    """The process group's timeout the options ask for (s; GROUP_TIMEOUT when they do not): a UserError unless
    positive. Checked before the plan: under torchrun the group is joined first."""
    timeout = GROUP_TIMEOUT if opts.group_timeout is None else opts.group_timeout
    if not timeout > 0:
        raise UserError(f"--group-timeout must be a positive number of seconds, got {timeout:g}")
    return timeout


def plan_training(opts: TrainOptions) -> TrainPlan:
    """Check the request and resolve the recipe and devices; every bad input is a UserError here."""
    if opts.auto_resume and opts.resume is not None:
        raise UserError("--auto-resume already resumes when RUN holds a checkpoint; drop --resume and --resume-from")
    train_split = open_split(opts.out, "train")  # a UserError unless OUT is a prepared set; its labels checked
    open_split(opts.out, "val")  # validated each epoch: its labels and counts checked now, before any work
    device, world, parallel = resolve_launch(opts.device, opts.gpus, opts.procs, opts.parallel)
    if Path(opts.run_dir).exists() and not Path(opts.run_dir).is_dir():
        raise UserError(f"--run {opts.run_dir} is a file; give a folder for the run")
    notes: list[str] = []
    resume_path, keep_aside, saved = None, False, None
    identity = set_identity(opts.out)
    if opts.auto_resume and opts.resume is None and checkpoint_candidates(opts.run_dir):
        opts = replace(opts, resume="")  # RUN holds a checkpoint: resume as --resume would
    if opts.resume is not None:
        resume_path, recipe, saved = resumed_recipe(opts, parallel, notes)
        check_same_set(saved, identity, opts, resume_path, notes)
    else:
        recipe, keep_aside = new_run_recipe(opts, notes)
    check_class_count(recipe, len(train_split.classes), opts.out, resume_path)
    check_kernel_device(recipe.run.lrn_kernel, device, recipe.run.compile)
    num_train, batch = len(train_split), recipe.optim.batch_size
    if num_train < batch and recipe.data.drop_last or num_train == 0:
        raise UserError(
            f"{opts.out} has {num_train} training images, fewer than one batch of {batch} (partial batches are "
            f"dropped), so nothing would train; use a smaller batch, e.g. --set optim.batch_size={max(1, num_train)}"
        )
    if saved is not None:
        batches = BatchPlan(num_train, batch, train=True, drop_last=recipe.data.drop_last).num_batches
        notes.insert(0, resume_note(opts, resume_path, saved, batches))
    command = resume_command(command_args(), Path(opts.out), Path(opts.run_dir), launcher_command())
    return TrainPlan(
        out=Path(opts.out), run_dir=Path(opts.run_dir), recipe=recipe, device_type=device, world_size=world,
        parallel=parallel, resume_path=resume_path, tensorboard=opts.tensorboard,
        show_progress=opts.show_progress, notes=notes, keep_aside=keep_aside, resume_command=command,
        group_timeout=group_timeout_of(opts), set_identity=identity,
    )


def new_run_recipe(opts: TrainOptions, notes: list[str]) -> tuple[Recipe, bool]:
    """(the recipe of a new run, whether an earlier run's files in RUN are first kept aside).

    An earlier run's files need --force; with --auto-resume they held no checkpoint (a run ended before its first
    save), so they are kept aside too, with a note, and the run starts afresh.
    """
    if opts.recipe is None:
        raise UserError("--recipe is required for a new run, e.g. --recipe tiny (see: alexrepro recipe list)")
    recipe = load_recipe(opts.recipe, opts.overrides)
    found = earlier_run(opts.run_dir)
    if found and not (opts.force or opts.auto_resume):
        raise refuse_earlier_run(opts.run_dir, found)
    if opts.auto_resume:
        notes.append(f"{checkpoint_dir(opts.run_dir)} holds no checkpoint: a new run (--auto-resume)")
    return recipe, bool(found)


def resumed_recipe(opts: TrainOptions, parallel: str, notes: list[str]) -> tuple[Path, Recipe, Checkpoint]:
    """(checkpoint to resume, the recipe to continue with, the checkpoint): the checkpoint's recipe, or
    --recipe, with the overrides.

    A change outside RESUME_MAY_CHANGE needs --force; every change is added to `notes`.
    """
    resume_path = Path(opts.resume) if opts.resume else find_resumable(opts.run_dir)
    if resume_path is None:
        damaged = checkpoint_candidates(opts.run_dir)
        if damaged:  # every one refused (each named above): a new run, keeping them aside, is what is left
            raise UserError(
                f"every checkpoint in {checkpoint_dir(opts.run_dir)} is damaged ({len(damaged)} files); start "
                f"a new run with --force instead of --resume (the run's files are first moved to "
                f"{opts.run_dir}/{PREVIOUS}<time>/), or pick a new --run")
        raise UserError(f"no checkpoint to resume in {checkpoint_dir(opts.run_dir)}; start without --resume")
    saved = read_checkpoint(resume_path)
    base = load_recipe(opts.recipe) if opts.recipe else saved.recipe
    recipe = apply_overrides(base, opts.overrides)
    changed = diff_recipes(saved.recipe, recipe)
    blocking = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if blocking and not opts.force:
        raise UserError(
            f"the recipe differs from the checkpoint's in {', '.join(blocking)}; resume with the same "
            "recipe, or add --force to continue with the new values"
        )
    if changed:
        notes.append(f"resuming with changed recipe values: {', '.join(changed)}")
    if (saved.parallel == "model") != (parallel == "model"):
        raise UserError("resume with the same --parallel mode as the checkpoint (the optimiser state differs)")
    return resume_path, recipe, saved


def resume_note(opts: TrainOptions, path: Path, saved: Checkpoint, batches: int) -> str:
    """The line every resume prints: which checkpoint, at what position, and why not a further one."""
    found = not opts.resume  # --resume: the run's own checkpoints, named by file; --resume-from: the path given
    name = path.name if found else str(path)
    line = f"resuming from {name}: epoch [{saved.epoch}] batch {saved.batch}/{batches} (step {saved.step})"
    if found and checkpoint_candidates(opts.run_dir)[0] != path:
        line += "; the checkpoints ahead of it do not load (see the warnings)"
    return line


def check_same_set(saved: Checkpoint, identity: str, opts: TrainOptions, path: Path, notes: list[str]) -> None:
    """UserError unless OUT is the prepared set the checkpoint was trained on (data.manifest.set_identity), or
    --allow-changed-data says to go on; then a note, and the run's next checkpoints record the new set."""
    if saved.set_identity == identity:
        return
    if saved.set_identity is None:
        notes.append(f"{path} does not record the prepared set it was trained on (an older or imported "
                     f"checkpoint); {opts.out} is taken to be that set")
        return
    if not opts.allow_changed_data:
        raise UserError(
            f"{opts.out} is not the prepared set {path} was trained on (another set, or this one prepared again "
            f"with other settings, source or images: set {identity[7:19]}, the checkpoint's {saved.set_identity[7:19]}); "
            "resume on the set it was trained on, or add --allow-changed-data to continue on this one")
    notes.append(f"continuing on a prepared set other than the one {path} was trained on (--allow-changed-data); "
                 "the run's next checkpoints record this one")


def check_class_count(recipe: Recipe, have: int, out: Path, resume_path: Path | None) -> None:
    """UserError unless the recipe's net has one output per class of the prepared set (the one check of it)."""
    if recipe.model.num_classes == have:
        return
    if resume_path is not None:
        raise UserError(
            f"{resume_path} is a net for {recipe.model.num_classes} classes but {out} has {have}; "
            "resume on the set it was trained on, or start a new --run"
        )
    raise UserError(
        f"the recipe has model.num_classes = {recipe.model.num_classes} but {out} has {have} classes; "
        f"add --set model.num_classes={have}"
    )

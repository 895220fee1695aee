"""`alexrepro prep`: every source image to HDF5 shards under OUT, a manifest, skipped.tsv, the mean image.

Images are assigned to shards deterministically (each split's items sorted by key, chunked by
--shard-size), each worker builds whole shards, and a shard is renamed into place only when complete,
so a killed prep started again skips the complete shards and produces the same set (a complete shard
that no longer reads, or whose counts disagree, is made again). Until the manifest is written,
OUT/.prep.json records what is being prepared, so a different source or different options are refused
instead of being mixed in (alexrepro.data.prep_state).

One prep at a time writes into OUT (alexrepro.process.locking). Its workers end with it however it ends
(alexrepro.process.lifetime) and never write after; SIGINT or SIGTERM stops it at once, keeping the complete shards.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Any

from rich.progress import Progress

from alexrepro.data import sources
from alexrepro.data.imaging import QUIRKS, RESIZE_MODES, BadImage, prepare_and_describe
from alexrepro.data.manifest import (
    CONVERTED,
    MANIFEST,
    SKIPPED,
    ClassInfo,
    Manifest,
    PrepRecord,
    ShardEntry,
    SkippedFile,
    SplitEntry,
    write_manifest,
)
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep_state import (
    RESUME_HINT,
    SIDECARS,
    ShardDamaged,
    ShardResult,
    ShardTask,
    check_apart,
    check_out,
    clean_field,
    clear_state,
    count_kinds,
    earlier_records,
    identity,
    read_converted,
    resumed_shard,
    sidecar,
    split_digest,
    write_rows,
    write_state,
)
from alexrepro.data.shards import ENCODINGS, IMAGE_SIZE, write_shard
from alexrepro.data.source_files import printable
from alexrepro.data.stats_file import STATS
from alexrepro.errors import UserError
from alexrepro.process import lifetime
from alexrepro.process.atomic import atomic_write_text, described_write_errors, writable_folder
from alexrepro.process.locking import command_line, lock_folder
from alexrepro.process.signals import Stopped
from alexrepro.progress import console, make_progress


def available_cores() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def shard_file(split: str, index: int) -> str:
    """A shard's path relative to OUT."""
    return f"{split}/{index:05d}.h5"


def plan_shards(items: list[sources.Item], shard_size: int) -> list[list[sources.Item]]:
    """Deterministic assignment: the items (already sorted by key) in consecutive chunks."""
    return [items[i : i + shard_size] for i in range(0, len(items), shard_size)]


# --------------------------------------------------------------------------------------------- one shard
_progress_queue: Any = None


def _set_progress_queue(progress_queue: Any) -> None:
    """In a worker (bound to prep, Ctrl-C left to it): where it reports its progress."""
    global _progress_queue
    _progress_queue = progress_queue


def build_shard(task: ShardTask, report: Any = None) -> ShardResult:
    """Read, convert and encode one shard's images; write the shard (and its sidecars) atomically."""
    images, labels, keys, skipped, converted = [], [], [], [], []
    last = time.monotonic()
    for n, item in enumerate(task.items, 1):
        try:
            data = sources.read_item(item)
            stored, kinds = prepare_and_describe(data, task.encoding, task.quality, name=item.key, resize=task.resize)
            images.append(stored)
            labels.append(item.label)
            keys.append(item.key)
            if kinds:
                converted.append((item.key, ",".join(kinds)))
        except BadImage as e:
            skipped.append((item.key, str(e)))
        except OSError as e:
            skipped.append((item.key, f"unreadable ({clean_field(e)})"))
        now = time.monotonic()
        if report is not None and (now - last > 0.2 or n == len(task.items)):
            report(task.split, task.index, n)
            last = now
    for suffix, rows in zip(SIDECARS, (skipped, converted), strict=True):
        if rows:  # written before the shard, whose rename marks the shard and its sidecars complete
            write_rows(sidecar(task.path, suffix), rows)
    with described_write_errors(task.path, RESUME_HINT):
        write_shard(task.path, task.encoding, images, labels, keys)
    return ShardResult(task.split, task.index, len(keys), skipped, converted=converted)


def _build_shard_in_worker(task: ShardTask) -> ShardResult:
    def report(split: str, index: int, n: int) -> None:
        _progress_queue.put((split, index, n))

    return build_shard(task, report)


# --------------------------------------------------------------------------------------------- the run
def _run_tasks(pending: list[ShardTask], workers: int, bar: Progress, bars: dict[str, Any]) -> list[ShardResult]:
    """Build the pending shards (in-process for one worker, else a spawn pool), advancing the bars."""
    done_in: dict[tuple[str, int], int] = {}

    def report(split: str, index: int, n: int) -> None:
        done_in[(split, index)] = n
        bar.update(bars[split], completed=bars[split + "/base"] + sum(v for (s, _), v in done_in.items() if s == split))

    results = []
    if workers <= 1:
        for task in pending:
            results.append(build_shard(task, report))
        return results
    progress_queue = multiprocessing.get_context("spawn").Queue()
    died = ("a prep worker died (killed, or out of memory?); the complete shards are kept: run the same prep again "
            "to resume, with fewer --workers if memory is short")
    # A stop signal, a failed shard: the workers end now, their shards are redone.
    with lifetime.worker_pool(workers, died, _set_progress_queue, (progress_queue,)) as pool:
        futures = {pool.submit(_build_shard_in_worker, t): t for t in pending}
        waiting = set(futures)
        while waiting:
            finished, waiting = wait(waiting, timeout=0.25, return_when=FIRST_COMPLETED)
            while True:
                try:
                    report(*progress_queue.get_nowait())
                except queue_mod.Empty:
                    break
            for fut in finished:
                res = fut.result()
                report(res.split, res.index, len(futures[fut].items))
                results.append(res)
    return results


def plan_tasks(out: Path, source: sources.Source, options: PrepOptions) -> dict[str, list[ShardTask]]:
    """Every shard of every split, in order; makes the split folders and removes a killed run's half-written files."""
    tasks: dict[str, list[ShardTask]] = {}
    for name, split in source.splits.items():
        (out / name).mkdir(exist_ok=True)
        remove_temp_files(out / name)
        tasks[name] = [
            ShardTask(name, i, out / shard_file(name, i), chunk, options.encoding, options.quality, options.resize)
            for i, chunk in enumerate(plan_shards(split.items, options.shard_size))
        ]
    return tasks


def remove_temp_files(folder: Path) -> None:
    """Remove the half-written files of a killed or stopped writer (atomic.temp_name); OUT must be locked."""
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


def check_options(options: PrepOptions) -> None:
    """A UserError naming the first option out of its range."""
    if options.encoding not in ENCODINGS:
        raise UserError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {options.encoding!r}")
    if not 1 <= options.quality <= 100:
        raise UserError(f"--quality must be between 1 and 100, got {options.quality}")
    if options.resize not in RESIZE_MODES:
        raise UserError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {options.resize!r}")
    if options.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {options.shard_size}")
    if options.workers < 0:
        raise UserError(f"--workers must be at least 1 (or 0 for all cores), got {options.workers}")


def prep(src: Path, out: Path, options: PrepOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Prepare SRC into OUT (resuming an unfinished prep of the same set); returns the --json summary.

    Holds OUT's lock throughout. Stopped by a signal, it raises Stopped saying how many shards it kept.
    """
    options = options or PrepOptions()
    src, out = Path(src), Path(out)
    check_options(options)
    check_apart(src, out)
    start = time.monotonic()
    source = sources.find_sources(
        src, options.splits, options.devkit, options.val_labels, options.test_labels, options.synset_mapping,
        leave_out=out,  # OUT inside SRC is no class and no image: a resumed prep finds what the first found
    )
    for note in source.notes:
        console.print(f"note: {printable(note)}", soft_wrap=True, markup=False)
    for name, split in source.splits.items():
        if not split.items:
            raise UserError(f"the {name} split ({split.layout}) has no labelled image; check SRC and the labels")
    ident = identity(src, options, source)
    digests = {name: split_digest(s) for name, s in source.splits.items()}
    writable_folder(out, "OUT")  # creates only a missing OUT, where check_out has nothing to refuse
    with lock_folder(out, "OUT"):  # first: a prep running in OUT is named, not its half-made set judged
        previous = check_out(out, ident, digests)
        earlier_digests = previous.prep.splits if previous is not None and previous.prep is not None else {}
        record = PrepRecord(ident, {**earlier_digests, **digests})  # the splits prepared before stay recorded
        tasks = plan_tasks(out, source, options)
        try:
            summary = _prep_locked(out, options, source, record, previous, tasks, progress)
        except BaseException as e:
            for name in tasks:  # the workers are gone (stop_pool): what they left half-written goes too
                remove_temp_files(out / name)
            if not isinstance(e, Stopped):
                raise
            done = sum(t.path.is_file() for split_tasks in tasks.values() for t in split_tasks)
            total = sum(len(split_tasks) for split_tasks in tasks.values())
            raise Stopped(e.signum, f"complete shards kept in {out}: {done} of {total} (the manifest and mean "
                                    f"image come when prep finishes); resume with: {command_line()}") from None
    summary["seconds"] = round(time.monotonic() - start, 3)
    return summary


def _prep_locked(
    out: Path,
    options: PrepOptions,
    source: sources.Source,
    record: PrepRecord,
    previous: Manifest | None,
    tasks: dict[str, list[ShardTask]],
    progress: bool,
) -> dict[str, Any]:
    """The prep itself, OUT locked: build the missing shards, write the manifest, compute the mean image."""
    write_state(out, record)
    results: dict[str, dict[int, ShardResult]] = {name: {} for name in tasks}
    pending = []
    earlier = earlier_records(out, previous)
    for name, split_tasks in tasks.items():
        for t in split_tasks:
            if t.path.is_file():
                try:
                    results[name][t.index] = resumed_shard(t, earlier)
                    continue
                except ShardDamaged as e:
                    console.print(f"note: {t.path} is damaged ({e}); preparing it again", soft_wrap=True, markup=False)
                    for path in (t.path, *(sidecar(t.path, suffix) for suffix in SIDECARS)):
                        path.unlink(missing_ok=True)
            pending.append(t)
    workers = min(options.workers or available_cores(), max(1, len(pending)))

    bars: dict[str, Any] = {}
    with make_progress(show=progress) as bar:
        for name, split in source.splits.items():
            base = sum(len(t.items) for t in tasks[name] if t.index in results[name])
            bars[name] = bar.add_task(f"prep {name}", total=len(split.items), completed=base, unit="images")
            bars[name + "/base"] = base
        run_start = time.monotonic()
        for res in _run_tasks(pending, workers, bar, bars):
            results[res.split][res.index] = res
    run_seconds = time.monotonic() - run_start

    summary = _finish(out, source, options, record, previous, tasks, results)
    new_train = any(t.split == "train" for t in pending)
    if "train" in source.splits and (new_train or not (out / STATS).is_file()):
        from alexrepro.data.stats import compute_mean

        # the requested count, not `workers` (capped by the shards left, 1 when resuming with none)
        stats = compute_mean(out, workers=options.workers or available_cores(), progress=progress)
        summary["channel_mean"] = [float(v) for v in stats.channel_mean]
    clear_state(out)
    for split_tasks in tasks.values():  # the manifest, skipped.tsv and converted.tsv now hold what they held
        for t in split_tasks:
            for suffix in SIDECARS:
                sidecar(t.path, suffix).unlink(missing_ok=True)
    converted = sum(len(t.items) for t in pending)
    summary.update(
        converted=converted,
        images_per_s=round(converted / run_seconds, 1) if run_seconds > 0 and converted else None,
        workers=workers,
    )
    return summary


def _finish(
    out: Path,
    source: sources.Source,
    options: PrepOptions,
    record: PrepRecord,
    previous: Manifest | None,
    tasks: dict[str, list[ShardTask]],
    results: dict[str, dict[int, ShardResult]],
) -> dict[str, Any]:
    """Check the counts, write the manifest, skipped.tsv and converted.tsv; the summary of every split."""
    splits = dict(previous.splits) if previous is not None else {}  # splits not prepared this time stay
    converted = [row for row in read_converted(out / CONVERTED) if row[0] not in source.splits and row[0] in splits]
    summary: dict[str, Any] = {"out": str(out), "source": record.identity["source"], "splits": {}}
    for name, split in source.splits.items():
        res = [results[name][t.index] for t in tasks[name]]
        written = sum(r.count for r in res)
        skipped = list(split.unlabelled) + [s for r in res for s in r.skipped]
        assert written + len(skipped) == split.found, f"{name}: {written} + {len(skipped)} != {split.found}"
        check_written(name, split, written, skipped, source.classes)
        splits[name] = SplitEntry(
            count=written,
            found=split.found,
            skipped=len(skipped),
            layout=split.layout,
            shards=[ShardEntry(shard_file(name, r.index), r.count) for r in res],
            skipped_files=[SkippedFile(k, r) for k, r in skipped],
            quirks=count_kinds([kinds for r in res for _, kinds in r.converted]),
        )
        converted += [(name, key, kinds) for r in res for key, kinds in r.converted]
        summary["splits"][name] = {
            "found": split.found,
            "written": written,
            "skipped": len(skipped),
            "shards": len(res),
            "resumed_shards": sum(r.resumed for r in res),
            "quirks": splits[name].quirks,
        }
    manifest = Manifest(
        source=record.identity["source"],
        encoding=options.encoding,
        quality=record.identity["quality"],
        image_size=IMAGE_SIZE,
        resize=options.resize,
        shard_size=options.shard_size,
        classes=list(source.classes),
        splits={k: splits[k] for k in sources.SPLITS if k in splits},
        skipped=sum(s.skipped for s in splits.values()),
        notes=list(source.notes),
        prep=record,
    )
    write_records(out, manifest, converted)
    summary["skipped"] = manifest.skipped
    summary["classes"] = len(source.classes)
    summary["quirks"] = {
        kind: {"count": n, "what": QUIRKS[kind], "first": [k for _, k, v in converted if kind in v.split(",")][:5]}
        for kind, n in count_kinds([v for _, _, v in converted]).items()
    }
    return summary


def check_written(name: str, split: sources.SplitSource, written: int, skipped: list[tuple[str, str]],
                  classes: list[ClassInfo]) -> None:
    """A UserError when no image of the split could be read, or (train) none of a class."""
    if written == 0:
        raise UserError(f"no image of the {name} split ({split.layout}) could be read; see the reasons: "
                        f"{skipped[0][1]}")
    if name == "train":
        sources.check_every_class_written(split, classes, dict(skipped))


def write_records(out: Path, manifest: Manifest, converted: list[tuple[str, str, str]]) -> None:
    """skipped.tsv, converted.tsv (rows of split, path, kinds) and, last, manifest.json, which completes the set."""
    rows = [(f.path, f.reason) for sp in manifest.splits.values() for f in sp.skipped_files]
    write_rows(out / SKIPPED, rows, header="path\treason\n")
    with described_write_errors(out / CONVERTED, RESUME_HINT):
        atomic_write_text(out / CONVERTED, "split\tpath\tquirks\n" + "".join(
            f"{sp}\t{clean_field(k)}\t{clean_field(v)}\n" for sp, k, v in converted))
    with described_write_errors(out / MANIFEST, RESUME_HINT):
        write_manifest(out, manifest)

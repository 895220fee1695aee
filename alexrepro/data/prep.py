"""`alexrepro prep`: every source image to HDF5 shards under OUT, a manifest, skipped.tsv, the mean image.

Images are assigned to shards deterministically (each split's items sorted by key, chunked by
--shard-size), each worker builds whole shards, and a shard is renamed into place only when complete,
so a killed prep started again skips the complete shards and produces the same set. Until the manifest
is written, OUT/.prep.json records what is being prepared, so a different source or different options
are refused instead of being mixed in (alexrepro.data.prep_state).
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from alexrepro.atomic import atomic_write_text, writable_folder
from alexrepro.data import sources
from alexrepro.data.imaging import JPEG_QUALITY, RESIZE_MODES, BadImage, prepare_image
from alexrepro.data.manifest import (
    SKIPPED,
    Manifest,
    PrepRecord,
    ShardEntry,
    SkippedFile,
    SplitEntry,
    write_manifest,
)
from alexrepro.data.prep_state import check_out, clear_state, identity, split_digest, write_state
from alexrepro.data.shards import ENCODINGS, IMAGE_SIZE, write_shard
from alexrepro.data.stats_file import STATS
from alexrepro.errors import UserError, WorkFailed
from alexrepro.progress import console, make_progress

SHARD_SIZE = 1024  # images per shard (default of --shard-size)


@dataclass
class PrepOptions:
    """What `alexrepro prep` does besides SRC and OUT (the command-line options)."""

    encoding: str = "jpeg"
    quality: int = JPEG_QUALITY
    resize: str = "shorter-side"  # §2's rescale and central crop | "warp": Caffe's (imaging.RESIZE_MODES)
    shard_size: int = SHARD_SIZE
    workers: int = 0  # 0: all cores
    splits: list[str] | None = None  # None: every split found
    devkit: Path | None = None
    val_labels: Path | None = None
    test_labels: Path | None = None
    synset_mapping: Path | None = None


@dataclass
class ShardTask:
    split: str
    index: int
    path: Path
    items: list[sources.Item]
    encoding: str
    quality: int
    resize: str = "shorter-side"


@dataclass
class ShardResult:
    split: str
    index: int
    count: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed: bool = False


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


def _clean(text: str) -> str:
    return " ".join(str(text).split())  # one TSV field: no tabs or newlines


# --------------------------------------------------------------------------------------------- one shard
_progress_queue: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def build_shard(task: ShardTask, report: Any = None) -> ShardResult:
    """Read, convert and encode one shard's images; write the shard (and its skipped list) atomically."""
    images, labels, keys, skipped = [], [], [], []
    last = time.monotonic()
    for n, item in enumerate(task.items, 1):
        try:
            data = sources.read_item(item)
            images.append(prepare_image(data, task.encoding, task.quality, resize=task.resize))
            labels.append(item.label)
            keys.append(item.key)
        except BadImage as e:
            skipped.append((item.key, str(e)))
        except OSError as e:
            skipped.append((item.key, f"unreadable ({_clean(e)})"))
        now = time.monotonic()
        if report is not None and (now - last > 0.2 or n == len(task.items)):
            report(task.split, task.index, n)
            last = now
    sidecar = task.path.with_suffix(".skipped.tsv")
    if skipped:  # written before the shard, whose rename marks the pair complete
        atomic_write_text(sidecar, "".join(f"{_clean(k)}\t{_clean(r)}\n" for k, r in skipped))
    write_shard(task.path, task.encoding, images, labels, keys)
    return ShardResult(task.split, task.index, len(keys), skipped)


def _build_shard_in_worker(task: ShardTask) -> ShardResult:
    def report(split: str, index: int, n: int) -> None:
        _progress_queue.put((split, index, n))

    return build_shard(task, report)


def resumed_shard(task: ShardTask) -> ShardResult:
    """The result of a shard an earlier run completed: its count, and what it skipped (keys not stored)."""
    with h5py.File(task.path, "r") as f:
        count = int(f.attrs["count"])
        stored = {k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in f["keys"][:]}
    reasons: dict[str, str] = {}
    sidecar = task.path.with_suffix(".skipped.tsv")
    if sidecar.is_file():
        for line in sidecar.read_text().splitlines():
            key, _, reason = line.partition("\t")
            reasons[key] = reason
    skipped = [
        (it.key, reasons.get(_clean(it.key), "skipped by an earlier run")) for it in task.items if it.key not in stored
    ]
    return ShardResult(task.split, task.index, count, skipped, resumed=True)


# --------------------------------------------------------------------------------------------- the run
def _run_tasks(pending: list[ShardTask], workers: int, bar: Any, bars: dict[str, Any]) -> list[ShardResult]:
    """Build the pending shards (in-process for one worker, else a spawn pool), advancing the bars."""
    done_in: dict[tuple[str, int], int] = {}

    def report(split: str, index: int, n: int) -> None:
        done_in[(split, index)] = n
        if bar is not None:
            bar.update(bars[split], completed=bars[split + "/base"] + sum(
                v for (s, _), v in done_in.items() if s == split
            ))

    results = []
    if workers <= 1:
        for task in pending:
            results.append(build_shard(task, report))
        return results
    ctx = multiprocessing.get_context("spawn")  # fork-safety: no inherited h5py handles or bar threads
    progress_queue = ctx.Queue()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue,)) as pool:
        futures = {pool.submit(_build_shard_in_worker, t): t for t in pending}
        waiting = set(futures)
        try:
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
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


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


def plan_tasks(out: Path, source: sources.Source, options: PrepOptions) -> dict[str, list[ShardTask]]:
    """Every shard of every split, in order; a killed run's half-written files are removed first."""
    tasks: dict[str, list[ShardTask]] = {}
    for name, split in source.splits.items():
        (out / name).mkdir(exist_ok=True)
        for stale in (out / name).glob(".*.tmp-*"):
            stale.unlink()
        tasks[name] = [
            ShardTask(name, i, out / shard_file(name, i), chunk, options.encoding, options.quality, options.resize)
            for i, chunk in enumerate(plan_shards(split.items, options.shard_size))
        ]
    return tasks


def prep(src: Path, out: Path, options: PrepOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """Prepare SRC into OUT (resuming an unfinished prep of the same set); returns the --json summary."""
    options = options or PrepOptions()
    src, out = Path(src), Path(out)
    check_options(options)
    start = time.monotonic()
    source = sources.find_sources(
        src, options.splits, options.devkit, options.val_labels, options.test_labels, options.synset_mapping
    )
    for note in source.notes:
        console.print(f"note: {note}")
    for name, split in source.splits.items():
        if not split.items:
            raise UserError(f"the {name} split ({split.layout}) has no labelled image; check SRC and the labels")
    ident = identity(src, options, source)
    digests = {name: split_digest(s) for name, s in source.splits.items()}
    previous = check_out(out, ident, digests)
    writable_folder(out, "OUT")
    earlier = previous.prep.splits if previous is not None and previous.prep is not None else {}
    record = PrepRecord(ident, {**earlier, **digests})
    write_state(out, record)

    tasks = plan_tasks(out, source, options)
    results: dict[str, dict[int, ShardResult]] = {name: {} for name in tasks}
    pending = []
    for name, split_tasks in tasks.items():
        for t in split_tasks:
            if t.path.is_file():
                results[name][t.index] = resumed_shard(t)
            else:
                pending.append(t)
    workers = min(options.workers or available_cores(), max(1, len(pending)))

    bar = make_progress() if progress else None
    bars: dict[str, Any] = {}
    if bar is not None:
        for name, split in source.splits.items():
            base = sum(len(t.items) for t in tasks[name] if t.index in results[name])
            bars[name] = bar.add_task(f"prep {name}", total=len(split.items), completed=base, unit="images")
            bars[name + "/base"] = base
        bar.start()
    run_start = time.monotonic()
    try:
        for res in _run_tasks(pending, workers, bar, bars):
            results[res.split][res.index] = res
    except OSError as e:
        raise WorkFailed(f"writing shards under {out} failed ({_clean(e)}); free space or fix OUT, then resume") from None
    finally:
        if bar is not None:
            bar.stop()
    run_seconds = time.monotonic() - run_start

    summary = _finish(out, source, options, record, previous, tasks, results)
    new_train = any(t.split == "train" for t in pending)
    if "train" in source.splits and (new_train or not (out / STATS).is_file()):
        from alexrepro.data.stats import compute_mean

        # the requested count, not `workers` (capped by the shards left, 1 when resuming with none)
        stats = compute_mean(out, workers=options.workers or available_cores(), progress=progress)
        summary["channel_mean"] = [float(v) for v in stats.channel_mean]
    clear_state(out)
    converted = sum(len(t.items) for t in pending)
    summary.update(
        seconds=round(time.monotonic() - start, 3),
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
    """Check the counts, write the manifest and skipped.tsv; the summary of every split."""
    splits = dict(previous.splits) if previous is not None else {}  # splits not prepared this time stay
    summary: dict[str, Any] = {"out": str(out), "source": record.identity["source"], "splits": {}}
    for name, split in source.splits.items():
        res = [results[name][t.index] for t in tasks[name]]
        written = sum(r.count for r in res)
        skipped = list(split.unlabelled) + [s for r in res for s in r.skipped]
        assert written + len(skipped) == split.found, f"{name}: {written} + {len(skipped)} != {split.found}"
        if written == 0:
            raise UserError(f"no image of the {name} split ({split.layout}) could be read; see the reasons: "
                            f"{skipped[0][1]}")
        splits[name] = SplitEntry(
            count=written,
            found=split.found,
            skipped=len(skipped),
            layout=split.layout,
            shards=[ShardEntry(shard_file(name, r.index), r.count) for r in res],
            skipped_files=[SkippedFile(k, r) for k, r in skipped],
        )
        summary["splits"][name] = {
            "found": split.found,
            "written": written,
            "skipped": len(skipped),
            "shards": len(res),
            "resumed_shards": sum(r.resumed for r in res),
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
    rows = [(f.path, f.reason) for sp in manifest.splits.values() for f in sp.skipped_files]
    atomic_write_text(out / SKIPPED, "path\treason\n" + "".join(f"{_clean(p)}\t{_clean(r)}\n" for p, r in rows))
    write_manifest(out, manifest)
    summary["skipped"] = manifest.skipped
    summary["classes"] = len(source.classes)
    return summary

"""The NVIDIA DALI backend: parallel external source → decode → resize → crop/mirror with the drawn views.

DALI decodes on the GPU ("mixed") when the device is CUDA, on the CPU otherwise (device_id=None:
DALI's CPU mode needs no GPU). Training crop corners and flips come in per sample from the one
sampler (via `ShardSource`) and are applied with fn.slice (absolute anchors) and fn.flip; the test
views (the centre, or the ten of §4.1) are the preset's, pipeline constants. The float maths (mean
subtraction, lighting, NCHW) is NOT done in DALI: the uint8 crops go through the same `finish_batch`
as the PyTorch backend, so for the same draws both give the same tensor up to the JPEG decoders'
differences. Batches are prefetched (prefetch_queue_depth) so that loading overlaps training.

`DaliTuning` holds how the pipeline runs (prefetch depths, threads, the hardware decoder's share, decoding
only the crop's region, batch or sample mode of the Python source): settings that change the speed, never
the tensors (tests/test_dali.py), chosen by `alexrepro bench loader --dali-variant` measurements
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.errors import UserError, WorkFailed
from alexrepro.loaders.augment import CropParams, finish_batch, to_device
from alexrepro.loaders.base import Loader, LoaderSpec
from alexrepro.loaders.batch_read import first_damage
from alexrepro.loaders.dali_source import SampleSource, ShardSource, nonempty_batches, real_count
from alexrepro.loaders.order import rank_batch

PREFETCH = 2  # batches DALI prepares ahead, in the pipeline and in the Python workers
STAGES = ("read", "decode", "crop")  # where a pipeline may stop: stored bytes, decoded images, the crops


@dataclass(frozen=True)
class DaliTuning:
    """How the DALI pipeline runs; none of it changes a tensor. None: the default named beside each."""

    prefetch: int = PREFETCH  # batches the pipeline prepares ahead (its prefetch_queue_depth)
    source_depth: int | None = None  # batches in flight in the Python workers; None: max(prefetch, py_workers),
    #                                  in sample mode prefetch (each batch already keeps every worker busy)
    threads: int | None = None  # DALI's CPU threads (decoding on the CPU, the mixed decoder's host part); data.workers
    py_workers: int | None = None  # Python worker processes reading the shards; None: data.workers
    hw_decoder_load: float | None = None  # mixed decoder only: the share of JPEGs for the hardware decoder; DALI's 0.65
    bytes_per_sample_hint: int | None = None  # the decoder's output preallocated per sample; None: DALI's
    roi_decode: bool = False  # training at image_size 256: decode only each crop's region (decoders.image_slice)
    per_sample: bool = False  # sample mode: every Python worker reads part of every batch (SampleSource)

    def __post_init__(self) -> None:
        for name in ("prefetch", "source_depth", "threads", "py_workers", "bytes_per_sample_hint"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"DALI setting {name} must be a whole number of at least 1, got {value!r}")
        if self.hw_decoder_load is not None and not 0.0 <= self.hw_decoder_load <= 1.0:
            raise UserError(f"DALI setting hw_decoder_load must lie in [0, 1], got {self.hw_decoder_load!r}")

    def workers(self, data_workers: int) -> tuple[int, int, int]:
        """(CPU threads, Python workers, batches in flight in them) for a recipe's data.workers."""
        threads = self.threads or max(1, data_workers)
        py = self.py_workers or max(1, data_workers)
        return threads, py, self.source_depth or (self.prefetch if self.per_sample else max(self.prefetch, py))

    @classmethod
    def parse(cls, text: str) -> DaliTuning:
        """A tuning from "key=value,key=value" (the benchmark's --dali-variant); a UserError for a bad one."""
        fields = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, eq, raw = part.partition("=")
            if not eq or key not in fields:
                raise UserError(f"DALI setting {part!r}: use key=value with a key among {', '.join(fields)}")
            try:
                if key in ("roi_decode", "per_sample"):
                    if raw.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(raw)
                    values[key] = raw.lower() in ("true", "1")
                else:
                    values[key] = float(raw) if key == "hw_decoder_load" else int(raw)
            except ValueError:
                raise UserError(f"DALI setting {part!r}: {raw!r} is not a value for {key}") from None
        return cls(**values)


def _decoder_options(tuning: DaliTuning, gpu: bool) -> dict[str, Any]:
    """The decoder's arguments: RGB, libjpeg-turbo's chroma upsampling, and the tuning's settings."""
    from nvidia.dali import types

    # jpeg_fancy_upsampling: nvJPEG upsamples 4:2:0 chroma the way libjpeg-turbo does (PIL, the mean
    # image, eval and predict), so a net trained on DALI-GPU batches sees the same pixels.
    options: dict[str, Any] = {"device": "mixed" if gpu else "cpu", "output_type": types.RGB,
                               "jpeg_fancy_upsampling": True}
    if tuning.hw_decoder_load is not None and gpu:
        options["hw_decoder_load"] = tuning.hw_decoder_load
    if tuning.bytes_per_sample_hint is not None:
        options["bytes_per_sample_hint"] = tuning.bytes_per_sample_hint
    return options


def _source_outputs(source: ShardSource, encoding: str, depth: int) -> Any:
    """Inside a pipeline's graph: the Python source's outputs (stored, anchor, flip, label, α), `depth` ahead.

    Batch mode hands each batch to ONE Python worker, and only `depth` batches are in flight: a depth of one
    batch per worker lets every worker read (at depth 2, 16 workers on an H200 gave 9.0k images/s, the
    PyTorch loader 23.8k; docs/PERFORMANCE.md). Sample mode (SampleSource) splits each batch over all the
    workers instead.
    """
    from nvidia.dali import fn

    mode = {"batch": False} if isinstance(source, SampleSource) else {"batch": True, "batch_info": True}
    return fn.external_source(source, num_outputs=5, parallel=True, prefetch_queue_depth=depth,
                              layout=["HWC" if encoding == "raw" else "", "", "", "", ""], **mode)


def build_pipeline(spec: LoaderSpec, source: ShardSource, encoding: str, max_batch: int,
                   tuning: DaliTuning | None = None, stage: str = "crop") -> Any:
    """A built DALI pipeline whose outputs are (uint8 crops NHWC or N×V×c×c×3, labels, anchors, flips, α).

    stage "read" or "decode" stops early, with (stored bytes, labels) or (decoded images, labels): what
    `alexrepro bench loader --stages` times.
    """
    from nvidia.dali import fn, pipeline_def, types

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    tuning = tuning or DaliTuning()
    d = spec.data
    gpu = spec.device.type == "cuda"
    device_id = (spec.device.index if spec.device.index is not None else torch.cuda.current_device()) if gpu else None
    shape = np.array([d.crop_size, d.crop_size], dtype=np.int32)
    threads, py_workers, depth = tuning.workers(d.workers)
    # Only a training crop of the 256 image as stored can be cut while decoding (a resize needs the whole image).
    roi = tuning.roi_decode and encoding != "raw" and spec.preset is None and d.image_size == IMAGE_SIZE

    @pipeline_def
    def graph():  # noqa: ANN202 - DALI's graph-building function
        stored, anchor, flip, label, alpha = _source_outputs(source, encoding, depth)
        if stage == "read":
            return stored, label
        if encoding == "raw":
            img = stored.gpu() if gpu else stored
        elif roi and stage == "crop":  # the same pixels as decoding whole and slicing (tests/test_dali.py), fewer decoded
            return fn.flip(fn.decoders.image_slice(stored, anchor, shape, axis_names="HW",
                                                   **_decoder_options(tuning, gpu)),
                           horizontal=flip), label, anchor, flip, alpha
        else:
            img = fn.decoders.image(stored, **_decoder_options(tuning, gpu))
        if stage == "decode":
            return img, label
        if d.image_size != IMAGE_SIZE:  # antialiased linear (triangle) filter, as PIL's bilinear
            img = fn.resize(img, size=[d.image_size, d.image_size], antialias=True,
                            interp_type=types.INTERP_LINEAR, dtype=types.UINT8)
        if spec.preset is not None:  # evaluation: the preset's views, constants of the pipeline
            views = [fn.flip(fn.slice(img, np.array([y, x], np.int32), shape, axis_names="HW"),
                             horizontal=int(f))
                     for y, x, f in spec.preset.views]
            img = views[0] if len(views) == 1 else fn.stack(*views)
        else:
            img = fn.flip(fn.slice(img, anchor, shape, axis_names="HW"), horizontal=flip)
        return img, label, anchor, flip, alpha

    # Fork is DALI's fast default but cannot follow CUDA initialisation in this process.
    method = "spawn" if torch.cuda.is_available() and torch.cuda.is_initialized() else "fork"
    pipe = graph(batch_size=max_batch, num_threads=threads, device_id=device_id,
                 seed=spec.seed, prefetch_queue_depth=tuning.prefetch, py_num_workers=py_workers,
                 py_start_method=method)
    pipe.build()
    return pipe


def close_pipeline(pipe: Any) -> None:
    """End a built pipeline and its Python worker processes."""
    pool = getattr(pipe, "_py_pool", None)
    pipe._shutdown()  # DALI has no public close; this is what its __del__ calls
    if pool is not None:
        pool.close()


def to_torch(out: Any, device: torch.device) -> torch.Tensor:
    """A DALI TensorList (CPU or GPU, uniform shape) as a torch tensor; CPU mode goes through numpy."""
    from nvidia.dali.tensors import TensorListGPU

    if isinstance(out, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = out.as_tensor()
        dst = torch.empty(t.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(device))
        return dst
    return torch.from_numpy(out.as_array())


class DaliLoader(Loader):
    """DALI backend; the pipeline and its worker processes live across epochs while epochs follow on."""

    kind = "dali"

    def __init__(self, spec: LoaderSpec, tuning: DaliTuning | None = None) -> None:
        super().__init__(spec)
        self.tuning = tuning or DaliTuning()
        self._pipe: Any = None
        self._next: tuple[int, int] | None = None  # the (epoch, start) the built pipeline serves next

    def _pipeline(self) -> Any:
        """The built pipeline positioned at (self.epoch, self.start_batch), rebuilt if it is not."""
        want = (self.epoch, self.start_batch)
        if self._pipe is not None and self._next is not None:
            # evaluation takes nothing from the epoch number: any epoch from batch 0 follows on
            if want == self._next or (not self.spec.train and want[1] == 0 == self._next[1]):
                return self._pipe
        self._shutdown()
        self._pipe = build_pipeline(self.spec, self._source(), self.dataset.encoding, self._max_batch, self.tuning)
        self._next = want
        self._first_epoch = self.epoch
        self._epochs_built = 0
        return self._pipe

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec, preset = self.spec, self.spec.preset
        pipe = self._pipeline()
        self._next = None  # until this epoch is read to its end, the pipeline is mid-epoch
        for b in range(self.start_batch, nonempty_batches(self.plan)):
            try:
                crops, labels, anchor, flip, alpha = pipe.run()
            except Exception as e:  # DALI's own words for a damaged image, or a worker's traceback
                raise self._failure(b, e) from None
            labels = labels.as_array()
            n = real_count(labels)  # sample mode fills a short batch up to DALI's fixed size: keep its own images
            images = to_torch(crops, spec.device)[:n]
            if preset is not None:
                params = preset.params(n)
            else:
                yx = anchor.as_array()[:n].astype(np.int64)
                params = CropParams(yx[:, 0], yx[:, 1], flip.as_array()[:n].astype(bool), alpha.as_array()[:n])
            images = finish_batch(images, params, self.colour, spec.device, spec.channels_last)
            yield images, to_device(spec.device, labels[:n])[0]
        try:
            pipe.run()
        except StopIteration:
            pipe.reset()
        else:
            raise RuntimeError("the DALI source gave more batches than the epoch plan holds")
        self._epochs_built += 1
        self._next = (self._first_epoch + self._epochs_built, 0)
        for _ in range(max(self.start_batch, nonempty_batches(self.plan)), self.plan.num_batches):
            yield self.empty_batch()

    def _failure(self, batch: int, error: Exception) -> UserError | WorkFailed:
        """The one-line error for a failed pipe.run() at `batch`: the damaged image the PyTorch backend would
        name (sought in the batches the pipeline was preparing), else DALI's reason."""
        try:  # DALI says the pipeline is no longer valid: end it (and its workers); it is not reused
            self._shutdown()
        except Exception:  # noqa: BLE001 - what a broken pipeline does as it ends is not this error
            self._pipe, self._next = None, None
        ahead = 1 + self.tuning.prefetch + self.tuning.workers(self.spec.data.workers)[2]  # in flight at the failure
        for b in range(batch, min(batch + ahead, nonempty_batches(self.plan))):
            damage = first_damage(self.dataset, rank_batch(self.plan, self.spec.data, self.epoch, b)[0])
            if damage is not None:
                return damage
        reason = " ".join(str(error).split())[:300]
        return WorkFailed(f"the DALI pipeline failed at batch {batch} of epoch {self.epoch} ({reason}); "
                          "try --loader torch")

    def stage_pipeline(self, stage: str) -> Any:
        """A pipeline over this loader's epoch that stops at `stage` (STAGES), for `bench loader --stages`;
        close it with close_pipeline."""
        source = self._source()
        with warnings.catch_warnings():  # a stage leaves some of the source's outputs unused, as it means to
            warnings.filterwarnings("ignore", message="The external source node")
            return build_pipeline(self.spec, source, self.dataset.encoding, self._max_batch, self.tuning, stage)

    @property
    def _max_batch(self) -> int:
        """The pipeline's batch size: a rank's slice of a global batch (no rank slice is larger)."""
        return self.plan.batch_size // self.plan.world_size

    def _source(self) -> ShardSource:
        """The external source over this loader's epoch from its start batch, in the tuning's mode."""
        args = (self.dataset, self.plan, self.spec.data, self.epoch, self.start_batch)
        if not self.tuning.per_sample:
            return ShardSource(*args)
        workers = self.tuning.workers(self.spec.data.workers)[1]
        return SampleSource(*args, run=-(-self._max_batch // workers))  # each worker's run of a batch, rounded up

    def _shutdown(self) -> None:
        if self._pipe is not None:
            close_pipeline(self._pipe)
        self._pipe, self._next = None, None

    def close(self) -> None:
        """Stop the pipeline and its worker processes."""
        self._shutdown()
        super().close()

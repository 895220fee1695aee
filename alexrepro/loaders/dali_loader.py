"""The NVIDIA DALI backend: parallel external source → decode → resize → crop/mirror with the drawn views.

DALI decodes on the GPU ("mixed") when the device is CUDA, on the CPU otherwise (device_id=None:
DALI's CPU mode needs no GPU). Training crop corners and flips come in per sample from the one
sampler (via `ShardSource`) and are applied with fn.slice (absolute anchors) and fn.flip; the test
views (the centre, or the ten of §4.1) are the preset's, pipeline constants. The float maths (mean
subtraction, lighting, NCHW) is NOT done in DALI: the uint8 crops go through the same `finish_batch`
as the PyTorch backend, so for the same draws both give the same tensor up to the JPEG decoders'
differences. Batches are prefetched (prefetch_queue_depth) so that loading overlaps training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.errors import UserError, WorkFailed
from alexrepro.loaders.augment import CropParams, finish_batch, to_device
from alexrepro.loaders.base import Loader, LoaderSpec
from alexrepro.loaders.batch_read import first_damage
from alexrepro.loaders.dali_source import ShardSource, nonempty_batches
from alexrepro.loaders.order import rank_batch

PREFETCH = 2  # batches DALI prepares ahead, in the pipeline and in the Python workers


def build_pipeline(spec: LoaderSpec, source: ShardSource, encoding: str, max_batch: int) -> Any:
    """A built DALI pipeline whose outputs are (uint8 crops NHWC or N×V×c×c×3, labels, anchors, flips, α)."""
    from nvidia.dali import fn, pipeline_def, types

    d = spec.data
    gpu = spec.device.type == "cuda"
    device_id = (spec.device.index if spec.device.index is not None else torch.cuda.current_device()) if gpu else None
    c = d.crop_size
    shape = np.array([c, c], dtype=np.int32)
    workers = max(1, d.workers)

    @pipeline_def
    def graph():  # noqa: ANN202 - DALI's graph-building function
        # Batch mode hands each batch to ONE Python worker, and only `prefetch_queue_depth` batches are
        # in flight: a depth of one batch per worker lets every worker read (at depth 2, 16 workers on an
        # H200 gave 9.0k images/s, the PyTorch loader 23.8k; docs/PERFORMANCE.md).
        stored, anchor, flip, label, alpha = fn.external_source(
            source, num_outputs=5, batch=True, parallel=True, batch_info=True,
            prefetch_queue_depth=max(PREFETCH, workers), layout=["HWC" if encoding == "raw" else "", "", "", "", ""],
        )
        if encoding == "raw":
            img = stored.gpu() if gpu else stored
        else:
            # jpeg_fancy_upsampling: nvJPEG upsamples 4:2:0 chroma the way libjpeg-turbo does (PIL, the mean
            # image, eval and predict), so a net trained on DALI-GPU batches sees the same pixels.
            img = fn.decoders.image(stored, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                    jpeg_fancy_upsampling=True)
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
    pipe = graph(batch_size=max_batch, num_threads=workers, device_id=device_id,
                 seed=spec.seed, prefetch_queue_depth=PREFETCH, py_num_workers=workers,
                 py_start_method=method)
    pipe.build()
    return pipe


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

    def __init__(self, spec: LoaderSpec) -> None:
        super().__init__(spec)
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
        source = ShardSource(self.dataset, self.plan, self.spec.data, self.epoch, self.start_batch)
        max_batch = self.plan.batch_size // self.plan.world_size  # no rank slice is larger
        self._pipe = build_pipeline(self.spec, source, self.dataset.encoding, max_batch)
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
            images = to_torch(crops, spec.device)
            if preset is not None:
                params = preset.params(images.shape[0])
            else:
                yx = anchor.as_array().astype(np.int64)
                params = CropParams(yx[:, 0], yx[:, 1], flip.as_array().astype(bool), alpha.as_array())
            images = finish_batch(images, params, self.colour, spec.device, spec.channels_last)
            yield images, to_device(spec.device, labels.as_array())[0]
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
        ahead = 1 + PREFETCH + max(PREFETCH, self.spec.data.workers)  # the batches in flight at the failure
        for b in range(batch, min(batch + ahead, nonempty_batches(self.plan))):
            damage = first_damage(self.dataset, rank_batch(self.plan, self.spec.data, self.epoch, b)[0])
            if damage is not None:
                return damage
        reason = " ".join(str(error).split())[:300]
        return WorkFailed(f"the DALI pipeline failed at batch {batch} of epoch {self.epoch} ({reason}); "
                          "try --loader torch")

    def _shutdown(self) -> None:
        if self._pipe is not None:
            pool = getattr(self._pipe, "_py_pool", None)
            self._pipe._shutdown()  # DALI has no public close; this is what its __del__ calls
            if pool is not None:
                pool.close()
        self._pipe, self._next = None, None

    def close(self) -> None:
        """Stop the pipeline and its worker processes."""
        self._shutdown()
        super().close()

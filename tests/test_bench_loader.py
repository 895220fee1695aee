"""`alexrepro bench loader`'s stages, passes and DALI settings, and what it records of the host.

Nothing is timed against a threshold: the tests check that every run is reported, that the ratios come
from the report's own rates, and that the host measures (CPU time, page cache) see what they should.
"""

import json
import os
import subprocess
import sys

import pytest

from alexrepro.bench import host
from alexrepro.bench.loader import LoaderRuns, bench_loader
from alexrepro.cli import main
from alexrepro.loaders import dali_available
from alexrepro.loaders.dali_loader import DaliTuning

RUN_KEYS = {"images", "seconds", "images_per_s", "first_batch_s", "page_cache_before", "affinity_cpus", "batch_ms",
            "cpu"}


def check_run(run, batch_size):
    assert RUN_KEYS <= set(run), run
    assert run["images"] > 0 and run["images"] % batch_size == 0
    assert run["images_per_s"] == pytest.approx(run["images"] / run["seconds"], rel=1e-2, abs=0.1)
    assert run["first_batch_s"] > 0 and 0 <= run["batch_ms"]["p50"] <= run["batch_ms"]["p90"] <= run["batch_ms"]["max"]
    assert run["page_cache_before"] is None or 0 <= run["page_cache_before"] <= 1
    assert run["cpu"]["wall_s"] > 0 and run["cpu"]["ours_cores_busy"] >= 0


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_bench_loader_stages_passes_and_dali_settings(jpeg_set, kind):
    if kind == "dali" and not dali_available():
        pytest.skip("nvidia-dali is not installed: the DALI loader's stages and settings are not benchmarked")
    runs = LoaderRuns(passes=2, stages=True, dali_variants=("roi_decode=true", "prefetch=1,source_depth=1"))
    r = bench_loader(jpeg_set, None, 2, 4, 1, (kind,), "cpu", runs)
    assert r["encoding"] == "jpeg" and "affinity_cpus" in r["host"] and r["host"]["kernel"]
    assert list(r["loaders"]) == [kind]
    loader = r["loaders"][kind]
    check_run(loader, 4)
    assert len(loader["passes"]) == 2 and loader["passes"][0]["images_per_s"] == loader["images_per_s"]
    for run in loader["passes"]:
        check_run(run, 4)
    want = ["read", "decode", "crop", "full"] if kind == "dali" else ["read", "decode", "full"]
    assert list(loader["stages"]) == want
    for run in loader["stages"].values():
        check_run(run, 4)
    if kind == "torch":
        assert not r.get("dali_variants")  # DALI's settings are timed only beside the DALI loader
    else:
        assert list(r["dali_variants"]) == ["roi_decode=true", "prefetch=1,source_depth=1", "default, again"]
        default = r["dali_variants"]["default, again"]["images_per_s"]  # the ratios' base: timed after the others
        for run in r["dali_variants"].values():
            check_run(run, 4)
            assert run["vs_default"] == pytest.approx(run["images_per_s"] / default, rel=1e-3)
        assert r["dali_variants"]["default, again"]["settings"] == r["dali_variants"]["roi_decode=true"]["settings"] | {
            "roi_decode": False}
        assert r["dali_variants"]["roi_decode=true"]["settings"]["roi_decode"] is True


def test_bench_loader_raw_set_has_no_decode_stage_and_cold_runs(raw_set):
    r = bench_loader(raw_set, None, 2, 4, 0, ("torch",), "cpu", LoaderRuns(stages=True, cold=True))
    assert list(r["loaders"]["torch"]["stages"]) == ["read", "full"] and r["encoding"] == "raw"


def test_bench_loader_refuses_bad_dali_settings_in_one_line(jpeg_set, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "loader", str(jpeg_set), "--kinds", "torch", "--dali-variant", "prefetch=0", "--json"])
    assert e.value.code == 2 and "prefetch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "loader", str(jpeg_set), "--passes", "0", "--json"])
    assert e.value.code == 2


def test_dali_tuning_parses_every_setting_and_refuses_the_rest():
    t = DaliTuning.parse("prefetch=3, source_depth=8,threads=2,py_workers=4,hw_decoder_load=0.9,"
                         "bytes_per_sample_hint=196608,roi_decode=true,per_sample=1")
    assert (t.prefetch, t.source_depth, t.threads, t.py_workers, t.hw_decoder_load, t.bytes_per_sample_hint,
            t.roi_decode, t.per_sample) == (3, 8, 2, 4, 0.9, 196608, True, True)
    assert t.workers(16) == (2, 4, 8) and DaliTuning().workers(16) == (16, 16, 16) and DaliTuning().workers(1) == (1, 1, 2)
    # sample mode: each batch already keeps every worker busy, so only `prefetch` batches are in flight
    assert DaliTuning(per_sample=True).workers(16) == (16, 16, 2) and not DaliTuning.parse("per_sample=false").per_sample
    for bad in ("prefetch=0", "hw_decoder_load=1.5", "roi_decode=maybe", "per_sample=yes", "speed=11", "prefetch",
                "threads=two"):
        with pytest.raises(Exception, match="DALI setting"):
            DaliTuning.parse(bad)


def test_cpu_meter_counts_a_busy_child_as_ours():
    meter = host.CpuMeter().start()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\nprint('done', flush=True)\ntime.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"  # 0.6 s of CPU burnt; alive, so counted through /proc
        r = meter.stop()
        table = host.process_table()
        assert child.pid in host.descendants(table, os.getpid())
    finally:
        child.kill()
        child.wait()
    if not table:
        pytest.skip("no /proc here")
    assert r["ours_processes"] >= 2 and r["ours_cores_busy"] * r["wall_s"] >= 0.5
    assert 0 <= r["machine_busy_fraction"] <= 1 and r["cores"] == os.cpu_count()


def test_page_cache_fraction_reads_a_file_it_wrote(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(1 << 20))
    frac = host.page_cache_fraction([f])
    if frac is None:
        pytest.skip("mincore is not available here")
    assert 0 <= frac <= 1
    host.evict([f])  # best effort (tmpfs keeps its pages): it must not fail, and the fraction stays a fraction
    assert 0 <= host.page_cache_fraction([f]) <= 1
    assert host.resident_bytes(f)[1] == 1 << 20


def test_bench_loader_table_shows_stages_and_settings(jpeg_set, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "loader", str(jpeg_set), "--kinds", "torch", "--batches", "1", "--batch-size", "4",
              "--workers", "0", "--stages"])
    err = capsys.readouterr().err
    assert e.value.code == 0 and "torch: read only" in err and "torch: to decode" in err
    with pytest.raises(SystemExit) as e:
        main(["bench", "loader", str(jpeg_set), "--kinds", "torch", "--batches", "1", "--batch-size", "4",
              "--workers", "0", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert "stages" not in r["loaders"]["torch"] and "passes" not in r["loaders"]["torch"]

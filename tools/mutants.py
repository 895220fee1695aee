#!/usr/bin/env python3
"""Mutation testing of the paper's maths and the data path's exactness, and its score per module.

    python tools/mutants.py [--module NAME ...] [--report-only] [--max-children N] [--target PCT]

Runs mutmut (configured in pyproject.toml's [tool.mutmut]: the files, and the fast tests each mutant meets)
over SCOPE below, then reads mutmut's results (mutants/**/*.meta) and writes the score of each module to
mutants/scores.json and mutants/scores.md, and prints the table. A survivor listed in docs/TESTING.md's
table of equivalent mutants (with its reason) leaves the module's count; every other survivor counts
against it. Exit status 1 when a module's score is below --target (90%), or docs/TESTING.md lists an
equivalent mutant that no longer survives (a stale line). `nox -s mutants` runs this (docs/TESTING.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTING_MD = ROOT / "docs" / "TESTING.md"

# Module → the functions mutated there ("*": all of them). Only checkpoint.py is cut down: its checksum,
# not its file handling (which the fault tests cover with real processes).
SCOPE: dict[str, tuple[str, ...]] = {
    "alexrepro/nets/lrn.py": ("*",),
    "alexrepro/nets/alexnet.py": ("*",),
    "alexrepro/loaders/augment.py": ("*",),
    "alexrepro/loaders/presets.py": ("*",),
    "alexrepro/evaluation/variants.py": ("*",),
    "alexrepro/data/stats.py": ("*",),
    "alexrepro/loaders/colour.py": ("*",),
    "alexrepro/training/optim.py": ("*",),
    "alexrepro/training/schedule.py": ("*",),
    "alexrepro/topk.py": ("*",),
    "alexrepro/evaluation/metrics.py": ("*",),
    "alexrepro/evaluation/paper_tables.py": ("*",),
    "alexrepro/training/checkpoint.py": ("to_safe", "contents_digest", "_feed", "sealed", "verify"),
}

# mutmut's exit codes (mutmut/stats.py): a mutant is killed when a test failed, the tests ran past their
# time (an endless loop is found out too), or the process died.
KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9}
SURVIVED = {0}
NO_TESTS = {5, 33}
MUTANT = re.compile(r"`(alexrepro\.[\w.ǁ]+__mutmut_\d+)`")


def dotted(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


def patterns(path: str) -> list[str]:
    """mutmut's names of the mutants in scope: `module.x_function__mutmut_N`, `module.xǁClassǁmethod__mutmut_N`."""
    module = dotted(path)
    out = []
    for fn in SCOPE[path]:
        if fn == "*":
            out.append(f"{module}.*")
        else:
            out += [f"{module}.x_{fn}__mutmut_*", f"{module}.xǁ*ǁ{fn}__mutmut_*"]
    return out


def results(path: str) -> dict[str, int | None]:
    """Exit code of every mutant of `path` in scope (None: not run yet)."""
    meta = ROOT / "mutants" / (path + ".meta")
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    pats = patterns(path)
    return {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in pats)}


def equivalents() -> dict[str, str]:
    """Mutant name → the reason it is equivalent, from docs/TESTING.md's table."""
    found = {}
    if TESTING_MD.is_file():
        for line in TESTING_MD.read_text().splitlines():
            names = MUTANT.findall(line)
            if line.startswith("|") and names:
                reason = line.rstrip(" |").rsplit("|", 1)[-1].strip()
                found.update({n: reason for n in names})
    return found


def score(path: str, equivalent: dict[str, str]) -> dict:
    codes = results(path)
    killed = sorted(k for k, v in codes.items() if v in KILLED)
    alive = sorted(k for k, v in codes.items() if v not in KILLED)
    equiv = [k for k in alive if k in equivalent and codes[k] in SURVIVED]
    counted = len(codes) - len(equiv)
    return {
        "module": path,
        "mutants": len(codes),
        "killed": len(killed),
        "equivalent": len(equiv),
        "survived": sorted(k for k in alive if k not in equiv),
        "no_tests": sorted(k for k in alive if codes[k] in NO_TESTS),
        "not_run": sorted(k for k, v in codes.items() if v is None),
        "score_pct": round(100.0 * len(killed) / counted, 1) if counted else 100.0,
        "stale_equivalents": sorted(k for k in equivalent if k in codes and codes[k] in KILLED),
    }


def run_mutmut(paths: list[str], max_children: int | None) -> int:
    env = dict(os.environ)
    # One thread a process: mutmut forks a worker per mutant, and two cores are shared by its workers.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mutmut", "run"]
    if max_children:
        cmd += ["--max-children", str(max_children)]
    cmd += [p for path in paths for p in patterns(path)]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def table(scores: list[dict]) -> str:
    lines = ["| module | mutants | killed | equivalent | survived | score |", "|---|---:|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(f"| `{s['module']}` | {s['mutants']} | {s['killed']} | {s['equivalent']} | "
                     f"{len(s['survived'])} | {s['score_pct']}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--module", action="append", choices=sorted(SCOPE), help="only this module (repeatable)")
    ap.add_argument("--report-only", action="store_true", help="score the results mutmut already has")
    ap.add_argument("--max-children", type=int, help="mutants tested at once (mutmut's default: the cores)")
    ap.add_argument("--target", type=float, default=90.0, help="lowest acceptable score per module, percent")
    args = ap.parse_args(argv)
    paths = args.module or list(SCOPE)
    if not args.report_only:
        code = run_mutmut(paths, args.max_children)
        if code != 0:
            print(f"mutmut run exited {code}", file=sys.stderr)
            return code
    equivalent = equivalents()
    scores = [score(p, equivalent) for p in paths]
    out = ROOT / "mutants"
    out.mkdir(exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    (out / "scores.md").write_text(table(scores) + "\n")
    print(table(scores))
    failed = False
    for s in scores:
        for name in s["survived"]:
            print(f"survived: {name}" + (" (no test reaches it)" if name in s["no_tests"] else ""))
        for name in s["stale_equivalents"]:
            print(f"stale: {name} is listed as equivalent in docs/TESTING.md but is killed now")
        failed |= s["score_pct"] < args.target or bool(s["stale_equivalents"]) or bool(s["not_run"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Sessions: `nox -s tests` (the CI line), `nox -s lint`, `nox -s demo`, `nox -s mutants` (not in CI)."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The CPU test suite, DALI (CPU mode) and the ONNX export included; GPU tests skip without CUDA."""
    session.install("-e", ".[dali,test,export]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "alexrepro", "tests", "tools", "noxfile.py", "hubconf.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's first line: the whole pipeline on generated data, on the CPU."""
    session.install("-e", ".[dali]")
    session.run("alexrepro", "demo", "--dir", str(session.create_tmp() + "/demo"), *session.posargs)


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing of the paper's maths and the data path's exactness (docs/TESTING.md): 12-20 minutes
    on 2 cores; the score of each module in mutants/scores.md. Arguments go to tools/mutants.py
    (`nox -s mutants -- --module alexrepro/nets/lrn.py`)."""
    session.install("-e", ".[test]", "mutmut==3.8.1")
    session.run("python", "tools/mutants.py", *session.posargs)

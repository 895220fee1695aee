"""The ranks' agreement and the naming of a rank that stopped answering (alexrepro/group_health.py).

In one process: `agree` is given every rank's words through a stand-in for the gather. The same code over a
real group of two torchrun "nodes" is tested in tests/test_multinode.py (another set on one node; a rank
stopped with SIGSTOP, named within the group's timeout).
"""

from __future__ import annotations

import pytest

from alexrepro import group_health
from alexrepro.distributed import DistInfo
from alexrepro.errors import UserError

FACTS = {"set": "sha256:aaaa", "resume": None, "recipe": "r1"}


def said(host: str, pid: int, failure: str | None = None, **facts: object) -> dict[str, object]:
    return {"host": host, "pid": pid, "failure": failure, "facts": {**FACTS, **facts}}


@pytest.fixture()
def ranks(monkeypatch):
    """Set what every rank says: the list the gather hands back."""
    every: list[dict[str, object]] = []
    monkeypatch.setattr(group_health, "gather_objects", lambda mine: list(every))
    return every


def test_the_same_view_everywhere_passes(ranks):
    ranks += [said("node0", 10), said("node1", 11)]
    assert group_health.agree(DistInfo(0, 2, 0), None, FACTS) == ranks


def test_a_rank_that_cannot_read_out_ends_every_rank_with_its_line_said_by_rank_0(ranks):
    ranks += [said("node0", 10), said("node1", 11, "/data/set is not a prepared set (no manifest.json)")]
    for rank in (0, 1):
        with pytest.raises(UserError) as e:
            group_health.agree(DistInfo(rank, 2, 0), None, FACTS)
        assert str(e.value) == "rank 1 (pid 11 on node1): /data/set is not a prepared set (no manifest.json)"
        assert e.value.quiet == (rank != 0)  # one line for the job


@pytest.mark.parametrize(("key", "words"), [("set", "sees another prepared set in OUT than rank 0"),
                                            ("resume", "would resume from another checkpoint than rank 0"),
                                            ("recipe", "resolved another recipe than rank 0")])
def test_a_rank_that_sees_other_files_is_named_with_what_differs(key, words, ranks):
    ranks += [said("node0", 10), said("node0", 12), said("node1", 11, **{key: "something else"})]
    with pytest.raises(UserError, match=rf"^rank 2 \(pid 11 on node1\) {words} \(something else against ") as e:
        group_health.agree(DistInfo(0, 3, 0), None, FACTS)
    assert not e.value.quiet

"""The checkpoint checksum: sha256 of the contents in an encoding written out here, checked on every load.

The encoding is part of the file format: a checkpoint written by an earlier alexrepro must still verify, so
the digest is pinned byte by byte, not compared with the code's own output.
"""

import hashlib
import io
import struct

import numpy as np
import pytest
import torch
from rich.console import Console

from alexrepro.errors import UserError
from alexrepro.training import checkpoint as ck


def test_the_digest_is_sha256_of_the_contents_encoded_as_written_out_here():
    payload = {"format": "alexrepro-checkpoint", "version": 1, "w": torch.tensor([1.0, -2.0]),
               "empty": torch.zeros(0, 3), "bf": torch.tensor([1.5], dtype=torch.bfloat16),
               "xs": [1, (2.5, "a")], "none": None, "flag": True, "checksum": "sha256:stale"}
    h = hashlib.sha256()
    h.update(b"dict 8;")  # every key but the checksum, in order: "type value;" each, tensors as their bytes
    h.update(b"str 'format';str 'alexrepro-checkpoint';")
    h.update(b"str 'version';int 1;")
    h.update(b"str 'w';tensor torch.float32 (2,);" + struct.pack("<2f", 1.0, -2.0))
    h.update(b"str 'empty';tensor torch.float32 (0, 3);")
    h.update(b"str 'bf';tensor torch.bfloat16 (1,);" + struct.pack("<f", 1.5)[2:])  # bf16: float32's top half
    h.update(b"str 'xs';list 2;int 1;tuple 2;float 2.5;str 'a';")
    h.update(b"str 'none';NoneType None;")
    h.update(b"str 'flag';bool True;")
    assert ck.contents_digest(payload) == "sha256:" + h.hexdigest()


def test_the_digest_sees_one_flipped_bit_and_the_order_of_keys_but_not_the_checksum():
    payload = {"a": torch.arange(4.0), "b": {"c": [1, 2]}}
    digest = ck.contents_digest(payload)
    assert ck.contents_digest({**payload, "checksum": "anything"}) == digest
    flipped = payload["a"].clone()
    flipped.view(torch.int32)[2] ^= 1  # the lowest mantissa bit of one weight
    assert ck.contents_digest({**payload, "a": flipped}) != digest
    assert ck.contents_digest({"b": payload["b"], "a": payload["a"]}) != digest
    assert ck.contents_digest({**payload, "b": {"c": (1, 2)}}) != digest  # a tuple is not a list


def test_sealed_stores_plain_cpu_data_with_its_checksum_last():
    recipe = __import__("alexrepro.recipe_reader", fromlist=["load_recipe"]).load_recipe("tiny")
    saved = ck.Checkpoint(model={"w": torch.arange(3.0)}, recipe=recipe, epoch=2,
                          rng=[{"numpy": ("MT19937", np.arange(4, dtype=np.uint32), 1, 0, np.float64(0.5))}],
                          stats={"channel_mean": np.array([1.0, 2.0, 3.0])})
    stored = ck.sealed(saved)
    assert list(stored)[:2] == ["format", "version"] and list(stored)[-1] == "checksum"
    assert stored["checksum"] == ck.contents_digest(stored)
    state = stored["rng"][0]["numpy"]
    assert isinstance(state, tuple) and torch.equal(state[1], torch.arange(4, dtype=torch.int32).to(torch.uint32))
    assert state[4] == 0.5 and type(state[4]) is float  # numpy scalars become Python numbers
    assert torch.equal(stored["stats"]["channel_mean"], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_to_safe_keeps_lists_lists_and_tuples_tuples():
    got = ck.to_safe({"t": (np.int64(3), [np.float32(0.5)]), "l": [(1,)]})
    assert got == {"t": (3, [0.5]), "l": [(1,)]}
    assert type(got["t"]) is tuple and type(got["t"][1]) is list and type(got["l"]) is list


def test_verify_removes_a_matching_checksum_and_refuses_a_damaged_file(tmp_path):
    stored = {"format": "alexrepro-checkpoint", "w": torch.arange(3.0)}
    good = {**stored, "checksum": ck.contents_digest(stored)}
    ck.verify(tmp_path / "a.pt", good)
    assert "checksum" not in good
    damaged = {**stored, "w": torch.tensor([0.0, 1.0, 2.5]), "checksum": ck.contents_digest(stored)}
    with pytest.raises(UserError, match=r"^checkpoint .*a\.pt is damaged: its contents do not match the checksum "
                                        r"written with it; use another one \(RUN/checkpoints keeps last\.pt, best\.pt "
                                        r"and the last epochs' files\)$"):
        ck.verify(tmp_path / "a.pt", damaged)


def test_a_file_without_a_checksum_loads_with_one_plain_line_once(tmp_path, monkeypatch):
    # On a colour terminal too: one line, not wrapped, no markup read in the path, nothing highlighted.
    out = io.StringIO()
    monkeypatch.setattr(ck, "console", Console(file=out, force_terminal=True, color_system="truecolor", width=40))
    monkeypatch.setattr(ck, "_unverified", set())
    old = tmp_path / "[red]old.pt"
    ck.verify(old, {"format": "alexrepro-checkpoint"})
    ck.verify(old, {"format": "alexrepro-checkpoint"})  # said once per file
    assert out.getvalue() == (f"note: {old} carries no checksum (written before alexrepro checked checkpoints); "
                              "loaded without verifying it\n")
    ck.verify(tmp_path / "other.pt", {"format": "alexrepro-checkpoint"})
    assert out.getvalue().count("\n") == 2 and f"note: {tmp_path / 'other.pt'} carries" in out.getvalue()

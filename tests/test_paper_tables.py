"""The paper's tables carry the paper's numbers (PAPER.md "Results"), and comparisons pick the right row."""

import pytest

from alexrepro.errors import UserError
from alexrepro.evaluation.paper_tables import (
    ABLATIONS,
    TABLE_2010,
    TABLE_2012,
    choose_table,
    comparable_row,
    difference,
    row,
)


def cells(table, model):
    r = row(table, model)
    return (r.top1, r.top5, r.top5_test)


def test_table_2010_numbers():
    assert cells("2010", "Sparse coding") == (47.1, 28.2, None)
    assert cells("2010", "SIFT + FVs") == (45.7, 25.7, None)
    assert cells("2010", "CNN") == (37.5, 17.0, None)  # ten patches
    assert cells("2010", "CNN (single centre patch)") == (39.0, 18.3, None)
    assert row("2010", "CNN").crops == 10 and row("2010", "CNN (single centre patch)").crops == 1
    assert len(TABLE_2010) == 4


def test_table_2012_numbers():
    assert cells("2012", "SIFT + FVs") == (None, None, 26.2)
    assert cells("2012", "1 CNN") == (40.7, 18.2, None)
    assert cells("2012", "5 CNNs") == (38.1, 16.4, 16.4)
    assert cells("2012", "1 CNN*") == (39.0, 16.6, None)
    assert cells("2012", "7 CNNs*") == (36.7, 15.4, 15.3)
    assert row("2012", "5 CNNs").nets == 5 and row("2012", "7 CNNs*").nets == 7
    assert row("2012", "1 CNN*").pretrained and not row("2012", "5 CNNs").pretrained
    assert len(TABLE_2012) == 5


def test_every_row_has_a_source():
    for r in TABLE_2010 + TABLE_2012:
        assert r.source and ("Table" in r.source or "§" in r.source)
    for a in ABLATIONS:
        assert a.source.startswith("§")


def test_ablation_costs():
    by = {a.source.split(":")[0]: (a.top1_cost, a.top5_cost) for a in ABLATIONS}
    assert by["§3.2"] == (1.7, 1.2)
    assert by["§3.3"] == (1.4, 1.2)
    assert by["§3.4"] == (0.4, 0.3)
    assert by["§4.1"][0] == 1.0
    assert by["§7"][0] == 2.0


def test_choose_table():
    assert choose_table("2010", "anything", "val") == "2010"
    assert choose_table(None, "/data/ILSVRC2010/", "val") == "2010"
    assert choose_table(None, {"root": "/data/ILSVRC2012_img_val"}, "test") == "2012"
    assert choose_table(None, "synthetic", "val") == "2012"
    assert choose_table(None, None, "test") == "2010"
    with pytest.raises(UserError, match="--paper-table must be one of 2010, 2012"):
        choose_table("2011", "", "val")


def test_comparable_row():
    assert comparable_row("2010", crops=10, nets=1).model == "CNN"
    assert comparable_row("2010", crops=1, nets=1).model == "CNN (single centre patch)"
    assert comparable_row("2012", crops=10, nets=1).model == "1 CNN"
    assert comparable_row("2012", crops=10, nets=3).model == "5 CNNs"
    assert difference(42.7, 40.7) == pytest.approx(2.0)
    assert difference(10.0, None) is None

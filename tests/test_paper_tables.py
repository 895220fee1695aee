"""The paper's tables carry the paper's numbers (§6, Tables 1 and 2), and comparisons pick the row measured alike."""

import pytest

from alexrepro.errors import UserError
from alexrepro.evaluation.paper_tables import (
    ABLATIONS,
    TABLE_2010,
    TABLE_2012,
    choose_table,
    comparable_row,
    compare_with_paper,
    difference,
    protocol,
    row,
    row_protocol,
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


def test_comparable_row_is_measured_the_same_way():
    # §6: Table 1 has a ten-patch CNN row and, in the text, a single-centre-patch one (39.0 / 18.3).
    assert comparable_row("2010", crops=10, nets=1).model == "CNN"
    assert comparable_row("2010", crops=1, nets=1).model == "CNN (single centre patch)"
    # Table 2's CNN rows are all ten-patch rows: 1 CNN, 5 CNNs (and the pre-trained * rows).
    assert comparable_row("2012", crops=10, nets=1).model == "1 CNN"
    assert comparable_row("2012", crops=10, nets=5).model == "5 CNNs"
    assert comparable_row("2012", crops=1, nets=1) is None  # no single-patch row in Table 2
    assert comparable_row("2012", crops=10, nets=3) is None  # 3 nets are not the paper's 5
    assert comparable_row("2012", crops=10, nets=7) is None  # 7 CNNs* were pre-trained on Fall 2011
    assert comparable_row("2010", crops=10, nets=2) is None  # Table 1 has no ensemble
    assert difference(42.7, 40.7) == pytest.approx(2.0)
    assert difference(10.0, None) is None


def test_every_cnn_row_states_its_protocol():
    assert row_protocol(row("2012", "1 CNN")) == "1 net × 10 patches"
    assert row_protocol(row("2012", "5 CNNs")) == "5 nets × 10 patches"
    assert row_protocol(row("2012", "7 CNNs*")) == "7 nets × 10 patches, pre-trained"
    assert row_protocol(row("2010", "CNN (single centre patch)")) == "1 net × centre patch"
    assert row_protocol(row("2010", "SIFT + FVs")) == "not a CNN"
    assert protocol(2, 1) == "2 nets × centre patch"


def test_centre_patch_against_table_2_gets_no_difference():
    p = compare_with_paper("2012", "val", nets=1, crops=1, ours_top1=45.0, ours_top5=21.0)
    assert p["comparable"] is None and p["top1_diff_pct"] is None and p["top5_diff_pct"] is None
    assert p["top1_error_pct"] is None and p["protocol"] == "1 net × centre patch"
    assert p["no_comparable"] == ("Table 2 has no row measured as 1 net × centre patch (its CNN rows: "
                                  "1 net × 10 patches, 5 nets × 10 patches; the * rows were pre-trained)")
    assert [r["protocol"] for r in p["rows"]][1:3] == ["1 net × 10 patches", "5 nets × 10 patches"]
    # The same run against Table 1 compares with §6's single-patch row, 39.0 / 18.3.
    p = compare_with_paper("2010", "val", nets=1, crops=1, ours_top1=45.0, ours_top5=21.0)
    assert p["comparable"] == "CNN (single centre patch)" and p["no_comparable"] is None
    assert p["top1_diff_pct"] == pytest.approx(45.0 - 39.0) and p["top5_diff_pct"] == pytest.approx(21.0 - 18.3)
    # Ten patches against Table 2: 1 CNN's 40.7 / 18.2; on the test split only the top-5 test column exists.
    p = compare_with_paper("2012", "val", nets=1, crops=10, ours_top1=41.7, ours_top5=19.2)
    assert (p["comparable"], p["top1_diff_pct"], p["top5_diff_pct"]) == ("1 CNN", pytest.approx(1.0), pytest.approx(1.0))
    p = compare_with_paper("2012", "test", nets=5, crops=10, ours_top1=40.0, ours_top5=17.4)
    assert p["top1_error_pct"] is None and p["top5_error_pct"] == 16.4 and p["top5_diff_pct"] == pytest.approx(1.0)


def test_the_test_split_of_table_2_has_only_a_top5_column_and_only_for_some_rows():
    # Table 2's "Top-5 (test)" column: 16.4 for 5 CNNs, empty for 1 CNN (its 18.2 is the val column).
    one = compare_with_paper("2012", "test", nets=1, crops=10, ours_top1=40.0, ours_top5=18.0)
    assert (one["comparable"], one["top1_error_pct"], one["top5_error_pct"]) == ("1 CNN", None, None)
    assert one["top1_diff_pct"] is None and one["top5_diff_pct"] is None
    # Table 1 reports the 2010 test set: both columns, on "test" and on "val" alike.
    for split in ("test", "val"):
        t = compare_with_paper("2010", split, nets=1, crops=10, ours_top1=38.5, ours_top5=18.0)
        assert (t["top1_error_pct"], t["top5_error_pct"]) == (37.5, 17.0)
        assert t["top1_diff_pct"] == pytest.approx(1.0) and t["top5_diff_pct"] == pytest.approx(1.0)
    # A run that has no figure yet gets no difference.
    none = compare_with_paper("2012", "val", nets=1, crops=10, ours_top1=None, ours_top5=None)
    assert none["top1_error_pct"] == 40.7 and none["top1_diff_pct"] is None and none["top5_diff_pct"] is None


def test_differences_are_rounded_to_a_ten_thousandth_of_a_point():
    assert difference(40.71234, 40.7) == 0.0123 and difference(17.0, 18.3) == -1.3


def test_the_reasons_name_the_table_and_its_rows():
    from alexrepro.evaluation.paper_tables import no_comparable_reason

    assert no_comparable_reason("2010", crops=10, nets=2) == (
        "Table 1 has no row measured as 2 nets × 10 patches (its CNN rows: 1 net × 10 patches, 1 net × centre patch)")
    with pytest.raises(KeyError, match="table 2012 has no row '3 CNNs'"):
        row("2012", "3 CNNs")


def test_a_manifest_source_of_any_json_kind_names_its_year():
    from pathlib import Path

    assert choose_table(None, {"root": Path("/data/ILSVRC2010"), "files": 3}, "val") == "2010"
    assert choose_table(None, ["ILSVRC2012_img_train.tar"], "test") == "2012"


def test_a_year_is_read_in_the_source_text_not_in_its_escaped_form():
    # "‐" is U+2010 (a hyphen): JSON escapes it as \\u2010, which must not read as the year 2010
    assert choose_table(None, "/data/my\u2010set", "val") == "2012"
    assert choose_table(None, "/data/my\u2010set", "test") == "2010"
    assert choose_table(None, "", "val") == "2012"

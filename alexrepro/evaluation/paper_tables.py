"""The paper's result tables as data (§6, Tables 1 and 2), and which row a run compares with.

Error rates are percentages as printed. `None` marks a cell the paper leaves empty. Each row
carries its protocol (how many nets, how many test patches, pre-trained or not), and a run is
compared only with a row measured the same way (`comparable_row`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from alexrepro.errors import UserError


@dataclass(frozen=True)
class PaperRow:
    """One row of a results table: error rates in percent, how the model was evaluated, the source."""

    table: str  # "2010" | "2012"
    model: str
    top1: float | None  # 2010: test; 2012: val
    top5: float | None  # 2010: test; 2012: val
    top5_test: float | None  # 2012 only: the competition's test server
    cnn: bool  # one of the paper's nets (the baselines are not)
    nets: int  # how many nets the row averages (0 for the baselines)
    crops: int  # test patches per image (§4.1: 10; 1 = the centre patch); 0 for the baselines
    pretrained: bool  # * rows: nets pre-trained on ImageNet Fall 2011
    source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Table 1 (§6): ILSVRC-2010 test set, whose labels are public.
TABLE_2010: tuple[PaperRow, ...] = (
    PaperRow("2010", "Sparse coding", 47.1, 28.2, None, False, 0, 0, False, "Table 1 (§6), ILSVRC-2010 winner"),
    PaperRow("2010", "SIFT + FVs", 45.7, 25.7, None, False, 0, 0, False, "Table 1 (§6), Sánchez & Perronnin"),
    PaperRow("2010", "CNN", 37.5, 17.0, None, True, 1, 10, False, "Table 1 (§6), ten patches (§4.1)"),
    PaperRow("2010", "CNN (single centre patch)", 39.0, 18.3, None, True, 1, 1, False,
             "§6 footnote to Table 1: without averaging over ten patches"),
)

# Table 2 (§6): ILSVRC-2012; top-1/top-5 on val, top-5 on the (unlabelled) test set.
TABLE_2012: tuple[PaperRow, ...] = (
    PaperRow("2012", "SIFT + FVs", None, None, 26.2, False, 0, 0, False, "Table 2 (§6), ILSVRC-2012 runner-up"),
    PaperRow("2012", "1 CNN", 40.7, 18.2, None, True, 1, 10, False, "Table 2 (§6)"),
    PaperRow("2012", "5 CNNs", 38.1, 16.4, 16.4, True, 5, 10, False, "Table 2 (§6), predictions averaged"),
    PaperRow("2012", "1 CNN*", 39.0, 16.6, None, True, 1, 10, True,
             "Table 2 (§6), pre-trained on ImageNet Fall 2011 with a sixth conv layer"),
    PaperRow("2012", "7 CNNs*", 36.7, 15.4, 15.3, True, 7, 10, True,
             "Table 2 (§6), 5 CNNs + 2 pre-trained CNN*s averaged"),
)

TABLES: dict[str, tuple[PaperRow, ...]] = {"2010": TABLE_2010, "2012": TABLE_2012}
SPLIT_OF_TABLE = {"2010": "test", "2012": "val"}  # the split each table's top-1/top-5 columns report


@dataclass(frozen=True)
class Ablation:
    """A change the paper measured: how much worse (percentage points) the net is without a feature."""

    feature: str
    top1_cost: float | None
    top5_cost: float | None
    source: str


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("two GPUs (vs the one-GPU net)", 1.7, 1.2, "§3.2"),
    Ablation("local response normalization", 1.4, 1.2, "§3.3"),
    Ablation("overlapping pooling", 0.4, 0.3, "§3.4"),
    Ablation("PCA lighting", 1.0, None, "§4.1: 'over 1%' top-1"),
    Ablation("any one middle conv layer", 2.0, None, "§7: 'about 2%' top-1"),
)


def table_rows(table: str) -> tuple[PaperRow, ...]:
    """The rows of Table 1 ("2010") or Table 2 ("2012")."""
    if table not in TABLES:
        raise UserError(f"--paper-table must be one of {', '.join(TABLES)}, got {table!r}")
    return TABLES[table]


def row(table: str, model: str) -> PaperRow:
    """One row by its model name."""
    for r in table_rows(table):
        if r.model == model:
            return r
    raise KeyError(f"table {table} has no row {model!r}")


def choose_table(requested: str | None, source: Any, split: str) -> str:
    """The table to print: as requested, else the year named in the manifest's source, else by split."""
    if requested is not None:
        table_rows(str(requested))
        return str(requested)
    text = source if isinstance(source, str) else json.dumps(source, default=str)
    for year in ("2010", "2012"):
        if year in (text or ""):
            return year
    return "2010" if split == "test" else "2012"


def protocol(nets: int, crops: int, pretrained: bool = False) -> str:
    """How a result was measured, in words: '1 net × 10 patches', '5 nets × centre patch' (§4.1, §6)."""
    if nets == 0:
        return "not a CNN"
    patches = f"{crops} patches" if crops != 1 else "centre patch"
    text = f"{nets} net{'s' if nets != 1 else ''} × {patches}"
    return text + ", pre-trained" if pretrained else text


def row_protocol(r: PaperRow) -> str:
    """The protocol a row of the paper used."""
    return protocol(r.nets, r.crops, r.pretrained)


def comparable_row(table: str, crops: int, nets: int) -> PaperRow | None:
    """The paper's row measured the way we measured (same patches, same number of nets), or None.

    Our nets are never pre-trained on Fall 2011 ("pre-trained"), so the * rows of Table 2 never match. Table 1
    (2010) has a ten-patch and a single-centre-patch row of one CNN; Table 2 (2012) has only
    ten-patch rows (1 CNN, 5 CNNs): a centre-patch evaluation there has no row to compare with.
    """
    for r in table_rows(table):
        if r.cnn and not r.pretrained and r.crops == crops and r.nets == nets:
            return r
    return None


def no_comparable_reason(table: str, crops: int, nets: int) -> str:
    """Why `comparable_row` found nothing, for the report: which protocols the table does have."""
    rows = [r for r in table_rows(table) if r.cnn]
    have = ", ".join(dict.fromkeys(row_protocol(r) for r in rows if not r.pretrained))
    starred = "; the * rows were pre-trained" if any(r.pretrained for r in rows) else ""
    name = "Table 1" if table == "2010" else "Table 2"
    return f"{name} has no row measured as {protocol(nets, crops)} (its CNN rows: {have}{starred})"


def difference(ours_pct: float, paper_pct: float | None) -> float | None:
    """Ours minus the paper's, in percentage points (positive: we are worse)."""
    return None if paper_pct is None else round(ours_pct - paper_pct, 4)


def compare_with_paper(table: str, split: str, nets: int, crops: int, ours_top1: float | None,
                       ours_top5: float | None) -> dict[str, Any]:
    """The `paper` part of an eval report: every row with its protocol, and differences (ours − the
    paper's, in points) only against the row measured the same way; None where there is none."""
    comp = comparable_row(table, crops, nets)
    paper_top1 = paper_top5 = None
    if comp is not None:
        # Table 2's test column is top-5 only (the 2012 test labels are not public).
        paper_top1 = comp.top1 if split == SPLIT_OF_TABLE[table] or table == "2010" else None
        paper_top5 = comp.top5_test if (table == "2012" and split == "test") else comp.top5
    return {
        "table": table,
        "protocol": protocol(nets, crops),
        "comparable": comp.model if comp is not None else None,
        "no_comparable": None if comp is not None else no_comparable_reason(table, crops, nets),
        "top1_error_pct": paper_top1,
        "top5_error_pct": paper_top5,
        "top1_diff_pct": difference(ours_top1, paper_top1) if ours_top1 is not None else None,
        "top5_diff_pct": difference(ours_top5, paper_top5) if ours_top5 is not None else None,
        "rows": [r.as_dict() | {"protocol": row_protocol(r)} for r in table_rows(table)],
    }

"""The paper's ablation tables and figures, declared as data: which config path varies, the
baseline of every other axis, which metric fills each column, and the study that makes the runs.

A table is a query (DESIGN.md): a cell holds the runs whose paper labels (`label.<axis>` params)
equal the row's values on the varying axes and the Table 1 defaults on all others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mae.config import TABLE_AXES

# Table 1's caption: the defaults of every axis that a table does not vary (paper labels).
TABLE1_DEFAULTS: Mapping[str, Any] = {
    "decoder.depth": 8,
    "decoder.width": 512,
    "encoder.mask_tokens": False,
    "target.kind": "pixel",
    "data.augmentation": "crop_rand",
    "masking.sampler": "random",
    "masking.ratio": 0.75,
    "pretrain.epochs": 800,
}
# Evaluation settings a figure varies, with the one stage they configure: they select runs of that
# stage only (a linear probe also records `partial.blocks`, the scale's default, unused).
EVAL_AXES: Mapping[str, str] = {"partial.blocks": "partial"}
EXTRA_AXES = tuple(EVAL_AXES)


@dataclass(frozen=True)
class Column:
    """One metric column. `speedup_of` derives it as baseline / row of another column."""

    name: str  # id in CSV files and paper data: "ft", "lin"
    stage: str  # the run stage whose metric fills it
    metric: str | None  # e.g. "finetune/top1"; `final/<metric>` is preferred when logged
    header: str = ""  # our column's title; default `name`
    paper_header: str = ""  # the paper column's title; default "<name> (paper)"
    labelled: bool = True  # False: runs are not filtered by pre-training labels (scratch)
    speedup_of: str | None = None
    digits: int = 1
    delta: bool = True  # compare with the paper: ours − paper (paper scale), shapes (other scales)

    @property
    def title(self) -> str:
        return self.header or self.name

    @property
    def paper_title(self) -> str:
        return self.paper_header or f"{self.name} (paper)"


@dataclass(frozen=True)
class Row:
    label: str  # the paper's row label
    values: Mapping[str, Any]  # varying axis -> value (paper label)
    x: float | None = None  # position on a figure's x axis
    # Column name -> the column whose stage and metric fill this row's cell instead (Fig. 9's
    # 0 blocks is the linear probe of the same pre-training, not a partial fine-tuning run).
    sources: Mapping[str, Column] = field(default_factory=dict)


@dataclass(frozen=True)
class Definition:
    id: str
    title: str
    kind: Literal["table", "figure"]
    axes: tuple[str, ...]
    header: str  # title of the row-label column
    rows: tuple[Row, ...]
    columns: tuple[Column, ...]
    study: str  # `python studies/run.py <study>` fills it
    baseline: str | None  # label of the row marked ★
    fixed: Mapping[str, Any] = field(default_factory=lambda: dict(TABLE1_DEFAULTS))
    x_label: str = ""
    x_scale: Literal["linear", "log", "category"] = "linear"
    note: str = ""

    @property
    def name(self) -> str:
        """The paper's short name: "Fig. 5", "Table 1a"."""
        return self.title.split(":")[0]

    def source(self, row: Row, column: Column) -> Column:
        """The column whose stage and metric fill (row, column)."""
        return row.sources.get(column.name, column)

    def required(self, row: Row, stage: str | None = None) -> dict[str, Any]:
        """Every label a run must carry to fill `row`: the row's values, the defaults elsewhere;
        with `stage`, without the evaluation settings of other stages."""
        wanted = {**{a: v for a, v in self.fixed.items() if a not in self.axes}, **row.values}
        if stage is None:
            return wanted
        return {a: v for a, v in wanted.items() if EVAL_AXES.get(a, stage) == stage}


FT = Column("ft", "finetune", "finetune/top1")
LIN = Column("lin", "linprobe", "linprobe/top1")


def _rows(axis: str, pairs: Iterable[tuple[str, Any]]) -> tuple[Row, ...]:
    return tuple(Row(label, {axis: value}) for label, value in pairs)


def _table1(
    letter: str,
    title: str,
    axis: str,
    header: str,
    pairs: Iterable[tuple[str, Any]],
    baseline: str,
    study: str,
    note: str = "",
) -> Definition:
    return Definition(
        id=f"table1{letter}",
        title=f"Table 1{letter}: {title}",
        kind="table",
        axes=(axis,),
        header=header,
        rows=_rows(axis, pairs),
        columns=(FT, LIN),
        study=study,
        baseline=baseline,
        note=note,
    )


_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
_EPOCHS = (100, 200, 400, 800, 1600)
_BLOCKS = (0, 0.5, 1, 2, 4, 6, 12, 18, 24)

DEFINITIONS: tuple[Definition, ...] = (
    _table1(
        "a",
        "decoder depth",
        "decoder.depth",
        "blocks",
        [(str(d), d) for d in (1, 2, 4, 8, 12)],
        "8",
        "decoder_depth",
    ),
    _table1(
        "b",
        "decoder width",
        "decoder.width",
        "dim",
        [(str(w), w) for w in (128, 256, 512, 768, 1024)],
        "512",
        "decoder_width",
    ),
    _table1(
        "c",
        "mask token",
        "encoder.mask_tokens",
        "case",
        [("encoder w/ [M]", True), ("encoder w/o [M]", False)],
        "encoder w/o [M]",
        "mask_token",
    ),
    _table1(
        "d",
        "reconstruction target",
        "target.kind",
        "case",
        [
            ("pixel (w/o norm)", "pixel"),
            ("pixel (w/ norm)", "norm_pixel"),
            ("PCA", "pca"),
            ("dVAE token", "dvae"),
        ],
        "pixel (w/o norm)",
        "reconstruction_target",
        note="PCA: the largest target.pca_components coefficients of a patch (paper 96 of 768, "
        "1/8; the scales keep 1/8, at least 2). dVAE token: the DALL-E tokenizer at the paper "
        "scale; below it an in-project dVAE trained on the pre-training split (its `tokenizer` "
        "run logs perplexity and reconstruction error).",
    ),
    _table1(
        "e",
        "data augmentation",
        "data.augmentation",
        "case",
        [
            ("none", "none"),
            ("crop, fixed size", "crop_fixed"),
            ("crop, rand size", "crop_rand"),
            ("crop + color jit", "crop_colorjit"),
        ],
        "crop, rand size",
        "data_augmentation",
    ),
    Definition(
        id="table1f",
        title="Table 1f: mask sampling",
        kind="table",
        axes=("masking.sampler", "masking.ratio"),
        header="case (ratio)",
        rows=(
            Row("random (75)", {"masking.sampler": "random", "masking.ratio": 0.75}),
            Row("block (50)", {"masking.sampler": "block", "masking.ratio": 0.5}),
            Row("block (75)", {"masking.sampler": "block", "masking.ratio": 0.75}),
            Row("grid (75)", {"masking.sampler": "grid", "masking.ratio": 0.75}),
        ),
        columns=(FT, LIN),
        study="mask_sampling",
        baseline="random (75)",
    ),
    Definition(
        id="fig5",
        title="Fig. 5: masking ratio",
        kind="figure",
        axes=("masking.ratio",),
        header="ratio (%)",
        rows=tuple(Row(f"{r * 100:g}", {"masking.ratio": r}, x=round(r * 100, 6)) for r in _RATIOS),
        columns=(FT, LIN),
        study="mask_ratio_sweep",
        baseline="75",
        x_label="masking ratio (%)",
    ),
    Definition(
        id="fig7",
        title="Fig. 7: training schedule",
        kind="figure",
        axes=("pretrain.epochs",),
        header="epochs",
        rows=tuple(Row(str(e), {"pretrain.epochs": e}, x=e) for e in _EPOCHS),
        columns=(FT, LIN),
        study="training_schedule",
        baseline="800",
        x_label="pre-training epochs (paper label)",
        x_scale="log",
    ),
    Definition(
        id="fig9",
        title="Fig. 9: partial fine-tuning",
        kind="figure",
        axes=("partial.blocks",),
        header="blocks tuned",
        rows=tuple(
            Row(f"{b:g}", {"partial.blocks": b}, x=b, sources={"partial": LIN} if b == 0 else {})
            for b in _BLOCKS
        ),
        columns=(Column("partial", "partial", "partial/top1"),),
        study="partial_finetune",
        baseline=None,
        x_label="# blocks fine-tuned (0.5: MLP of the last block)",
        x_scale="category",
        note="paper: ViT-L (24 blocks); 24 = full fine-tuning; 0 blocks = linear probing, read "
        "from the `linprobe` run of the same pre-training (class token, BN without affine, LARS).",
    ),
    Definition(
        id="table2",
        title="Table 2: pre-training wall-clock",
        kind="table",
        axes=("encoder.mask_tokens", "decoder.depth"),
        header="encoder, dec. depth",
        rows=(
            Row("w/ [M], 8", {"encoder.mask_tokens": True, "decoder.depth": 8}),
            Row("w/o [M], 8", {"encoder.mask_tokens": False, "decoder.depth": 8}),
            Row("w/o [M], 1", {"encoder.mask_tokens": False, "decoder.depth": 1}),
        ),
        columns=(
            FT,
            Column(
                "time",
                "pretrain",
                "pretrain/wall_time_s",
                header="time [s]",
                paper_header="time (paper) [h]",
                digits=0,
                delta=False,
            ),
            Column("images/s", "pretrain", "pretrain/images_per_s", digits=0, delta=False),
            Column("speed-up", "pretrain", None, speedup_of="time", digits=1, delta=False),
        ),
        study="wallclock",
        baseline="w/ [M], 8",
        note="paper: ViT-L, 800 epochs on 128 TPU-v3 cores (TensorFlow), in hours; ours: "
        "seconds on this machine. Speed-up = time of the w/ [M] row / time of the row.",
    ),
    Definition(
        id="scratch",
        title="Supervised baseline: training from scratch vs. MAE fine-tuning",
        kind="table",
        axes=(),
        header="model",
        rows=(Row("ViT", {}),),
        columns=(
            Column("scratch", "scratch", "scratch/top1", header="scratch", labelled=False),
            Column("MAE ft", "finetune", "finetune/top1"),
        ),
        study="scratch_baseline",
        baseline=None,
        note="paper: ViT-L on ImageNet-1K; MAE ft is the Table 1 baseline (800 epochs).",
    ),
)

DEFINITION_IDS: tuple[str, ...] = tuple(d.id for d in DEFINITIONS)
QUERY_AXES: tuple[str, ...] = TABLE_AXES + EXTRA_AXES


def select(only: Iterable[str] | None = None) -> list[Definition]:
    """The definitions named in `only` (all when None), in the paper's order."""
    if only is None:
        return list(DEFINITIONS)
    wanted = list(dict.fromkeys(only))
    unknown = [i for i in wanted if i not in DEFINITION_IDS]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown table id {names}; allowed: {', '.join(DEFINITION_IDS)}")
    return [d for d in DEFINITIONS if d.id in wanted]

"""Confusion-matrix IoU with the SemanticKITTI definition (semantic-kitti-api's ``iouEval``).

The benchmark's rules, which every number this project reports follows:

- one C x C confusion matrix (C = 20 training ids), **rows = prediction, columns = ground
  truth**, accumulated over every point of every scan (never an average of per-scan IoUs);
- points whose ground truth is the ignore index ('unlabeled', 0) are dropped;
- a prediction of the ignore index on a labelled point stays in the matrix (row 0): it is a
  false negative of the true class and a false positive of no evaluated class;
- IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU = mean over the C - 1 evaluated classes, where a
  class absent from both ground truth and prediction counts **0** (the official tool divides
  0 by 1e-15); ``miou_present`` averages only classes with a non-empty union, the honest number
  on small or synthetic splits;
- accuracy = sum_c TP_c / sum_c (TP_c + FP_c) over the evaluated classes c, i.e. over labelled
  points the model did not predict as 'unlabeled' (the official ``getacc``; a model that never
  predicts 0 gets the plain overall accuracy over labelled points).

The official tool adds 1e-15 to every denominator; we divide exactly and return 0 where the
denominator is 0, which agrees with it to ~1e-15 relative (far below any printed digit).

:class:`SemanticKITTIIoU` is a torchmetrics ``Metric`` whose only state is the confusion matrix
with ``dist_reduce_fx="sum"``: under DDP the matrices of all processes are summed before the
IoUs are computed, so the result equals a single-process evaluation of the whole split.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torchmetrics import Metric

__all__ = [
    "IoUResult",
    "SemanticKITTIIoU",
    "iou_from_confusion",
    "iou_table",
    "metrics_to_dict",
    "render_iou_table",
    "save_confusion_png",
]


class IoUResult(NamedTuple):
    """What :meth:`SemanticKITTIIoU.compute` returns. K = number of evaluated classes (19).

    Per-class tensors are ordered like ``class_ids`` (train ids 1..19 for SemanticKITTI), so
    ``iou[c - 1]`` is the IoU of train id ``c`` when the ignore index is 0.

    class_ids: (K,) int64, train id of each evaluated class (every id except ignore_index).
    iou: (K,) float64, TP / (TP + FP + FN); 0 where the union is empty (as the official tool).
    present: (K,) bool, union (ground truth or prediction) is non-empty; tables print 'n/a'
        for the others.
    class_acc: (K,) float64, TP / (TP + FN), the fraction of the class's labelled points
        predicted correctly (recall); 0 where the class has no ground-truth points.
    support: (K,) int64, labelled ground-truth points of each class.
    miou: () float64, mean of ``iou`` over all K classes (the official mIoU).
    miou_present: () float64, mean of ``iou`` over present classes; NaN if none is present.
    acc: () float64, the official overall accuracy (see the module docstring).
    confusion: (C, C) int64, rows = prediction, columns = ground truth; the ignore-index column
        is zero (those points were dropped).
    """

    class_ids: torch.Tensor
    iou: torch.Tensor
    present: torch.Tensor
    class_acc: torch.Tensor
    support: torch.Tensor
    miou: torch.Tensor
    miou_present: torch.Tensor
    acc: torch.Tensor
    confusion: torch.Tensor


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den in float64, 0 where den == 0 (the official tool's 0 / 1e-15)."""
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def iou_from_confusion(confusion: torch.Tensor, ignore_index: int | None = 0) -> IoUResult:
    """All benchmark numbers from a (C, C) confusion matrix (rows prediction, cols ground truth).

    ``ignore_index`` (a train id in [0, C), or None / out of range for "no ignored class"):
    its ground-truth column is zeroed and it is left out of the means, as ``iouEval`` does.
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be (C, C), got {tuple(confusion.shape)}")
    num_classes = confusion.shape[0]
    conf = confusion.to(torch.int64).clone()
    include = torch.ones(num_classes, dtype=torch.bool, device=conf.device)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        conf[:, ignore_index] = 0
        include[ignore_index] = False

    tp = conf.diagonal()
    fp = conf.sum(dim=1) - tp
    fn = conf.sum(dim=0) - tp
    union = tp + fp + fn
    iou = _safe_div(tp, union)[include]
    present = (union > 0)[include]
    tp_in, fp_in = tp[include], fp[include]
    miou_present = iou[present].mean() if bool(present.any()) else iou.new_tensor(math.nan)
    return IoUResult(
        class_ids=torch.arange(num_classes, device=conf.device)[include],
        iou=iou,
        present=present,
        class_acc=_safe_div(tp, tp + fn)[include],
        support=(tp + fn)[include],
        miou=iou.mean(),
        miou_present=miou_present,
        acc=_safe_div(tp_in.sum(), tp_in.sum() + fp_in.sum()),
        confusion=conf,
    )


class SemanticKITTIIoU(Metric):
    """Accumulates the SemanticKITTI confusion matrix; ``compute()`` returns an :class:`IoUResult`.

    Args:
        num_classes: C, training ids including the ignored one (default: the label map's, 20).
        ignore_index: ground-truth id whose points are dropped and which is left out of the
            means (default: the label map's, 0 = 'unlabeled').
        validate_args: check that ids lie in [0, C) (one device sync per update; turn off in
            hot loops once the pipeline is trusted).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confusion: torch.Tensor

    def __init__(
        self,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes is None or ignore_index is None:
            from pcseg.data.labels import load_label_map

            label_map = load_label_map()
            num_classes = label_map.num_classes if num_classes is None else num_classes
            ignore_index = label_map.ignore_index if ignore_index is None else ignore_index
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.validate_args = validate_args
        self.add_state(
            "confusion",
            default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add points to the confusion matrix.

        pred: (N,) integer train ids, or (N, C) scores (the argmax is taken).
        target: (N,) integer train ids; points equal to ``ignore_index`` are dropped.
        """
        if pred.ndim == 2 and pred.shape[1] == self.num_classes and target.ndim == 1:
            pred = pred.argmax(dim=1)
        pred, target = pred.reshape(-1), target.reshape(-1)
        if pred.shape != target.shape:
            raise ValueError(f"pred has {pred.numel()} points, target {target.numel()}")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer class ids")
        c = self.num_classes
        pred, target = pred.to(torch.int64), target.to(torch.int64)
        ignore_in_range = 0 <= self.ignore_index < c
        if not ignore_in_range:  # e.g. -100: drop those points before indexing
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if self.validate_args and pred.numel():
            bad = (pred < 0) | (pred >= c) | (target < 0) | (target >= c)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"class ids must lie in [0, {c}); first bad point: "
                    f"pred={int(pred[i])}, target={int(target[i])}"
                )
        # One bincount over pred * C + target: O(N), no scatter conflicts, works on any device.
        # Points whose ground truth is the (in-range) ignore index land in its column, which is
        # then cleared: the same as dropping them, without a boolean-mask copy of 1M points.
        counts = torch.bincount(pred * c + target, minlength=c * c)[: c * c].reshape(c, c)
        if ignore_in_range:
            counts[:, self.ignore_index] = 0
        self.confusion += counts

    def compute(self) -> IoUResult:
        return iou_from_confusion(self.confusion, self.ignore_index)


# --------------------------------------------------------------------------- reporting


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def _class_rows(result: IoUResult, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per evaluated class: name, iou / acc as floats or None for n/a, support."""
    rows = []
    for k, c in enumerate(result.class_ids.tolist()):
        present = bool(result.present[k])
        support = int(result.support[k])
        rows.append(
            {
                "name": class_names[c],
                "iou": float(result.iou[k]) if present else None,
                "acc": float(result.class_acc[k]) if support > 0 else None,
                "support": support,
            }
        )
    return rows


def iou_table(result: IoUResult, class_names: Sequence[str], title: str | None = None):
    """A rich Table: per-class IoU and accuracy (recall) in percent with 1 decimal and the
    number of labelled points; 'n/a' for a class absent from both ground truth and prediction
    (IoU) or from ground truth (accuracy). A last section gives the official mIoU (absent
    classes count 0), the mIoU over present classes, and the official accuracy."""
    from rich.table import Table

    n_eval, n_present = len(result.class_ids), int(result.present.sum())
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("acc %", justify="right")
    table.add_column("points", justify="right")
    for row in _class_rows(result, class_names):
        table.add_row(
            row["name"],
            "n/a" if row["iou"] is None else _pct(row["iou"]),
            "n/a" if row["acc"] is None else _pct(row["acc"]),
            f"{row['support']:,}",
        )
    table.add_section()
    mp = float(result.miou_present)
    table.add_row(
        f"mIoU (official, {n_eval} classes)", _pct(float(result.miou)), "", "", style="bold"
    )
    table.add_row(
        f"mIoU (present, {n_present}/{n_eval})", "n/a" if math.isnan(mp) else _pct(mp), "", ""
    )
    table.add_row(
        "accuracy", "", _pct(float(result.acc)), f"{int(result.support.sum()):,}", style="bold"
    )
    return table


def render_iou_table(result: IoUResult, class_names: Sequence[str], width: int = 100) -> str:
    """The table of :func:`iou_table` as plain text (no colour codes), for logs and files."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False).print(
        iou_table(result, class_names)
    )
    return buf.getvalue()


def metrics_to_dict(result: IoUResult, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-serialisable summary for metrics.json: fractions in [0, 1], None for n/a.

    ``{"miou", "miou_present", "acc", "num_present", "num_classes",
    "classes": {name: {"iou", "acc", "support"}}, "confusion": [[...]] (rows prediction)}``
    """
    mp = float(result.miou_present)
    return {
        "miou": float(result.miou),
        "miou_present": None if math.isnan(mp) else mp,
        "acc": float(result.acc),
        "num_present": int(result.present.sum()),
        "num_classes": len(result.class_ids),
        "classes": {
            row["name"]: {"iou": row["iou"], "acc": row["acc"], "support": row["support"]}
            for row in _class_rows(result, class_names)
        },
        "confusion_rows": "prediction",
        "confusion": result.confusion.cpu().tolist(),
    }


def save_confusion_png(
    confusion: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    ignore_index: int | None = 0,
) -> Path:
    """Heat map of the confusion matrix, **normalised per ground-truth class**.

    The image shows ground truth on the y axis and prediction on the x axis (the transpose of
    the stored matrix, the layout most readers expect); each row sums to 100 %: where the
    points of that class went. The ignored class is dropped from the ground-truth axis (its
    points are not evaluated) but kept on the prediction axis (predicting it is a miss).
    Classes without ground truth are an empty row marked '(absent)'. Cells >= 1 % are labelled.
    """
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    conf = confusion.detach().cpu().to(torch.float64).numpy().T  # rows gt, cols prediction
    num_classes = conf.shape[0]
    gt_ids = [c for c in range(num_classes) if c != ignore_index]
    conf = conf[gt_ids]
    totals = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, totals, out=np.zeros_like(conf), where=totals > 0)

    fig = Figure(figsize=(11, 9.5), dpi=110)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(num_classes), [class_names[c] for c in range(num_classes)])
    ax.set_yticks(
        range(len(gt_ids)),
        [class_names[c] + ("" if totals[i, 0] > 0 else " (absent)") for i, c in enumerate(gt_ids)],
    )
    ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    ax.tick_params(axis="y", labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (each ground-truth row sums to 100 %)")
    for i, j in zip(*np.nonzero(norm >= 0.01), strict=True):
        v = norm[i, j]
        ax.text(
            j,
            i,
            f"{100 * v:.0f}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if v > 0.5 else "black",
        )
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="fraction of ground-truth points")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)  # Figure.savefig renders through Agg for .png
    return path

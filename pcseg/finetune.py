"""Fine-tuning: start a NEW run from a checkpoint's weights (``train.py init_from=<ckpt>``).

Unlike ``ckpt_path`` (resume: weights, optimiser, schedule, epoch and step all continue), only
the network's weights are taken; the optimiser, learning-rate schedule, epoch counter, loss
class weights and metrics are those of the new run. When the label set differs (other class
names or another number of classes) the classification head (``net.head.*``, every network's
:class:`~pcseg.nn.pccn.ContextHead`) keeps the new model's fresh initialisation, with a warning
naming each re-initialised tensor; every other weight must exist in the checkpoint with the
same shape (a different architecture, width or input features is an error naming the tensors
and the file, not a silent partial load).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from pcseg.checkpointing import CheckpointError, safe_torch_load

log = logging.getLogger(__name__)

#: The network's weights inside a SegmentationModule's state_dict.
NET_PREFIX = "net."
#: The classification head inside it: re-initialised when the label set changes.
HEAD_PREFIX = "net.head."
_LISTED = 8


class FineTuneError(CheckpointError):
    """The checkpoint's network does not fit the new model outside the head."""


class InitReport(NamedTuple):
    """What :func:`init_from_checkpoint` did: the tensors copied and re-initialised."""

    source: Path
    copied: list[str]
    reinitialised: list[str]
    label_set_changed: bool
    source_classes: list[str] | None


def source_class_names(ckpt: Mapping[str, Any]) -> list[str] | None:
    """The class names a checkpoint was trained on, from the label yaml its stored config
    names (None when that file is not readable here)."""
    from pcseg.data.labels import load_label_map

    cfg = ckpt.get("pcseg_config") or {}
    model_cfg, data_cfg = cfg.get("model") or {}, cfg.get("data") or {}
    label_config = model_cfg.get("label_config", data_cfg.get("label_config"))
    try:
        return list(load_label_map(label_config).class_names)
    except Exception as exc:
        log.info("label yaml %s of the checkpoint is not readable here: %s", label_config, exc)
        return None


def _listed(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def init_from_checkpoint(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the network weights of checkpoint ``path`` into ``model`` (a SegmentationModule).

    Head tensors (``net.head.*``) are copied only when the label set is the same (same class
    names, or, when the checkpoint's label yaml is unreadable here, the same shapes); otherwise
    they keep their fresh initialisation and each is named in a warning. Every other
    ``net.*`` tensor must be in the checkpoint with the model's shape: missing, unexpected or
    differently shaped ones raise FineTuneError naming them and the file. The checkpoint is read
    with ``weights_only=True``.
    """
    path = Path(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: no 'state_dict' in the checkpoint")
    source = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    target = {k: v for k, v in model.state_dict().items() if k.startswith(NET_PREFIX)}
    source_classes = source_class_names(ckpt)
    classes = list(model.label_map.class_names)
    head_shapes_equal = all(
        k in source and tuple(source[k].shape) == tuple(v.shape)
        for k, v in target.items()
        if k.startswith(HEAD_PREFIX)
    )
    if source_classes is not None:
        changed = source_classes != classes
    else:
        changed = not head_shapes_equal

    mismatched = [
        f"{k} {tuple(source[k].shape)} -> {tuple(v.shape)}"
        for k, v in target.items()
        if not k.startswith(HEAD_PREFIX) and k in source and source[k].shape != v.shape
    ]
    missing = [k for k in target if not k.startswith(HEAD_PREFIX) and k not in source]
    unexpected = [k for k in source if not k.startswith(HEAD_PREFIX) and k not in target]
    if mismatched or missing or unexpected:
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} with another shape: {_listed(mismatched)}")
        if missing:
            problems.append(f"{len(missing)} not in the checkpoint: {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} not in this model: {_listed(unexpected)}")
        raise FineTuneError(
            f"{path}: init_from needs the same network outside the head (net.head.*); "
            + "; ".join(problems)
            + ". Use the checkpoint's model config (model=..., model.net.*, data.features)."
        )

    copied: list[str] = []
    reinit: list[str] = []
    new_state: dict[str, torch.Tensor] = {}
    for k, v in target.items():
        is_head = k.startswith(HEAD_PREFIX)
        if is_head and (changed or k not in source or source[k].shape != v.shape):
            reinit.append(k)
            continue
        new_state[k] = source[k]
        copied.append(k)
    model.load_state_dict(new_state, strict=False)

    if changed:
        was = f"{len(source_classes)} classes" if source_classes else "another label set"
        log.warning(
            "init_from %s: the label set differs (%s -> %d classes: %s): the head is "
            "re-initialised; re-initialised tensors: %s",
            path,
            was,
            len(classes),
            ", ".join(classes),
            ", ".join(reinit),
        )
    elif reinit:
        log.warning(
            "init_from %s: head tensors with another shape re-initialised: %s",
            path,
            ", ".join(reinit),
        )
    log.info("init_from %s: %d network tensors copied", path, len(copied))
    return InitReport(path, copied, reinit, changed, source_classes)


__all__ = [
    "HEAD_PREFIX",
    "FineTuneError",
    "InitReport",
    "init_from_checkpoint",
    "source_class_names",
]

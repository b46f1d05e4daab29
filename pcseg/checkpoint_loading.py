"""Rebuild a run from a checkpoint, trusting only what pcseg ships: the one place that does it.

A checkpoint carries two things that could run code: its pickle, and the composed run config
(``pcseg_config``) whose ``_target_`` entries Hydra would call. Both are closed here:

- the file is read with ``torch.load(weights_only=True)`` only (tensors and plain containers;
  :func:`pcseg.checkpointing.safe_torch_load`): a pickle that would call anything is refused
  with :class:`UnsafeCheckpointError` naming the file, before any of it runs;
- every ``_target_`` of a config subtree about to be instantiated (the model, the data module,
  recursively: the network, the ``_partial_`` optimiser and scheduler, the augmentations) must
  be an allow-listed callable (:data:`TRUSTED_PREFIXES`, :data:`TRUSTED_TARGETS`), checked by
  name BEFORE anything is imported and again by what the name resolves to (so
  ``pcseg.checkpointing.os.system`` is refused). Anything else raises
  :class:`UntrustedCheckpointError` naming the target, its config key and the file, and nothing
  is instantiated.

Use::

    run = load_checkpoint("last")                  # file | run folder | last
    model = build_model(run)                       # eval mode, CPU, the checkpoint's weights
    datamodule = build_datamodule(run.config, {"root": "/data/kitti", "on_bad_scan": "raise"})
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg import PROJECT_ROOT
from pcseg.checkpointing import (
    CheckpointError,
    UnsafeCheckpointError,
    resolve_ckpt_path,
    safe_torch_load,
)

__all__ = [
    "TRUSTED_PREFIXES",
    "TRUSTED_TARGETS",
    "CheckpointError",
    "LoadedRun",
    "UnsafeCheckpointError",
    "UntrustedCheckpointError",
    "build_datamodule",
    "build_model",
    "check_targets",
    "default_runs_dir",
    "iter_targets",
    "load_checkpoint",
]

#: Targets under these module prefixes are trusted (pcseg's own code; torch's optimisers and
#: learning-rate schedules, ``torch.optim.lr_scheduler.*`` included).
TRUSTED_PREFIXES: tuple[str, ...] = ("pcseg.", "torch.optim.")
#: The other callables the shipped configs name (tests/test_checkpoint_safety.py walks every
#: shipped config composition and fails when one is missing here).
TRUSTED_TARGETS: frozenset[str] = frozenset(
    {
        "pytorch_lightning.Trainer",
        "pytorch_lightning.callbacks.ModelCheckpoint",
        "pytorch_lightning.callbacks.RichModelSummary",
        "pytorch_lightning.loggers.TensorBoardLogger",
        "pytorch_lightning.strategies.DDPStrategy",
    }
)
#: Keys of the run config a training checkpoint's overrides may replace in evaluation.
DATA_OVERRIDE_KEYS = ("root", "sequences", "batch_size", "num_workers", "min_points")

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint's stored config names a ``_target_`` outside the allow-list."""

    def __init__(self, path: Path | str, key: str, target: object, why: str) -> None:
        self.path, self.key, self.target = Path(path), key, target
        super().__init__(
            f"{path}: refused: the stored config's {key}._target_ = {target!r} {why}. "
            f"A checkpoint may only build pcseg's own classes ({', '.join(TRUSTED_PREFIXES)}*) "
            "and the few others the shipped configs use (pcseg.checkpoint_loading."
            "TRUSTED_TARGETS); nothing was instantiated. If you wrote that class yourself, "
            "pass it in trusted_targets=[...]"
        )


class LoadedRun(NamedTuple):
    """A checkpoint read safely: the run config (plain, resolved), the weights, the raw dict."""

    #: the composed training config stored by ``train()`` (``pcseg_config``)
    config: DictConfig
    #: the LightningModule's weights (``state_dict``), CPU tensors
    state_dict: dict[str, torch.Tensor]
    #: the whole checkpoint (epoch, global_step, optimiser states, ...)
    ckpt: dict[str, Any]
    #: the checkpoint file it came from
    path: Path


def default_runs_dir() -> Path:
    """Where ``ckpt_path=last`` looks by default: ``<project>/logs/train/runs``."""
    return PROJECT_ROOT / "logs" / "train" / "runs"


def load_checkpoint(
    ckpt_path: str | Path,
    runs_dir: Path | None = None,
    trusted_targets: Sequence[str] = (),
) -> LoadedRun:
    """Read a pcseg training checkpoint without running anything it carries.

    ckpt_path: a ``.ckpt`` file, a run folder (its ``checkpoints/last.ckpt``) or ``last`` (the
        newest ``runs_dir/*/checkpoints/last.ckpt``; ``runs_dir`` defaults to
        :func:`default_runs_dir`), resolved by :func:`pcseg.checkpointing.resolve_ckpt_path`.
    trusted_targets: extra ``_target_`` names (or prefixes ending in ``.``) to allow.

    Raises CheckpointNotFoundError (nothing there), UnsafeCheckpointError (the pickle would run
    code), CheckpointError (not written by pcseg's ``train()``) or UntrustedCheckpointError
    (the model or data config names a callable outside the allow-list), each naming the file.
    """
    path = resolve_ckpt_path(ckpt_path, runs_dir or default_runs_dir())
    if path is None:
        raise CheckpointError("ckpt_path is empty: give a checkpoint file, a run folder or 'last'")
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "pcseg_config" not in ckpt:
        raise CheckpointError(
            f"{path}: no 'pcseg_config' in the checkpoint (not saved by train.py)"
        )
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: no 'state_dict' in the checkpoint")
    config = OmegaConf.create(ckpt["pcseg_config"])
    if not isinstance(config, DictConfig):
        raise CheckpointError(f"{path}: 'pcseg_config' is not a mapping")
    for key in ("model", "data"):
        if key not in config:
            raise CheckpointError(f"{path}: the stored config has no '{key}' section")
        check_targets(config[key], path, key, trusted_targets)
    return LoadedRun(config, ckpt["state_dict"], ckpt, path)


def iter_targets(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(config key, _target_ value)`` in a config tree, depth first (lists included)."""
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            child = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                yield key or "<root>", v
            else:
                yield from iter_targets(v, child)
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{key}[{i}]")


def check_targets(
    node: Any, path: Path | str, key: str = "", trusted_targets: Sequence[str] = ()
) -> None:
    """Raise UntrustedCheckpointError unless every ``_target_`` under ``node`` is allowed.

    A name must be a dotted identifier, and either listed (:data:`TRUSTED_TARGETS`,
    ``trusted_targets``) or under a trusted prefix; a prefixed name is then resolved (importing
    only modules under that prefix) and must be a class or function defined there, so an
    attribute walk out of the package (``pcseg.checkpointing.os.system``) is refused.
    """
    for where, target in iter_targets(node, key):
        if not isinstance(target, str) or not _DOTTED.fullmatch(target):
            raise UntrustedCheckpointError(path, where, target, "is not a dotted name")
        extra = tuple(trusted_targets)
        if target in TRUSTED_TARGETS or target in extra:
            continue
        prefixes = TRUSTED_PREFIXES + tuple(t for t in extra if t.endswith("."))
        prefix = next((p for p in prefixes if target.startswith(p)), None)
        if prefix is None:
            raise UntrustedCheckpointError(path, where, target, "is not on the allow-list")
        obj = _resolve(target)
        if obj is None:
            raise UntrustedCheckpointError(path, where, target, "names nothing that exists")
        module = getattr(obj, "__module__", None) or ""
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not (module + ".").startswith(
            prefix
        ):
            raise UntrustedCheckpointError(
                path,
                where,
                target,
                f"resolves to {obj!r} (module {module or '?'}), outside {prefix}*",
            )


def _resolve(target: str) -> Any | None:
    """The object a dotted name names, importing only the modules the name spells out; None
    when there is no such module attribute. A module that exists but fails to import raises
    its own error (a broken installation, not an untrusted checkpoint)."""
    import importlib

    parts = target.split(".")
    module = importlib.import_module(parts[0])
    i = 1
    while i < len(parts):
        name = ".".join(parts[: i + 1])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            break
        i += 1
    obj: Any = module
    for attr in parts[i:]:
        if not hasattr(obj, attr):
            return None
        obj = getattr(obj, attr)
    return obj


def build_model(run: LoadedRun, trusted_targets: Sequence[str] = ()) -> Any:
    """The checkpoint's LightningModule (``run.config.model``) with its weights: eval mode, CPU.

    Targets are checked again (a caller may have edited ``run.config``). A weight that does not
    fit (another network, another version) raises CheckpointError naming the file.
    """
    from hydra.utils import instantiate

    check_targets(run.config.model, run.path, "model", trusted_targets)
    model = instantiate(run.config.model)
    try:
        model.load_state_dict(run.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{run.path}: the weights do not fit the stored model config: {exc}"
        ) from None
    if hasattr(model, "on_load_checkpoint"):  # what the module keeps beside its weights
        model.on_load_checkpoint(run.ckpt)  # (run config, class prior): plain data only
    return model.eval()


def build_datamodule(
    run_cfg: DictConfig,
    overrides: Mapping[str, Any] | None = None,
    path: Path | str = "<checkpoint>",
    trusted_targets: Sequence[str] = (),
) -> Any:
    """The checkpoint's data module (``run_cfg.data``) for evaluation or prediction.

    overrides: ``root``, ``sequences``, ``batch_size``, ``num_workers``, ``min_points`` replace
        the stored values when not None; ``on_bad_scan`` defaults to ``raise`` (a score must
        cover every scan; the training default skips). A given ``root`` switches off synthetic
        generation. ``path`` names the checkpoint in errors. ``prepare_data()`` is not called.
    """
    from hydra.utils import instantiate

    overrides = overrides or {}
    data_cfg = run_cfg.data.copy()
    for key in DATA_OVERRIDE_KEYS:
        if overrides.get(key) is not None:
            data_cfg[key] = overrides[key]
    data_cfg.on_bad_scan = overrides.get("on_bad_scan") or "raise"
    data_cfg.generate = bool(data_cfg.get("generate")) and overrides.get("root") is None
    check_targets(data_cfg, path, "data", trusted_targets)
    return instantiate(data_cfg)

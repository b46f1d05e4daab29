"""Every shipped config key reaches a constructor, and no key is silently ignored.

Composes train.yaml with every option of every config group (and evaluate.yaml), then checks:

- every key of a ``_target_`` node names a parameter of the target's signature (a typo would
  otherwise fail only at instantiate time, and a key the signature swallows through
  ``**kwargs`` would do nothing);
- for pcseg's own targets, every such parameter is read in the constructor's body;
- every key outside ``_target_`` nodes is read by pcseg's code or by another config's
  interpolation (not left over from an earlier version);
- the constructors' defaults agree with the config that introduces the class.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RESERVED = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
#: groups chosen on the train.yaml command line (hydra/ and labels/ are not object graphs)
GROUPS = ("model", "data", "trainer", "callbacks", "logger", "experiment", "debug", "paths")
#: targets that deliberately pass their ``**kwargs`` on, and to what: such keys must name a
#: parameter of that callable instead
KWARGS_GO_TO = {
    "pytorch_lightning.strategies.DDPStrategy": "torch.nn.parallel.DistributedDataParallel",
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compositions() -> list:
    """(root config, overrides): train.yaml with each group option, and evaluate.yaml."""
    out = [pytest.param("evaluate", (), id="evaluate")]
    for group in GROUPS:
        out += [pytest.param("train", (f"{group}={o}",), id=f"{group}={o}") for o in options(group)]
    return out


@functools.cache
def composed(config_name: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    """The composed config as plain containers, interpolations left unresolved (do not edit:
    cached)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


def walk(node: Any, path: str = ""):
    """Yield (dotted path, dict node) for every mapping in the config, outermost first."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def target_nodes(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, node) for path, node in walk(cfg) if "_target_" in node]


def parameters(target: Any) -> dict[str, inspect.Parameter]:
    fn = target.__init__ if inspect.isclass(target) else target
    params = dict(inspect.signature(fn).parameters)
    params.pop("self", None)
    return params


def unread_parameters(target: Any, names: set[str]) -> set[str]:
    """The ``names`` that never appear as a variable in the body of ``target``'s constructor,
    nor as ``hparams.<name>`` in its class (Lightning's ``save_hyperparameters``); none for a
    generated ``__init__`` (a dataclass's stores every field)."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):  # no Python source: object.__init__ or generated
        return set()
    body = tree.body[0].body  # the function's statements, without its signature
    read = {
        n.id
        for stmt in body
        for n in ast.walk(stmt)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    if inspect.isclass(target):
        read |= set(re.findall(r"hparams\.(\w+)", inspect.getsource(target)))
    return names - read


@pytest.mark.parametrize(("config", "overrides"), compositions())
def test_every_key_of_a_target_node_is_a_constructor_parameter(config, overrides):
    problems = []
    for path, node in target_nodes(composed(config, overrides)):
        target = get_object(node["_target_"])
        params = parameters(target)
        named = {
            p
            for p, v in params.items()
            if v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        }
        keys = set(node) - RESERVED
        if node["_target_"] in KWARGS_GO_TO:
            named |= set(parameters(get_object(KWARGS_GO_TO[node["_target_"]])))
        if extra := keys - named:
            problems.append(f"{path} ({node['_target_']}): {sorted(extra)} not parameters")
        if node["_target_"].startswith("pcseg.") and (unread := unread_parameters(target, keys)):
            problems.append(f"{path} ({node['_target_']}): {sorted(unread)} never read")
    assert not problems, "\n".join(problems)


@functools.cache
def sources() -> str:
    files = [ROOT / "train.py", ROOT / "evaluate.py", *sorted((ROOT / "pcseg").rglob("*.py"))]
    return "\n".join(f.read_text() for f in files if f.is_file())


@functools.cache
def interpolated_names() -> set[str]:
    """Every key name that appears inside a ``${...}`` interpolation of a shipped config."""
    text = "\n".join(p.read_text() for p in CONFIGS.rglob("*.yaml"))
    return {
        word
        for expr in re.findall(r"\$\{([^}]*)\}", text)
        for word in re.findall(r"[A-Za-z_]\w*", expr)
    }


@pytest.mark.parametrize(("config", "overrides"), compositions())
def test_keys_outside_target_nodes_are_read(config, overrides):
    """A plain key (``seed``, ``paths.log_dir``, evaluate.yaml's ``data.split``) must be read
    by pcseg's code (``cfg.key``, ``cfg.get("key")``, ``"key"``) or by an interpolation."""
    code, interpolated = sources(), interpolated_names()
    cfg = composed(config, overrides)
    targets = [path for path, _ in target_nodes(cfg)]
    unread = []
    for path, node in walk(cfg):
        if "_target_" in node or path == "hydra" or path.startswith("hydra."):
            continue
        if any(path.startswith(f"{t}.") for t in targets):
            continue  # an argument's value (data.sequences), checked with its target
        for key, value in node.items():
            if isinstance(value, dict):
                continue  # a target node or a mapping: its own keys are checked when walked
            pattern = rf"(\.{key}\b|[\"']{key}[\"'])"
            if key not in interpolated and not re.search(pattern, code):
                unread.append(f"{path}.{key}" if path else key)
    assert not unread, f"keys read by nobody: {unread}"


BASE_CONFIGS = [
    # (root config override, node path, target): the config that introduces each class
    ("model=pccn", "model.net", "pcseg.nn.pccn.PCCN"),
    ("model=pccn_unet", "model.net", "pcseg.nn.pccn.PCCNEncoderDecoder"),
    ("model=pccn", "model", "pcseg.lit_module.SegmentationModule"),
    ("model=pccn", "model.scheduler", "pcseg.optim.warmup_cosine"),
    ("data=semantickitti", "data", "pcseg.data.datamodule.SemanticKITTIDataModule"),
]


@pytest.mark.parametrize(("override", "path", "target"), BASE_CONFIGS)
def test_constructor_defaults_agree_with_the_config(override, path, target):
    node: Any = composed("train", (override,))
    for part in path.split("."):
        node = node[part]
    assert node["_target_"] == target
    differ = {}
    for name, param in parameters(get_object(target)).items():
        if name not in node or param.default is inspect.Parameter.empty:
            continue
        value, default = node[name], param.default
        if isinstance(value, str) and value.startswith("${"):
            continue  # filled from another group (data.label_config)
        if value == "???":
            continue  # the config requires it (data.root of a real dataset)
        if isinstance(value, dict):
            continue  # an object (the scheduler), not a default value
        if isinstance(default, tuple):
            default = list(default)
        if value != default:
            differ[name] = (value, default)
    assert not differ, f"{target}: config value vs constructor default: {differ}"

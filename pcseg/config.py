"""OmegaConf resolvers the configs use, registered once before any config is composed.

- ``${pcseg.project_root:}``: the repository root (data/ and logs/ live there);
- ``${pcseg.feature_channels:${data.features}}``: input width of the network for the
  configured features, so the model config never repeats it;
- ``${pcseg.num_classes:${data.label_config}}``: number of training ids in the label yaml.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from pcseg import PROJECT_ROOT


def _feature_channels(names) -> int:
    from pcseg.data.features import feature_channels

    return feature_channels(list(names))


def _num_classes(label_config: str | None) -> int:
    from pcseg.data.labels import load_label_map

    return load_label_map(label_config).num_classes


def register_resolvers() -> None:
    """Register pcseg's resolvers (idempotent)."""
    resolvers = {
        "pcseg.project_root": lambda: str(PROJECT_ROOT),
        "pcseg.feature_channels": _feature_channels,
        "pcseg.num_classes": _num_classes,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()

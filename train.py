"""Train a segmentation model: ``python train.py [overrides]`` (see configs/train.yaml)."""

import hydra
from omegaconf import DictConfig

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.train import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Returned for Hydra sweepers (e.g. optuna) that optimise a value.
    return metrics.get("val/miou")


if __name__ == "__main__":
    main()

"""Evaluate a checkpoint: ``python evaluate.py ckpt_path=<ckpt> [data.split=test export=true]``."""

import hydra
from omegaconf import DictConfig

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()

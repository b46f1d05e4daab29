"""Label your own point clouds: ``python predict.py ckpt_path=<ckpt|run folder|last>
input=<file|folder|glob> output=<dir>`` (see configs/predict.yaml). Exits 1 if any file failed."""

import sys

import hydra
from omegaconf import DictConfig

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.predict_files import predict


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    summary = predict(cfg)
    if summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

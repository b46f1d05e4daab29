"""Label your own point clouds: ``python predict.py ckpt_path=<ckpt|run folder|last>
input=<file|folder|glob> output=<dir>`` (see configs/predict.yaml). Exit status: 1 if any file
failed (the others are still predicted), 2 if the input names nothing or the checkpoint is
missing, not pcseg's, or unsafe (see pcseg.checkpoint_loading)."""

import sys

import hydra
from omegaconf import DictConfig

import pcseg.config  # noqa: F401  (registers the config resolvers)
from pcseg.checkpoint_loading import CheckpointError
from pcseg.checkpointing import CheckpointNotFoundError
from pcseg.loose_files import InputSpecError
from pcseg.predict_files import predict


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        summary = predict(cfg)
    except (InputSpecError, CheckpointNotFoundError, CheckpointError) as e:  # say why, briefly
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if summary.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

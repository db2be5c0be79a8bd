"""trtsweep entry point: ``python sweep.py -m engine=tf,tflite precision=fp32,int8``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from trtsweep.app import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()

"""The SLURM launcher config (conf/hydra/launcher/slurm.yaml) composes with the submitit plugin installed
(dev extra) and maps a multi-node DDP run onto SLURM: one task per GPU, nodes from trainer.num_nodes."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher (dev extra)")


def test_slurm_launcher_composes_for_a_multi_node_ddp_run(compose, tmp_path) -> None:
    cfg = compose(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.num_nodes=3",
            "trainer.devices=4",
            "hydra.launcher.partition=gpu",
            f"paths.runs_dir={tmp_path}",
        ],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (3, 4, 4)
    assert launcher.partition == "gpu" and launcher.timeout_min == 4320
    assert OmegaConf.select(cfg, "hydra.launcher.submitit_folder").startswith(f"{tmp_path}/train/multirun_")
    # Every key is one the plugin accepts: building the launcher submits nothing.
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"


def test_single_node_defaults_to_one_task(compose, tmp_path) -> None:
    cfg = compose(
        ["hydra/launcher=slurm", "trainer=cpu", f"paths.runs_dir={tmp_path}"], return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)

"""Fine-tune one run's LoRA adapter (rule train)."""

from emflow.config import ExperimentConfig
from emflow.train.settings import TrainSettings
from emflow.train.trainer import train_adapter
from emflow.workflow.jobs import run_script


def main():
    params = snakemake.params.train
    train_adapter(
        ExperimentConfig.from_training_params(
            params["experiment"], snakemake.input.train, snakemake.input.get("kl")
        ),
        snakemake.input.train,
        snakemake.output.adapter,
        settings=TrainSettings.from_config(params["settings"]),
        test_file=snakemake.input.get("test"),
        checkpoint_dir=snakemake.params.checkpoints,
        log_history_json=snakemake.output.log_history,
        source=snakemake.params.source,
        step_adapters_dir=snakemake.output.get("step_adapters"),
    )


run_script(snakemake, main)

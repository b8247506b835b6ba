"""Fine-tune one experiment's LoRA adapter (rule train)."""

from emflow.config import load_experiment_config
from emflow.train import TrainSettings, train_adapter
from emflow.workflow import run_script


def main():
    settings = snakemake.params.train["settings"]
    # An experiment with `seeds` trains one run per seed; this job's seed is in its params.
    seed = snakemake.params.train["experiment"]["seed"]
    train_adapter(
        load_experiment_config(snakemake.params.config_path).for_seed(seed),
        snakemake.input.train,
        snakemake.output.adapter,
        settings=TrainSettings(
            backend=settings["backend"],
            device=settings["device"],
            chat_template_kwargs=settings["chat_template_kwargs"],
            gradient_checkpointing=settings["gradient_checkpointing"],
            report_to=tuple(settings["report_to"]),
        ),
        test_file=snakemake.input.get("test"),
        checkpoint_dir=snakemake.params.checkpoints,
        log_history_json=snakemake.output.log_history,
        curves_png=snakemake.output.curves,
        source=snakemake.params.config_path,
    )


run_script(snakemake, main)

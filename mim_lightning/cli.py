"""The ``mim`` command line (click). Bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import click
import yaml

from mim_lightning.errors import MimError


def friendly_errors(command):
    """Turn MimError into 'Error: <one line>' and exit 2 (bad usage) unless --debug is given."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except MimError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.version_option(package_name="mim-lightning")
def main(debug):
    """mim-lightning: two-layer networks learning Gaussian multi-index models, layer by layer."""


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (device banners, tips) and its own deprecation notices out of
    the summary; warnings about the user's run still show. Call after importing lightning, which
    sets its logger's level on import."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def summary(results: dict) -> str:
    cos = ", ".join(f"{c:.3f}" for c in results["principal_cosines"])
    spec = ", ".join(f"{c:.3f}" for c in results["spectral_principal_cosines"])
    return (
        f"principal cosines   {cos}\n"
        f"spectral baseline   {spec}\n"
        f"subspace mass       {results['subspace_mass']:.3f}\n"
        f"test relative MSE   {results['test_rel_mse']:.4f}\n"
        f"time                stage 1 {results['timings']['stage1']:.1f} s, stage 2 {results['timings']['stage2']:.1f} s"
    )


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/latest", show_default=True, help="Output directory.")
@click.option("--accelerator", help="Lightning accelerator (cpu, gpu, auto); overrides trainer.accelerator.")
@click.option("--devices", help="Devices per node (a count, -1 for all); overrides trainer.devices.")
@click.option("--strategy", help="Lightning strategy (auto, ddp, ...); overrides trainer.strategy.")
@click.option("--num-nodes", type=int, help="Number of nodes; overrides trainer.num_nodes.")
@friendly_errors
def train(config, overrides, out, accelerator, devices, strategy, num_nodes):
    """One two-stage run. Without CONFIG it runs the built-in quickstart."""
    from lightning.pytorch.utilities import rank_zero_only

    from mim_lightning.config import load_config
    from mim_lightning.runner import train as run_training

    quiet_lightning()

    flags = {"trainer.accelerator": accelerator, "trainer.devices": devices,
             "trainer.strategy": strategy, "trainer.num_nodes": num_nodes}
    overrides = list(overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(config, overrides)
    out = Path(out)
    if rank_zero_only.rank == 0:
        for stale in ("results.json", "config.yaml"):
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)  # a fresh run's curves only
    results = run_training(cfg, out)
    if rank_zero_only.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        (out / "results.json").write_text(json.dumps(results, indent=2))
        click.echo(summary(results))
        click.echo(f"wrote {out / 'results.json'}; TensorBoard: tensorboard --logdir {out}")


@main.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Output a JSON list.")
@friendly_errors
def plugins_command(as_json):
    """Installed plugins (built-ins included) and the components each registers."""
    from mim_lightning import plugins

    infos = plugins.plugin_infos()
    for info in infos:
        if info.errors:
            click.echo(f"Warning: {info.describe()} is broken: {info.error}", err=True)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
    else:
        click.echo(plugins.format_plugins(infos))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

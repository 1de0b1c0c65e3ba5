"""The ``mim`` command line (click). Bad input exits non-zero with one line, no traceback."""

from __future__ import annotations

import contextlib
from contextlib import ExitStack
import functools
import json
import logging
import shlex
import sys
import warnings
from pathlib import Path

import click

from mim_lightning.errors import EXIT_CODES, Interrupted, MimError, error_line
from mim_lightning.experiments.launch_options import WorkerCount


class CommandError(click.ClickException):
    """'Error: <one line>' with the exit status of the command that failed."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def friendly_errors(command=None, *, exit_code: int = 1):
    """Turn MimError, OSError (``errors.os_error_line``) and any unforeseen exception into
    'Error: <one line>' and exit with ``exit_code`` (1; 2 for check and theory, whose 1 means a
    violated assumption), unless --debug is given. Use as @friendly_errors or
    @friendly_errors(exit_code=2)."""
    if command is None:
        return functools.partial(friendly_errors, exit_code=exit_code)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except MimError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise CommandError(str(exc), exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - anything unforeseen still gets one line
            if ctx.find_root().params.get("debug"):
                raise
            raise CommandError(error_line(exc, ctx.params.get("out")), exit_code) from None

    return wrapper


class MimGroup(click.Group):
    """Lists each command with its whole first sentence (click cuts it to the terminal width), and
    reports click's own usage errors (a bad option value, an unknown option, a missing argument)
    in one line, as every other error: 'Error: <what>; see 'mim CMD --help'', exit 2 (click shows
    the usage and a hint on lines of their own)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "mim"
            click.echo(f"Error: {exc.format_message().rstrip('.')}; see '{where} --help'", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class ComponentOption(click.Option):
    """An option naming a registered component; its help ends with the names available, looked up
    only when the help is shown (the registry imports torch and the plugins)."""

    def __init__(self, *args, kind: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind

    def get_help_record(self, ctx):
        from mim_lightning.plugins import manager as plugins

        plain = self.help
        try:
            self.help = f"{plain} One of: {', '.join(plugins.get_registry().names(self.kind))}."
        except Exception:  # noqa: BLE001 - the help must show even when a plugin is broken
            pass
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = plain


@click.group(cls=MimGroup, context_settings={"max_content_width": 120})
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
    # on a machine with SLURM's client, every run outside srun (a login node, a laptop) says so
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system but is not used")


class SetCommand(click.Command):
    """A command with ``--set KEY=VALUE`` options: ``--set KEY VALUE`` (the '=' forgotten) is refused
    in one line that says so, before click takes VALUE for the CONFIG argument or an extra one."""

    def parse_args(self, ctx, args):
        for option, key, value in zip(args, args[1:], args[2:]):
            if option == "--" or key == "--":
                break
            if option == "--set" and "=" not in key and not value.startswith("-"):
                raise CommandError(f"--set {shlex.join([key, value])}: the '=' is missing, so {value!r} would be read as"
                                   f" another argument; write --set {shlex.quote(f'{key}={value}')}")
        return super().parse_args(ctx, args)


@main.command(cls=SetCommand)
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--out", type=click.Path(), default=None,
              help="Output directory: new, empty, or an earlier run's [default: a new runs/<date>-<time>, linked as runs/latest].")
@click.option("--overwrite", is_flag=True,
              help="Replace the finished or interrupted run in --out (only the files mim wrote there are removed).")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the interrupted run in this directory (its config.yaml and checkpoints/last.ckpt).")
@click.option("--accelerator", help="Lightning accelerator (cpu, gpu, auto); overrides trainer.accelerator.")
@click.option("--devices", help="Devices per node (a count, -1 for all); overrides trainer.devices.")
@click.option("--strategy", help="Lightning strategy (auto, ddp, ...); overrides trainer.strategy.")
@click.option("--num-nodes", type=int, help="Number of nodes; overrides trainer.num_nodes.")
@friendly_errors
def train(config, overrides, out, overwrite, resume, accelerator, devices, strategy, num_nodes):
    """One two-stage run. Without CONFIG it runs the built-in quickstart."""
    from mim_lightning.config import load_config
    from mim_lightning.training.run_folder import RunFolder, new_run_folder

    flags = {"trainer.accelerator": accelerator, "trainer.devices": devices,
             "trainer.strategy": strategy, "trainer.num_nodes": num_nodes}
    overrides = list(overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if resume is not None:
        if config is not None or overrides or overwrite or (out is not None and Path(out) != Path(resume)):
            raise MimError("--resume DIR runs exactly the interrupted run in DIR (its config.yaml): "
                           "give no CONFIG, no --set, no trainer flags, no --overwrite and no other --out")
        folder = RunFolder(resume)
        if folder.status().get("status") == "finished" and folder.results() is not None:
            click.echo(f"the run in {quoted(folder.path)} is complete (results.json); nothing to resume")
            return
        cfg = load_config(folder.path / "config.yaml")
    else:
        cfg = load_config(config, overrides)
        folder = RunFolder(out) if out is not None else None
    run_in_folder(cfg, folder, resume=resume is not None, default=lambda: new_run_folder(Path("runs")), overwrite=overwrite)


def run_in_folder(cfg, folder, resume: bool, default=None, overwrite: bool = False) -> None:
    """Plan, lock the folder, train, and record the outcome in it (rank zero writes). Components
    are looked up and probed before the training stack (Lightning) is imported: bad names answer
    fast. A new run's folder must be mim's to write (``RunFolder.check_new_run``); ``folder`` None:
    ``default()`` makes a new one once the run is planned."""
    from mim_lightning.plugins.names import refuse_unknown_keys

    refuse_unknown_keys([("data.link", "link", cfg.data.link), ("stage1.loss", "loss", cfg.stage1.loss),
                         ("stage2.loss", "loss", cfg.stage2.loss), ("model.activation", "activation", cfg.model.activation)])

    from mim_lightning.plugins.validate import resolve_run_components

    components = resolve_run_components(cfg)

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from mim_lightning.analysis.report import run_summary
    from mim_lightning.training.checkpoints import StopRequest
    from mim_lightning.training.plan import plan_run
    from mim_lightning.training.run import train_replicas
    from mim_lightning.training.run_folder import RunFolder

    quiet_lightning()
    is_zero = rank_zero_only.rank == 0
    plan = plan_run(cfg, warn=is_zero, components=components)  # warnings; with checks.strict, refusal
    if folder is None:
        folder = default() if is_zero else RunFolder(Path("runs") / "latest")   # other ranks never write it
    elif is_zero and not resume:
        folder.check_new_run(overwrite)
    stop = StopRequest()
    try:
        with ExitStack() as lifecycle:
            lifecycle.enter_context(stop)   # first: a signal once status.json says running is a stop request
            if is_zero:   # the folder records how the run ends (RunFolder.attempt)
                lifecycle.enter_context(folder.locked())
                lifecycle.enter_context(folder.attempt(cfg.model_dump(), fresh=not resume))
            results = train_replicas(cfg, folder.path, [cfg.seed], plan.assumptions, resume, stop, plan, progress=True)[0]
            if is_zero:
                folder.finish(results)
    except Interrupted as exc:   # rank zero speaks for every rank (training.ranks)
        if is_zero:
            click.echo(f"{exc}. {next_step(folder)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if is_zero:
            click.echo(f"stopped at once by a second signal. {next_step(folder)}", err=True)
        sys.exit(143 if stop.signal_name == "SIGTERM" else 130)
    if is_zero:
        click.echo(run_summary(results))
        click.echo(f"wrote {quoted(folder.path / 'results.json')}; TensorBoard: tensorboard --logdir {quoted(folder.path)}")


def next_step(folder) -> str:
    """What to do after a stop: the resume command when a checkpoint was saved, else run again."""
    from mim_lightning.training.run_folder import CHECKPOINT_FILE

    if (folder.path / CHECKPOINT_FILE).is_file():
        return f"Resume with: mim train --resume {quoted(folder.path)}"
    return f"Nothing was saved before the stop, so there is nothing to resume: start the run again ({shlex.join(['mim', *sys.argv[1:]])})"


def quoted(path) -> str:
    """A path as the shell reads it back (quoted when it holds spaces or other specials)."""
    return shlex.quote(str(path))


@main.command(cls=SetCommand)
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the base config (repeatable).")
@click.option("--out", type=click.Path(), default=None, help="Output directory [default: runs/<CONFIG name>].")
@click.option("--limit/--no-limit", default=None,
              help="Draw the Bayes-optimal limit (d -> inf, r <= 3) on the smallest-cosine plot against data.alpha"
                   " [default: on, unless MIM_SWEEP_LIMIT=0].")
@click.option("--max-runs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Refuse a grid of more than N runs, counted before any run is built [default: 10000].")
@click.option("--workers", type=WorkerCount(), default=None,
              help="Train in N worker processes on this machine, each with cores / N threads or one GPU;"
                   " auto: one per GPU, else one per two cores.")
@click.option("--slurm", "on_slurm", is_flag=True, help="Train in one SLURM job array (submitit); collect the results"
              " with --wait, or by running the command again without --slurm once the array has ended.")
@click.option("--wait", is_flag=True, help="With --slurm: wait for the array, then write results.csv and the plots.")
@click.option("--partition", default=None, help="With --slurm: the partition [default: launcher.partition, else the cluster's].")
@click.option("--time", "minutes", type=click.IntRange(min=1), default=None, metavar="MINUTES",
              help="With --slurm: each array task's time limit [default: launcher.time, else 60].")
@click.option("--gpus-per-task", type=click.IntRange(min=1), default=None, help="With --slurm: GPUs of each array task.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="With --slurm: CPUs of each array task.")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --slurm: at most N array tasks at once.")
@click.option("--tasks", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --slurm: the array's size [default: launcher.tasks, else one task per group of seeds].")
@friendly_errors
def sweep(config, overrides, out, limit, max_runs, workers, on_slurm, wait, partition, minutes, gpus_per_task,
          cpus_per_task, array_parallelism, tasks):
    """A grid of runs: CONFIG plus a 'sweep:' mapping of keys to lists of values. Trains only the
    runs without results (OUT/runs/<config hash>/), then writes OUT/results.csv and PNG plots."""
    from mim_lightning.experiments.grid import MAX_RUNS, check_sweep

    check_sweep(config, overrides, max_runs or MAX_RUNS)  # a bad file or grid is refused before torch loads
    from mim_lightning.experiments.launch_options import Submitted, launcher_of

    given = {"partition": partition, "time": minutes, "gpus_per_task": gpus_per_task, "cpus_per_task": cpus_per_task,
             "array_parallelism": array_parallelism, "tasks": tasks}
    options = launcher_of(config, given)
    if on_slurm and workers is not None:
        raise MimError("--workers and --slurm: give one (local worker processes, or a SLURM job array)")
    if not on_slurm and (wait or any(value is not None for value in given.values())):
        raise MimError("--wait, --partition, --time, --gpus-per-task, --cpus-per-task, --array-parallelism and --tasks"
                       " go with --slurm")
    from mim_lightning.experiments.sweep import LIMIT_STAGE, run_sweep
    from mim_lightning.training.checkpoints import StopRequest

    trainer = None
    if on_slurm:
        from mim_lightning.experiments.slurm import array

        collect = shlex.join(["mim", "sweep", config, *[f"--set={o}" for o in overrides], *(["--out", out] if out else [])])
        trainer = array(options, wait, collect)
    elif workers is not None:
        from mim_lightning.experiments.workers import parallel, worker_count

        trainer = parallel(worker_count(workers))
    quiet_lightning()
    again = "finished runs are kept: run the same command again to continue"
    with StopRequest() as stop:
        try:
            run_sweep(config, overrides, out, stop=stop, limit=limit, max_runs=max_runs or MAX_RUNS, trainer=trainer)
        except Submitted as done:  # --slurm without --wait
            click.echo(str(done))
            return
        except (KeyboardInterrupt, Interrupted) as exc:
            name = getattr(exc, "signal_name", None) or stop.signal_name or "SIGINT"
            if getattr(exc, "stage", None) == LIMIT_STAGE:  # the runs are done and results.csv is written
                click.echo(f"\nInterrupted by {name} while computing {LIMIT_STAGE} for the plots; the runs are done and"
                           " results.csv is written: run the same command again to draw the plots (--no-limit: without"
                           " the limit)", err=True)
            else:
                click.echo(f"\nInterrupted by {name}; {again}.", err=True)
            sys.exit(EXIT_CODES.get(name, 130))
    if stop.signal_name is not None:  # the signal came after the last training step
        click.echo(f"Interrupted by {stop.signal_name} after the last run; {again}.", err=True)
        sys.exit(EXIT_CODES.get(stop.signal_name, 143))


@main.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Output a JSON list.")
@friendly_errors
def plugins_command(as_json):
    """Installed plugins (built-ins included) and the components each registers.

    Exit 0 when every plugin loaded cleanly, 1 when one is broken (it is listed with its error).
    """
    from mim_lightning.plugins import manager as plugins

    infos = plugins.plugin_infos()
    for info in infos:
        if info.errors:
            click.echo(f"Warning: {info.describe()} is broken: {info.error}", err=True)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
    else:
        click.echo(plugins.format_plugins(infos))
    if any(info.errors for info in infos):
        sys.exit(1)  # the listing is complete, but a plugin is broken


class BadUsage(click.ClickException):
    """Bad usage of a command (unknown component, r out of range): 'Error: <one line>', exit 2."""

    exit_code = 2


def usage_checked(link=None, loss=None, activation=None, r=None, default_r=2) -> int:
    """Look up the named components and validate r (default: default_r, or the link's min_r if
    larger); BadUsage names the option and lists what is available."""
    from mim_lightning.config import MAX_R
    from mim_lightning.plugins import manager as plugins

    registry = plugins.get_registry()
    min_r = 1
    for kind, name in (("link", link), ("loss", loss), ("activation", activation)):
        if name is not None:
            try:
                component = registry.get(kind, name)
            except MimError as exc:
                raise BadUsage(f"--{kind}: {exc}") from None
            if kind == "link":
                min_r = component.metadata.get("min_r", 1)
    if r is None:
        r = max(default_r, min_r)
    if r < 1:
        raise BadUsage(f"--r must be a positive integer, got {r}")
    if r < min_r:
        raise BadUsage(f"--r {r} is too small for link {link!r}, which needs r >= {min_r}")
    if r > MAX_R:
        raise BadUsage(f"--r {r} is above the limit of the theory computations, r <= {MAX_R}")
    return r


@contextlib.contextmanager
def components_named_by_options():
    """A component that breaks its contract (core.contracts) is bad usage: BadUsage naming the
    option that chose it, in the words the probe and data generation use too."""
    from mim_lightning.core.contracts import ComponentError

    try:
        yield
    except ComponentError as exc:
        raise BadUsage(f"--{exc.kind}: {exc}") from None


def default_components():
    """The quickstart's (link, stage-1 loss, activation, r)."""
    from mim_lightning.config import Config

    defaults = Config()
    return defaults.data.link, defaults.stage1.loss, defaults.model.activation, defaults.data.r


def refuse_unknown_options(**options) -> None:
    """Refuse a misspelt --link/--loss/--activation before torch is imported (when no plugin can
    provide it; ``plugins.names``)."""
    from mim_lightning.plugins.names import refuse_unknown_keys

    refuse_unknown_keys([(f"--{kind}", kind, name) for kind, name in options.items() if name is not None])


@main.command()
@click.option("--link", cls=ComponentOption, kind="link", help="Link to check (Assumption 1; with --loss also Assumption 5).")
@click.option("--loss", cls=ComponentOption, kind="loss", help="Loss to check (Assumption 3; with --link also Assumption 5).")
@click.option("--activation", cls=ComponentOption, kind="activation", help="Activation to check (Assumption 2).")
@click.option("--r", "r", type=int, help="Dimension of the hidden subspace, at most 32 [default: 2, or the link's min_r].")
@click.option("--json", "as_json", is_flag=True, help='Output {"checks": [...]} as JSON.')
@friendly_errors(exit_code=2)
def check(link, loss, activation, r, as_json):
    """Check components against the paper's assumptions.

    Checks only the components given; with none, the defaults (the quickstart's link, stage-1
    loss and activation). Exit 0 when every check holds, 1 when one is violated, 2 on bad usage or
    a broken component.
    """
    refuse_unknown_options(link=link, loss=loss, activation=activation)

    from mim_lightning.analysis import assumptions
    from mim_lightning.analysis.report import jsonable, text_table, violations

    default_link, default_loss, default_activation, default_r = default_components()
    if link is None and loss is None and activation is None:
        link, loss, activation = default_link, default_loss, default_activation
    r = usage_checked(link, loss, activation, r, default_r)
    checks = []
    with components_named_by_options():
        if link is not None:
            checks.append(assumptions.check_link(link, r))
        if activation is not None:
            checks.append(assumptions.check_activation(activation))
        if loss is not None:
            checks.append(assumptions.check_loss(loss))
        if link is not None and loss is not None:
            checks.append(assumptions.check_pair(link, loss, r))
    checks = jsonable(checks)
    bad = violations(checks)
    if as_json:
        click.echo(json.dumps({"checks": checks}, indent=2))
    else:
        click.echo(text_table(checks))
        click.echo(f"\n{len(bad)} of {len(checks)} check(s) violated" if bad else f"\n{len(checks)} check(s), all hold")
    if bad:
        sys.exit(1)


@main.command()
@click.option("--link", required=True, cls=ComponentOption, kind="link", help="Link g.")
@click.option("--r", "r", type=int, help="Dimension of the hidden subspace, at most 32 [default: 2, or the link's min_r].")
@click.option("--loss", default="squared", show_default=True, cls=ComponentOption, kind="loss",
              help="Loss whose preprocessing T(y) = -loss'(0, y) defines M.")
@click.option("--alphas", help="Comma-separated sample ratios: also the Bayes-optimal overlap at each (r <= 3)."
                               " At most 100 distinct values in [2/2**24, 2**24], the range data.alpha allows.")
@click.option("--noise", default="0.01", show_default=True,
              help="Label noise of the Bayes-optimal computation, relative to std g(z): 0 (noiseless) to 1e9.")
@click.option("--json", "as_json", is_flag=True, help="Output the report as JSON.")
@friendly_errors(exit_code=2)
def theory(link, r, loss, alphas, noise, as_json):
    """Population matrix M, its eigenvalues, the link's Hermite degree and alpha_c, the optimal
    spectral weak-recovery threshold (n = alpha_c * d samples); with --alphas, the Bayes-optimal
    limit at each alpha (AMP state evolution: overlap Q, principal cosines, test error).

    alpha_c is computed for r <= 6 (its cost grows like r^4). Exit 0, or 2 on bad usage or a
    broken component.
    """
    refuse_unknown_options(link=link, loss=loss)

    from mim_lightning.analysis.limit import MAX_LIMIT_R, bayes_optimal, parse_alphas, parse_noise
    from mim_lightning.analysis.report import format_limit, format_theory, jsonable
    from mim_lightning.analysis.theory import theory_report

    r = usage_checked(link=link, loss=loss, r=r, default_r=default_components()[3])
    ratios = parse_alphas(alphas) if alphas is not None else None  # MimError (exit 2) when malformed
    noise = parse_noise(noise)
    if ratios is not None and r > MAX_LIMIT_R:
        raise BadUsage(f"--r {r} with --alphas: the Bayes-optimal limit is computed for r <= {MAX_LIMIT_R}"
                       " (tensor quadrature); give a smaller --r or leave out --alphas")
    with components_named_by_options():
        report = jsonable(theory_report(link, r, loss))
        if ratios is not None:  # a line per alpha on stderr; a signal stops it within a second
            from mim_lightning.training.checkpoints import StopRequest

            with StopRequest() as stop:
                try:
                    limit = bayes_optimal(link, r, ratios, noise, echo=lambda line: click.echo(line, err=True),
                                          stop=lambda: stop.check("the Bayes-optimal limit"))
                except (KeyboardInterrupt, Interrupted):
                    name = stop.signal_name or "SIGINT"
                    click.echo(f"\nInterrupted by {name} while computing the Bayes-optimal limit; it is cached only once"
                               " every alpha is done: run the command again for all of it", err=True)
                    sys.exit(EXIT_CODES.get(name, 130))
            report["bayes_optimal"] = jsonable(limit)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_theory(report))
    if ratios is not None:
        click.echo("\n" + format_limit(report["bayes_optimal"]))



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""`relist` command line: a thin typer layer over library functions.

Each area registers its commands from its own module, so adding a command
never means editing another area's file. :func:`main` (the ``relist``
executable) is the one place errors meet people: an expected error (bad
input, config, model version, checkpoint, or command-line arguments) prints
what is wrong and what to do in one or two lines and exits 2; a traceback
only with ``--debug`` (anywhere on the line) or ``RELIST_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer
from typer._click.exceptions import ClickException, UsageError  # typer vendors its own click (0.26+)

DEBUG_ENV = "RELIST_DEBUG"
EXIT_EXPECTED = 2
# Errors a user can cause and fix, by class (matched by name so that catching them imports nothing),
# and what to do about each.
WHAT_TO_DO = {
    "relist.data.schema.SchemaError": "fix the file, row and field named above "
                                      "(`relist data validate DIR` lists every problem of a log directory)",
    "relist.io.config.ConfigError": "fix the config file and field named above "
                                    "(the shipped files in relist/configs/ document every field)",
    "relist.sim.config.SimConfigError": "fix the simulator config field named above "
                                        "(relist/configs/sim_default.yaml documents every field)",
    "relist.serve.registry.VersionError": "export a new version with `relist export`, or point CURRENT "
                                          "at one that serves",
    "relist.io.weights.CheckpointError": "train again without --resume, or restore the file named above",
    "builtins.FileNotFoundError": "check the path named above",
    "relist.cli.commands_bench.UnknownStudy": "run one of the studies listed above (benchmarks/studies/)",
}

app = typer.Typer(help="relist: ranking and whole-list re-ranking for e-commerce feeds. "
                       "Add --debug (or set RELIST_DEBUG=1) for tracebacks.", no_args_is_help=True)
def _leave_process_group(*_: object, **__: object) -> None:
    """After any training command: under torchrun, all ranks leave the process group together."""
    from relist.train.distributed import shutdown

    shutdown()


train_app = typer.Typer(help="Train a model (ranking, evaluator, generator).", no_args_is_help=True,
                        result_callback=_leave_process_group)
eval_app = typer.Typer(help="Evaluate policies and models; prints a table and writes JSON.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


def _register_all() -> None:
    from relist.cli import (
        commands_bench,
        commands_data,
        commands_demo,
        commands_initial,
        commands_offpolicy,
        commands_ranking,
        commands_rerank_eval,
        commands_rerank_train,
        commands_serve,
        commands_sim,
    )

    for module in (commands_sim, commands_data, commands_initial, commands_ranking, commands_rerank_train,
                   commands_rerank_eval, commands_serve, commands_demo, commands_offpolicy, commands_bench):
        module.register(app, train_app, eval_app)


_register_all()


def what_to_do(err: BaseException) -> str | None:
    """The advice for an expected error, or None for a bug (which keeps its traceback)."""
    if str(getattr(err, "problem", "")).startswith("no such file"):
        return "check the path (a log directory holds items.parquet, users.parquet if any, and its lists)"
    for cls in type(err).__mro__:
        hint = WHAT_TO_DO.get(f"{cls.__module__}.{cls.__qualname__}")
        if hint is not None:
            return hint
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """The ``relist`` executable: run one command; expected errors become two lines and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        code = typer.main.get_command(app).main(args, prog_name="relist", standalone_mode=False)
    except UsageError as err:
        if debug:
            raise
        where = err.ctx.command_path if err.ctx is not None else "relist"
        _fail(f"{where}: {err.format_message()}", f"see `{where} --help` for its arguments")
    except ClickException as err:  # e.g. a file option that cannot be opened
        if debug:
            raise
        _fail(f"relist: {err.format_message()}", "check the path and try again", err.exit_code)
    except typer.Abort:
        typer.echo("relist: aborted", err=True)
        raise SystemExit(130) from None
    except Exception as err:
        hint = what_to_do(err)
        if hint is None or debug:
            raise
        _fail(f"relist: error: {' '.join(str(err).split())}", f"what to do: {hint} (--debug shows the traceback)")
    raise SystemExit(code if isinstance(code, int) else 0)


def _fail(message: str, advice: str, code: int = EXIT_EXPECTED) -> None:
    typer.echo(message, err=True)
    typer.echo(f"  {advice}", err=True)
    raise SystemExit(code)

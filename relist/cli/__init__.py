"""`relist` command line: a thin typer layer over library functions.

Each area registers its commands from its own module, so adding a command
never means editing another area's file.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="relist: ranking and whole-list re-ranking for e-commerce feeds.", no_args_is_help=True)
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

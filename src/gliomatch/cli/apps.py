"""The ``gliomatch`` command and its noun groups (commands register themselves on them)."""

import typer

app = typer.Typer(
    help="Personalize brain-tumor growth models by database query. Units: mm, days, mm^2/day.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
atlas_app = typer.Typer(help="The tissue atlas.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks: fast paths against their references.", no_args_is_help=True
)
db_app = typer.Typer(help="Tumor databases: build, inspect, verify, export.", no_args_is_help=True)
app.add_typer(atlas_app, name="atlas")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")

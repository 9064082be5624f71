"""The one CLI option layer: each shared option typed and checked once, the same in every fcn-* command."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fcnseg.benchmarks.cli import bench_main
from fcnseg.core.cli_args import HW, NCHW, BackendChoice, OneLineCommand, backend_options, profile_options
from fcnseg.eval.cli import eval_main
from fcnseg.export.cli import main as export_main
from fcnseg.runtime.cli import predict_main
from fcnseg.serve.cli import main as serve_main
from fcnseg.datasets.cli import main as data_main
from fcnseg.train.cli import train_main

COMMANDS = {"fcn-predict": predict_main, "fcn-eval": eval_main, "fcn-bench": bench_main, "fcn-export": export_main,
            "fcn-serve": serve_main, "fcn-train": train_main, "fcn-data": data_main}


def _probe(**options):
    """A command that prints what the option layer handed it."""
    @click.command(cls=OneLineCommand)
    @backend_options(**options)
    @profile_options()
    @click.option("--shape", type=HW, default=None)
    def probe(backend: BackendChoice, min_shape, opt_shape, max_shape, shape) -> None:
        click.echo(repr((backend, min_shape, opt_shape, max_shape, shape)))
    return probe


def test_backend_options_arrive_as_one_choice():
    out = CliRunner().invoke(_probe(multiple=True), ["--backend", "openvino", "--backend", "onnxruntime",
                                                     "--providers", "cuda, cpu", "--threads", "2",
                                                     "--min-shape", "1x3x64x64", "--shape", "375x500"])
    assert out.exit_code == 0, out.output
    choice, lo, opt, hi, shape = eval(out.output, {"BackendChoice": BackendChoice})
    assert choice == BackendChoice(("openvino", "onnxruntime"), ["cuda", "cpu"], None, 2)
    assert (lo, opt, hi, shape) == ((1, 3, 64, 64), None, None, (375, 500))


def test_one_backend_and_defaults():
    out = CliRunner().invoke(_probe(), [])
    choice = eval(out.output, {"BackendChoice": BackendChoice})[0]
    assert choice == BackendChoice() and choice.backend is None


@pytest.mark.parametrize("args,fragment", [
    (["--threads", "-3"], "'--threads': -3 is not in the range x>=1"),
    (["--threads", "0"], "'--threads': 0 is not in the range x>=1"),
    (["--backend", "tflite"], "'--backend'"),
    (["--precision-hint", "f16"], "'--precision-hint'"),
    (["--min-shape", "1x3x64"], "expected a shape like NxCxHxW"),
    (["--shape", "0x5"], "expected a shape like HxW"),
])
def test_bad_values_are_one_line_usage_errors(args, fragment, capfd):
    with pytest.raises(SystemExit) as e:
        _probe().main(args, prog_name="probe")
    err = capfd.readouterr().err
    assert e.value.code == 2 and fragment in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_subcommand_shows_its_help(name):
    command = COMMANDS[name]
    subcommands = list(getattr(command, "commands", {}))
    for sub in [None] + subcommands:
        out = CliRunner().invoke(command, ([sub] if sub else []) + ["--help"])
        assert out.exit_code == 0 and "Usage:" in out.output, (name, sub, out.output, out.exception)


@pytest.mark.parametrize("name", ["fcn-predict", "fcn-eval", "fcn-bench"])
def test_threads_is_checked_by_every_command_that_runs_a_model(name):
    out = CliRunner().invoke(COMMANDS[name], ["--threads", "-3"])
    assert out.exit_code == 2 and "-3 is not in the range x>=1" in out.output


def test_dims_type_keeps_parsed_tuples():
    assert NCHW.convert((1, 3, 8, 8), None, None) == (1, 3, 8, 8)

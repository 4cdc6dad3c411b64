"""The command line explains itself: a user's description, every argument with help text, one
message and exit code (2) for each kind of invalid input, nothing after `--` silently dropped,
and library noise a user cannot act on kept out of the console."""

from __future__ import annotations

import argparse
import logging
import warnings

import pytest
from conftest import REPO
from helpers import METHODS, run_for

from tunebench import cli, noise

SMOKE = str(REPO / "experiments" / "smoke.yaml")


def subparsers(parser: argparse.ArgumentParser):
    """(path, parser) of every command and subcommand, hidden ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                for sub_name, grandchild in subparsers(child):
                    yield f"{name} {sub_name}", grandchild


def test_the_help_is_for_users_and_lists_their_commands(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "One experiment file" in out and "exit codes" in out
    listed = out.split("commands:")[1]
    for command in ("validate", "plan", "estimate", "run", "report", "reproduce", "export"):
        assert f"\n    {command} " in listed or f"\n    {command}\n" in listed, command
    assert "\n    stage" not in listed  # internal: the Snakemake rules' door


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("tunebench 0.")


def test_every_argument_of_every_user_command_has_help():
    undocumented = [
        f"tunebench {path}: {action.dest}"
        for path, parser in subparsers(cli.build_parser())
        if not path.startswith("stage")  # generated from the stages' signatures
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert undocumented == []


def test_defaults_are_shown_and_none_is_not(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    out = capsys.readouterr().out
    assert "(default: f16,q8_0)" in out and "(default: None)" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", SMOKE, "--gpu", "no-such-gpu"],
        ["estimate", SMOKE, "--gpu", "no-such-gpu"],
        ["reproduce", "--list", "--gpu", "no-such-gpu"],
    ],
)
def test_an_unknown_gpu_is_one_message_and_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --gpu: unknown GPU 'no-such-gpu': use one of H200")


@pytest.mark.parametrize("command", [["validate", SMOKE], ["export", SMOKE, "--run", "x"]])
def test_arguments_after_the_separator_are_refused_where_nothing_takes_them(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--", "--until", "train"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert f"{command[0]} does not take arguments after --" in err and "--until train" in err


def test_the_experiment_is_positional_everywhere(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["export", "--run", "x"])  # once silently smoke.yaml
    assert done.value.code == 2
    assert "the following arguments are required: experiment" in capsys.readouterr().err


def test_a_bad_experiment_file_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [{name: m, hub: a/b}]\nmethods: [{method: lora, rnk: 4}]\n")
    assert cli.main(["validate", str(bad)]) == 2
    assert "methods[0].rnk" in capsys.readouterr().err


def test_known_library_noise_is_dropped_and_the_rest_kept(caplog):
    noise.quiet_known_noise()
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "x")
        logging.getLogger("bitsandbytes.autograd._functions").warning(
            "MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "fp32"
        )
        bnb.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]


def test_trainer_settings_raise_no_deprecation_warning(tmp_path):
    from tunebench.training.train import sft_config

    run = run_for(METHODS["lora"], gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = sft_config(run, tmp_path, "none")
    assert config.gradient_checkpointing is True
    assert not [w for w in caught if "checkpointing" in str(w.message)], caught


@pytest.mark.slow
def test_a_run_stopped_where_asked_is_a_success_that_says_what_it_built(tmp_path):
    import yaml
    from conftest import tiny_experiment
    from helpers import tunebench

    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    done = tunebench(tmp_path, "run", "exp.yaml", "--", "--until", "prepare_data", "--cores", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("stopped where asked (--until prepare_data --cores 1): 1 of 1 dat")
    assert "0 of 2 runs trained" in last and "no comparison table;" not in done.stderr

import subprocess
import sys

import pytest
from click.testing import CliRunner

from daat.cli import main

COMMANDS = [
    ["preprocess"],
    ["train"],
    ["evaluate"],
    ["export"],
    ["report"],
    ["quickstart"],
    ["artifacts"],
    ["artifacts", "list"],
    ["artifacts", "show"],
    ["artifacts", "verify"],
    ["config"],
    ["config", "presets"],
    ["config", "show"],
    ["experiment"],
    ["experiment", "run"],
    ["experiment", "collect"],
    ["experiment", "cell"],
]


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys, time; t=time.time(); from daat.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'daat --help imported torch'\n"
        "print(time.time()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 1.0


@pytest.mark.parametrize("args", [[]] + COMMANDS)
def test_every_help_shows_an_example(args):
    result = CliRunner().invoke(main, args + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_config_show_reports_bad_key():
    result = CliRunner().invoke(main, ["config", "show", "--set", "train.epochz=1"])
    assert result.exit_code == 2
    assert "train.epochz" in result.output


@pytest.mark.parametrize(
    "command",
    [["config", "show"], ["train", "--shards", "."], ["preprocess", "--card", "synthetic"]],
)
def test_a_bad_value_is_one_error_line_naming_the_key(command):
    result = CliRunner().invoke(main, command + ["--set", "optim.lr=nan"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr == "error: config key 'optim.lr' must be a finite number, got nan\n"


def test_config_show_prints_radii_as_fractions():
    result = CliRunner().invoke(
        main, ["config", "show", "--set", "attack.eps=8/255", "--set", "eval.eps=2/255"]
    )
    assert result.exit_code == 0, result.output
    assert "attack:\n  eps: 0.0314 (8/255)\n  alpha: 0.00392 (1/255)\n" in result.output
    assert "  eps: 0.00784 (2/255)\n" in result.output
    refused = CliRunner().invoke(main, ["config", "show", "--set", "attack.eps=4"])
    assert refused.exit_code == 2 and "write 4/255" in refused.stderr


def test_artifacts_verify_cli(tmp_path):
    from daat import artifacts as A

    art = A.create_or_open(tmp_path, "demo", {"k": 1}, config={})
    art.write_bytes("a.bin", b"abc")
    art.mark_complete()
    ok = CliRunner().invoke(main, ["artifacts", "verify", str(art.path)])
    assert ok.exit_code == 0 and "OK" in ok.output
    (art.path / "a.bin").write_bytes(b"abd")
    bad = CliRunner().invoke(main, ["artifacts", "verify", str(art.path)])
    assert bad.exit_code == 1 and "a.bin" in bad.output
    listed = CliRunner().invoke(main, ["artifacts", "list", str(tmp_path)])
    assert art.id in listed.output and "complete" in listed.output

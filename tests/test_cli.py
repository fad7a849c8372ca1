import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from daat.cli import main

COMMANDS = [["preprocess"], ["train"], ["evaluate"], ["export"], ["report"], ["quickstart"],
            ["artifacts"],
            ["artifacts", "list"], ["artifacts", "show"], ["artifacts", "verify"], ["config"],
            ["config", "presets"], ["config", "show"], ["experiment"], ["experiment", "run"],
            ["experiment", "collect"], ["experiment", "cell"]]


def test_help_is_instant_and_does_not_import_torch():
    code = ("import sys, time; t=time.time(); from daat.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'daat --help imported torch'\n"
            "print(time.time()-t)")
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

"""The ``lbkit`` command: useful output, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lbkit.algorithms import ALGORITHMS
from lbkit.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lbkit", *args], capture_output=True, text=True, timeout=120
    )


def test_simulate_json_has_the_documented_fields(capsys):
    """--json prints one object with latency percentiles, max_queue and served per backend."""
    assert main(["simulate", "--backends", "4", "--requests", "3000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("mean_latency", "p50", "p95", "p99", "max_queue", "served"):
        assert key in data
    assert sum(data["served"].values()) == 3000


def test_simulate_table_shows_theory_for_the_supermarket_model(capsys):
    """The default scenario prints the theoretical mean beside the measured one."""
    assert main(["simulate", "--requests", "20000"]) == 0
    out = capsys.readouterr().out
    assert "theory" in out and "2.614" in out


def test_simulate_weights_and_speeds_per_backend(capsys):
    """--weights and --speeds apply one value per backend."""
    args = ["simulate", "-a", "weighted_round_robin", "-n", "3", "--weights", "5,1,1"]
    assert main([*args, "--speeds", "5,1,1", "--requests", "7000", "--json"]) == 0
    served = json.loads(capsys.readouterr().out)["served"]
    assert served == {"s1": 5000, "s2": 1000, "s3": 1000}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--algorithm", "fastest"], "unknown algorithm 'fastest'"),
        (["simulate", "--load", "0"], "--load: must be > 0"),
        (["simulate", "--load", "-1"], "must be > 0"),
        (["simulate", "--backends", "0"], "must be >= 1"),
        (["simulate", "-n", "3", "--speeds", "1,2"], "--speeds has 2 values"),
        (["simulate", "--requests", "many"], "expected a whole number"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(args, needle):
    """A user's mistake: exit code 2, one line on stderr, no traceback."""
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_plot_is_written(tmp_path, capsys):
    """--plot writes a PNG file."""
    out = tmp_path / "p2c.png"
    assert main(["simulate", "-n", "5", "--requests", "2000", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_to_a_missing_folder_is_a_clear_error(tmp_path):
    """--plot into a folder that does not exist: one line naming the path."""
    proc = run("simulate", "-n", "3", "--requests", "500", "--plot", str(tmp_path / "no/x.png"))
    assert proc.returncode == 2
    assert "no/x.png" in proc.stderr and "Traceback" not in proc.stderr


def test_algorithms_lists_every_algorithm(capsys):
    """`lbkit algorithms` names all nine with their nginx directive."""
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ALGORITHMS)
    assert "least_conn;" in out


def test_help_and_version():
    """--help explains the defaults; --version prints the version."""
    proc = run("simulate", "--help")
    assert proc.returncode == 0 and "supermarket model" in proc.stdout
    assert run("--version").stdout.startswith("lbkit ")


def test_no_command_prints_help():
    """`lbkit` alone shows the commands and exits 2."""
    proc = run()
    assert proc.returncode == 2 and "simulate" in proc.stdout

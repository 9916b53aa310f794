"""The standalone CLI: run, snapshot, restore (issue 2, section 5)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import PROGRAMS, run_plain

from thingssim.cli import main

COUNTER = PROGRAMS / "counter.py"


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def split_run(program: Path, splits: list[float], tmp: Path, total: float | None) -> str:
    """snapshot --after s1, restore --after (s2-s1) ... restore [--for (total - last)].

    Snapshots alternate between plain and gzip-compressed files.
    """
    names = [tmp / (f"{n}.json" + (".gz" if n % 2 else "")) for n in range(len(splits))]
    code, stdout, err = cli("snapshot", program, "--after", splits[0], "-o", names[0],
                            "--virtual")
    assert code == 0, err
    out = [stdout]
    for n in range(1, len(splits)):
        code, stdout, err = cli("restore", names[n - 1], "--after", splits[n] - splits[n - 1],
                                "-o", names[n], "--virtual")
        assert code == 0, err
        out.append(stdout)
    args = ["restore", names[-1], "--virtual"]
    if total is not None:
        args += ["--for", total - splits[-1]]
    code, stdout, err = cli(*args)
    assert code == 0, err
    out.append(stdout)
    return "".join(out)


@pytest.mark.parametrize("name", ["counter", "regulator", "pubsub_chain", "factorial"])
def test_split_runs_equal_the_whole_run(name, tmp_path):
    program = PROGRAMS / f"{name}.py"
    code, whole, _ = cli("run", program, "--virtual")
    assert code == 0 and whole
    rng = random.Random(name)
    end = run_plain(program.read_text())[1].host.program_time()  # when the program exits
    for hops in (1, 3):
        splits = sorted(round(rng.uniform(0.02 * end, 0.95 * end), rng.choice([1, 2, 3]))
                        for _ in range(hops))
        assert split_run(program, splits, tmp_path, None) == whole, splits


@pytest.mark.parametrize(("total", "splits"), [(3.0, [1.0]), (3.05, [0.1, 0.2, 0.3]),
                                               (2.5, [0.7, 1.3, 1.9, 2.05])])
def test_run_for_equals_split_for(total, splits, tmp_path):
    _, whole, _ = cli("run", COUNTER, "--for", total, "--virtual")
    assert whole.split() == [str(i) for i in range(int(total * 10 + 1e-9))]
    assert split_run(COUNTER, splits, tmp_path, total) == whole


def test_compressed_snapshot_and_its_document(tmp_path):
    code, _, err = cli("snapshot", COUNTER, "--after", 1, "-o", tmp_path / "s.json.gz",
                       "--virtual")
    assert code == 0 and "s.json.gz" in err
    assert (tmp_path / "s.json.gz").read_bytes()[:2] == b"\x1f\x8b"
    cli("snapshot", COUNTER, "--after", 1, "-o", tmp_path / "s.json", "--virtual")
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["format"] == "thingssim-snapshot" and doc["time"] == 1.0
    assert doc["program"]["code_name"] == "counter.py"


def test_exit_codes_and_crashes(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("def f():\n    raise RuntimeError('bad sensor')\nthings.set_timeout(f, 1)\n")
    code, _, err = cli("run", crash, "--virtual")
    assert code == 1 and "RuntimeError: bad sensor" in err and "crash.py" in err
    bye = tmp_path / "bye.py"
    bye.write_text("print('bye')\nthings.exit(3)\n")
    code, out, _ = cli("run", bye, "--virtual")
    assert (code, out) == (3, "bye\n")


@pytest.mark.parametrize(("args", "message"), [
    (["run", "missing.py"], "missing.py: no such file"),
    (["restore", "{snap}", "--after", "1"], "--after and -o go together"),
    (["restore", "{garbage}"], "not a snapshot"),
    (["run", "{syntax}"], "was never closed"),
    (["snapshot", "{short}", "--after", "5", "-o", "{out}", "--virtual"],
     "ended (Exited) before t=5"),
    (["snapshot", "{gen}", "--after", "1", "-o", "{out}", "--virtual"],
     "globals['feed'].gen: generator"),
])
def test_user_errors_are_clear_messages(args, message, tmp_path):
    files = {"garbage": tmp_path / "g.json", "syntax": tmp_path / "s.py",
             "short": tmp_path / "short.py", "out": tmp_path / "o.json",
             "snap": tmp_path / "snap.json",
             "gen": PROGRAMS / "uncapturable" / "generator_feed.py"}
    files["garbage"].write_text("{not json")
    files["syntax"].write_text("x = (\n")
    files["short"].write_text("print('hi')\n")
    files["snap"].write_text("{}")
    code, _, err = cli(*[a.format(**files) for a in args])
    assert code != 0 and message in err
    assert "Traceback" not in err


def test_console_script_in_real_time():
    """The installed entry point, on the real clock (about 0.35 s of waiting)."""
    result = subprocess.run([sys.executable, "-m", "thingssim.cli", "run", str(COUNTER),
                             "--for", "0.35"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "2"]

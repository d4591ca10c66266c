"""What a person watching a run sees: progress in a pipe, on a terminal, silenced, and through the API."""

from __future__ import annotations

import io
import re

from onnxmp.cli import ProgressDisplay, main
from onnxmp.pipeline import optimize
from tests.conftest import classic


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_pipe_each_stage_ends_with_one_plain_line(cnn_path, tmp_path, capsys):
    assert main(["optimize", str(cnn_path), str(tmp_path / "o.onnx"), "--no-cache", "--target", "generic"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # nothing a log file would show as garbage
    for stage in ("calibrate", "adaround", "phase 1"):
        lines = [line for line in err.splitlines() if line.startswith(stage + ":")]
        # a short stage: just its end line, with the count, the time it took and the rate
        assert len(lines) == 1, err
        done, total = map(int, re.match(rf"{stage}: (\d+)/(\d+) \[", lines[0]).groups())
        assert done == total > 0 and re.search(r"\d+:\d\d<00:00, [\d.]+(it/s|s/it)\]$", lines[0]), lines[0]


def test_a_long_stage_in_a_pipe_prints_a_line_at_every_tenth():
    out = io.StringIO()
    display = ProgressDisplay(True, out)
    display.QUIET_S = 0.0  # the real rate limit (one line per 5 s) would hide the tenths of a fast loop
    for done in range(1, 101):
        display("phase 1", done, 100, f"group {done}")
    lines = out.getvalue().splitlines()
    assert [int(line.split(":")[1].split("/")[0]) for line in lines] == list(range(10, 101, 10))
    assert all("remaining" not in line and "<" in line for line in lines)


def test_a_pipe_is_not_flooded_by_a_fast_long_stage():
    out = io.StringIO()
    display = ProgressDisplay(True, out)
    for done in range(1, 1001):
        display("phase 1", done, 1000, "")
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]] and "1000/1000" in out.getvalue()


def test_on_a_terminal_one_live_line_with_rate_and_time_left():
    term = _Terminal()
    with ProgressDisplay(True, term) as display:
        for done in range(1, 6):
            display("adaround", done, 5, f"conv{done} W4")
        display("phase 1", 1, 3, "g0")
    text = term.getvalue()
    assert text.count("\n") == 2  # each stage's line ends once, the unfinished one when the run ends
    adaround = text.split("\n")[0].split("\r")[-1]
    assert adaround.startswith("adaround: 5/5 |") and "conv5 W4" in adaround and "<00:00" in adaround
    assert "phase 1: 1/3 |" in text.split("\n")[1]


def test_quiet_prints_nothing(cnn_path, tmp_path, capsys):
    assert main(["optimize", str(cnn_path), str(tmp_path / "o.onnx"), "--no-cache", "-q", "--target", "generic"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_the_api_takes_a_callback(cnn_path, tmp_path):
    events: list[tuple[str, int, int, str]] = []
    optimize(str(cnn_path), None, classic(calib=str(tmp_path / "calib.npz")), progress=lambda *e: events.append(e))
    stages = list(dict.fromkeys(stage for stage, *_ in events))
    assert stages == ["calibrate", "adaround", "phase 1"]
    for stage in stages:
        counts = [(done, total) for s, done, total, _ in events if s == stage]
        assert all(0 < done <= total for done, total in counts) and counts[-1][0] == counts[-1][1]
        assert [d for d, _ in counts] == sorted(d for d, _ in counts)
    # calibration: two float passes over the samples, one event per model run
    runs = [(done, total) for s, done, total, _ in events if s == "calibrate"]
    assert runs == [(i, len(runs)) for i in range(1, len(runs) + 1)] and len(runs) % 2 == 0

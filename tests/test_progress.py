"""Progress bars written into a log: rich draws a bar there only when it ends, so a bar also
prints its line every `LOG_EVERY_S` seconds."""

from __future__ import annotations

from types import SimpleNamespace

from hskcache import progress


def test_a_bar_in_a_log_prints_its_line_every_interval(monkeypatch, capsys):
    clock = iter([0.0, 10.0, 70.0, 100.0, 140.0])  # the bar's start, then one per advance
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(progress, "LOG_EVERY_S", 60.0)
    with progress.progress_bar("fit", total=4) as advance:
        for _ in range(4):
            advance(1, info="loss 0.5")
    lines = capsys.readouterr().out.splitlines()
    done = [line.split("fit")[1].split()[1] for line in lines]
    # 70 s after the start (2 done), 70 s after that (4 done), then rich's own last line
    assert done == ["2/4", "4/4", "4/4"] and all("loss 0.5" in line for line in lines)


def test_a_transfer_bar_in_a_log_prints_its_bytes_every_interval(monkeypatch, capsys):
    clock = iter([0.0, 61.0, 90.0])
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    with progress.bytes_bar("pull", total=2048) as advance:
        advance(1024)
        advance(1024)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "1.0/2.0 kB" in lines[0] and "2.0/2.0 kB" in lines[1]

"""daat.progress: the one rule for progress bars (ranks, TQDM_DISABLE, redraw period in logs)."""

import io

from daat import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_off_on_other_ranks_and_under_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress.bar(total=3, file=io.StringIO()).disable
    assert progress.bar(main=False, total=3, file=io.StringIO()).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress.bar(total=3, file=io.StringIO()).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not progress.bar(total=3, file=io.StringIO()).disable


def test_a_bar_writing_to_a_log_redraws_rarely(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log, terminal = io.StringIO(), Terminal()
    to_log, to_terminal = (
        progress.bar(total=1000, file=log),
        progress.bar(total=1000, file=terminal),
    )
    assert to_log.mininterval == progress.LOG_MININTERVAL_S
    assert to_terminal.mininterval < 1
    for _ in range(1000):
        to_log.update()
    to_log.close()
    assert log.getvalue().count("\r") <= 3  # the first draw and the final one, not 1000
    assert progress.bar(total=3, file=io.StringIO(), mininterval=0.5).mininterval == 0.5

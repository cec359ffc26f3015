"""``testbed claims`` on the command line: ``--workers`` and ``--cluster`` parsed and
checked as compare and sweep check them, and the claims' runs handed to the same batch
code (``run.run_batch`` -> ``run._run_batch``, the pool or the cluster) with them.

The real batch with two workers is the machine test's (tests/e2e/test_workers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import claims
from testbed.cli import main
from testbed.commands import run as run_cmd
from tests.support.small import small_scenario


class Handed(Exception):
    """Raised by the stand-in batch: what the claims command handed it."""


@pytest.fixture
def handed(monkeypatch) -> dict:
    got: dict = {}

    def batch(base: Path, jobs, title, command=None, workers=1, cluster=None):
        got.update(base=base, labels=[j.label for j in jobs], title=title,
                   command=command, workers=workers, cluster=cluster)
        raise Handed
    monkeypatch.setattr(run_cmd, "_run_batch", batch)
    return got


def test_claims_with_workers_hands_its_runs_to_the_batch_with_them(tmp_path, handed,
                                                                   monkeypatch):
    monkeypatch.setattr(run_cmd, "_require_root", lambda: None)
    (tmp_path / "small.yaml").write_text(small_scenario("claims-small"))
    with pytest.raises(Handed):
        main(["claims", str(tmp_path / "small.yaml"), "--repeat", "2", "--workers", "2",
              "--out", str(tmp_path / "out")])
    assert handed["workers"] == 2 and handed["cluster"] is None
    assert handed["command"] == "claims" and handed["base"] == tmp_path / "out"
    variants = [*claims.POLICIES, claims.BASELINE]
    assert handed["labels"] == [f"{v}#{k}" for k in (1, 2) for v in variants]
    assert handed["title"] == "claims-small: the article's claims, 2 runs each"


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers: must be at least 1 (runs at once), got 0"),
    (["--cluster", "10.77.0.1:8786"], "--cluster '10.77.0.1:8786': expected the scheduler's"),
    (["--cluster", "tcp://10.77.0.1:8786", "--workers", "2"],
     "--cluster with --workers 2: give one of them"),
    (["--repeat", "0"], "--repeat: must be at least 1, got 0"),
    (["--from", "somewhere", "--workers", "2"], "--from and --workers: --from reads a folder"),
    (["--from", "somewhere", "--cluster", "tcp://10.77.0.1:8786"],
     "--from and --cluster: --from reads a folder")])
def test_claims_options_are_one_line_errors_that_start_nothing(extra, message, tmp_path,
                                                               handed, capsys):
    out = tmp_path / "out"
    argv = ["claims", "baseline", *extra]
    assert main(argv if "--from" in extra else argv + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not handed

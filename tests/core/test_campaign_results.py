"""The stress campaigns kept in results/stress-<policy>/ (issue 14) read back consistently.

Each campaign's folder keeps what it found without its run folders (about 60 MiB a run,
each with its LUN image): ``stress.json`` and ``tried.ndjson`` (what the campaign judged),
``results.db`` (the results store rebuilt from the run folders before they were
removed) and ``runs.csv`` (its export). These tests check that the three agree, that
the database opens in pandas as docs/results.md says, and that every counterexample is a
scenario that loads with the policy and the claim's expectation.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd       # the results extra (scripts/setup.sh installs it)
import pytest

from testbed import claims
from testbed import scenario as scenario_mod
from testbed import store

ROOT = Path(__file__).resolve().parents[2] / "results"
CAMPAIGNS = sorted(ROOT.glob("stress-*"))


def tried(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "tried.ndjson").read_text().splitlines()]


def test_every_policy_has_its_campaign():
    assert {c.name.removeprefix("stress-") for c in CAMPAIGNS} == set(claims.POLICY_CLAIMS)


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: p.name)
def test_the_database_opens_in_pandas_and_agrees_with_what_the_campaign_judged(folder):
    with sqlite3.connect(folder / store.DB_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        runs = pd.read_sql("SELECT label, verdict, validity, policy, command FROM runs", db)
    doc = json.loads((folder / "stress.json").read_text())
    by_label = {t["label"]: t for t in tried(folder)}
    assert doc["counts"]["tried"] == len(by_label)
    assert set(runs.policy) == {doc["policy"]} and set(runs.command) == {"stress"}
    # every run with a summary is in the database, with the verdict the campaign judged
    summarised = {k for k, t in by_label.items() if t["status"] is not None}
    assert set(runs.label) == summarised
    for r in runs.itertuples():
        t = by_label[r.label]
        assert (r.verdict if isinstance(r.verdict, str) else None) == t["verdict"], r.label
        if r.validity == "invalid":     # a starved run's verdict is never evidence
            assert t["outcome"] in ("invalid", "no-verdict"), r.label


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: p.name)
def test_the_export_is_the_database(folder):
    csv = pd.read_csv(folder / "runs.csv")
    with sqlite3.connect(folder / store.DB_NAME) as db:
        runs = pd.read_sql("SELECT path, label, verdict FROM runs ORDER BY started, path", db)
    assert list(csv.label) == list(runs.label)
    assert list(csv.verdict.fillna("")) == list(runs.verdict.fillna(""))
    keys = {c.removeprefix("param.") for c in csv.columns if c.startswith("param.")}
    assert keys == set(json.loads((folder / "stress.json").read_text())["defaults"])


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: p.name)
def test_each_counterexample_is_a_scenario_of_the_policy_expecting_the_claim(folder):
    doc = json.loads((folder / "stress.json").read_text())
    claim = claims.POLICY_CLAIMS[doc["policy"]]
    files = sorted(folder.glob("counterexample-*.yaml"))
    assert len([f for f in files if not f.stem.endswith("-shrunk")]) == \
        len({Path(f["scenario_file"]).name for f in doc["counterexamples"]
             if f.get("scenario_file")})
    for f in files:
        sc = scenario_mod.load(str(f))
        assert sc.client.policy == doc["policy"] and sc.expected == claim.expect, f

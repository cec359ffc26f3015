"""The stress search's parts without runs: ranges checking, seeded sampling, shrinking,
and the campaign's judging and files on a stand-in for the orchestrator."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from testbed import claims, results
from testbed import scenario as scenario_mod
from testbed.cli import main
from testbed.commands.stress import parse_duration
from testbed.schema import SchemaError
from testbed.stress import campaign as campaign_mod
from testbed.stress import ranges as ranges_mod
from testbed.stress.ranges import Range
from testbed.stress.sampling import sample
from testbed.stress.shrink import shrink


@pytest.fixture(scope="module")
def contention() -> scenario_mod.Scenario:
    return scenario_mod.load("contention", ["client.policy=phillips-2005"])


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ranges.yaml"
    p.write_text(text)
    return p


# -- ranges ---------------------------------------------------------------------------------

def test_the_shipped_ranges_fit_the_contention_scenarios():
    for name in ("contention", "contention-none", "contention-gorman-3.6"):
        got = ranges_mod.load(ranges_mod.DEFAULT_RANGES, scenario_mod.load(name))
        assert "client.memory_mb" in got.keys and "topology.bulk_hosts" in got.keys


def test_range_mistakes_name_file_line_and_key(tmp_path, contention):
    p = write(tmp_path, "ranges:\n"
                        "  client.memory_mb: {min: 2, max: 64}\n"           # 2: below the schema's 4
                        "  client.memroy_mb: {min: 16, max: 64}\n"          # not a scenario key
                        "  topology.delay_ms: {min: 5, max: 1}\n"           # min > max
                        "  bulk.mode: {choices: [tcp, carrier-pigeon]}\n"   # not a bulk mode
                        "  client.workloads[7].kind: {choices: [writer]}\n"  # no such workload
                        "  client.policy: {choices: [none]}\n"              # --policy's job
                        "  client.dirty_ratio: {min: 10, max: fifty}\n")    # not a number
    with pytest.raises(SchemaError) as err:
        ranges_mod.load(p, contention)
    text = str(err.value)
    assert f"{p}:2: ranges.client.memory_mb.min: 2: client.memory_mb: 2 is below the minimum 4" in text
    assert f"{p}:3: ranges.client.memroy_mb: client.memroy_mb: no such key" in text
    assert f"{p}:4: ranges.topology.delay_ms.max: 1 is below min (5)" in text
    assert f"{p}:5: ranges.bulk.mode.choices[1]: 'carrier-pigeon': bulk.mode:" in text
    assert f"{p}:6: ranges.client.workloads[7].kind: client.workloads[7]: the scenario's list has 4" in text
    assert f"{p}:7: ranges.client.policy: a stress search does not vary this key" in text
    assert f"{p}:8: ranges.client.dirty_ratio.max: expected a number, got str 'fifty'" in text
    assert "Traceback" not in text


def test_a_range_of_the_wrong_type_for_its_key_is_refused(tmp_path, contention):
    p = write(tmp_path, "ranges:\n  client.memory_mb: {min: 16.5, max: 64}\n")
    with pytest.raises(SchemaError, match=rf"{p}:2: ranges.client.memory_mb.min: 16.5: "
                                          r"client.memory_mb: expected int"):
        ranges_mod.load(p, contention)


@pytest.mark.parametrize("text, where", [
    ("ranges: {}\n", ":1: ranges: give at least one key"),
    ("ranges:\n  client.memory_mb: {min: 16, max: 32, choices: [16]}\n",
     ":2: ranges.client.memory_mb.choices"),
    ("ranges:\n  client.memory_mb: {min: 16, max: 32, stepp: 4}\n",
     ":2: ranges.client.memory_mb.stepp: unknown key"),
    ("ranges:\n  client.memory_mb: {min: 16, max: 32, step: 0}\n",
     ":2: ranges.client.memory_mb.step: must be a number greater than 0"),
    ("ranges:\n  client.memory_mb: [16, 32]\n", ":2: ranges.client.memory_mb: expected a mapping"),
    ("ranges:\n  client..memory_mb: {min: 16, max: 32}\n",
     ":2: ranges.client..memory_mb: cannot read this key"),
    ("- just a list\n", ":1: a ranges file is a mapping"),
    ("ranges: {client.memory_mb: {min: 16\n", ":2: not valid YAML"),
])
def test_malformed_ranges_files(tmp_path, contention, text, where):
    p = write(tmp_path, text)
    with pytest.raises(SchemaError) as err:
        ranges_mod.load(p, contention)
    assert f"{p}{where}" in str(err.value), str(err.value)


def test_keys_reach_into_lists_and_slices(contention):
    data = contention.to_dict()
    got = ranges_mod.set_values(data, {"client.workloads[1:].rcvbuf_kb": 512,
                                       "client.workloads[0].kind": "writer"})
    assert [w["rcvbuf_kb"] for w in got["client"]["workloads"]] == [0, 512, 512, 512]
    assert got["client"]["workloads"][0]["kind"] == "writer"
    assert data["client"]["workloads"][1]["rcvbuf_kb"] == 2048      # the base is untouched
    assert ranges_mod.get_value(data, "client.workloads[*].kind") == "mmap_writer"


# -- sampling -------------------------------------------------------------------------------

def test_sampling_is_seeded_and_stays_inside_the_ranges(contention):
    rng = ranges_mod.load(ranges_mod.DEFAULT_RANGES, contention)
    def loads(seed: int) -> list[dict]:
        r = random.Random(seed)
        return [sample(rng, r) for _ in range(50)]

    b = loads(7)
    assert b == loads(7) and b != loads(8)                        # same seed, same loads
    for load in b:
        assert list(load) == rng.keys
        for key, r in rng.items:
            v = load[key]
            if r.choices is not None:
                assert v in r.choices
                continue
            assert r.min <= v <= r.max, (key, v)
            if r.integer:
                assert type(v) is int
            if r.step:
                k = (v - r.min) / r.step
                assert abs(k - round(k)) < 1e-9, (key, v)         # on the step's grid
        ranges_mod.build(contention.to_dict(), load)              # every draw is a valid scenario
    seen = {load["bulk.mode"] for load in b}
    assert seen == {"tcp", "http"}                                 # both choices come up


# -- shrinking ------------------------------------------------------------------------------

DEFAULTS = {"memory_mb": 64, "bulk_hosts": 3, "mode": "tcp", "delay_ms": 0.0, "rate": 16}
RANGES = {"memory_mb": Range(min=8, max=64), "bulk_hosts": Range(min=0, max=8),
          "mode": Range(choices=["tcp", "http", "udp"]), "delay_ms": Range(min=0.0, max=20.0, step=0.5),
          "rate": Range(min=1, max=64)}


def locks_up(load: dict) -> bool:
    """A stand-in for a run: 'locks up' when memory is at most 24 MiB with 5 or more bulk
    hosts; nothing else matters."""
    return load["memory_mb"] <= 24 and load["bulk_hosts"] >= 5


def test_the_shrinker_reaches_the_minimal_failing_load():
    start = {"memory_mb": 9, "bulk_hosts": 8, "mode": "udp", "delay_ms": 13.5, "rate": 50}
    calls = []

    def fails(load):
        calls.append(load)
        return locks_up(load)

    got = shrink(start, DEFAULTS, fails, RANGES, tries_per_key=10)
    assert got.converged
    assert got.load == {"memory_mb": 24, "bulk_hosts": 5, "mode": "tcp", "delay_ms": 0.0, "rate": 16}
    assert got.changed(DEFAULTS) == {"memory_mb": 24, "bulk_hosts": 5}
    assert locks_up(got.load)
    assert len(calls) == len({json.dumps(c, sort_keys=True) for c in calls})   # none tried twice
    assert [a.load for a in got.attempts] == calls


def test_the_shrinker_never_returns_a_passing_load():
    rnd = random.Random(4)
    for _ in range(200):
        start = {"memory_mb": rnd.randint(8, 64), "bulk_hosts": rnd.randint(0, 8),
                 "mode": rnd.choice(["tcp", "http", "udp"]),
                 "delay_ms": rnd.randrange(0, 41) / 2, "rate": rnd.randint(1, 64)}
        # a predicate with noise: some loads 'fail' for no reason a key explains
        flaky = {json.dumps(start, sort_keys=True)}

        def fails(load):
            return locks_up(load) or json.dumps(load, sort_keys=True) in flaky

        if not fails(start):
            continue
        got = shrink(start, DEFAULTS, fails, RANGES, tries_per_key=rnd.randint(1, 5))
        assert fails(got.load), (start, got.load)
        assert all(a.failed == fails(a.load) for a in got.attempts)


def test_the_shrinker_stops_when_told_and_keeps_the_last_failing_load():
    start = {"memory_mb": 9, "bulk_hosts": 8, "mode": "udp", "delay_ms": 13.5, "rate": 50}
    budget = iter(range(3))
    got = shrink(start, DEFAULTS, locks_up, RANGES, stop=lambda: next(budget, None) is None)
    assert not got.converged and locks_up(got.load)


def test_a_candidate_without_an_answer_is_not_taken():
    start = {"memory_mb": 9, "bulk_hosts": 8, "mode": "udp", "delay_ms": 13.5, "rate": 50}
    got = shrink(start, DEFAULTS, lambda load: load == start, RANGES)
    assert got.load == start and got.converged
    # None: the candidate could not be tried (out of time): not recorded, not taken
    got = shrink(start, DEFAULTS, lambda load: None, RANGES)
    assert got.load == start and got.attempts == []


# -- the campaign, with a stand-in for the orchestrator ----------------------------------------

class FakeOrchestrator:
    """Writes the summary.json a run would, with the verdict ``locks_up`` gives its load
    (the campaign reads it back through testbed.results, as it does a real run's)."""

    def __init__(self, scenario, out_dir, progress=None):
        self.sc, self.out = scenario, out_dir

    def run(self):
        self.out.mkdir(parents=True)
        verdict = "lockup" if self.sc.client.memory_mb <= 24 and self.sc.topology.bulk_hosts >= 4 \
            else "completed"
        (self.out / results.SUMMARY).write_text(json.dumps(
            {"scenario": self.sc.name, "policy": self.sc.client.policy, "verdict": verdict,
             "expected": self.sc.expected, "status": "finished", "duration_s": 1.0}))


def test_a_campaign_finds_confirms_shrinks_and_writes_a_loadable_counterexample(
        tmp_path, monkeypatch, contention):
    monkeypatch.setattr(campaign_mod, "Orchestrator", FakeOrchestrator)
    monkeypatch.setenv("TESTBED_RESULTS_DB", str(tmp_path / "results.db"))
    ranges = write(tmp_path, "ranges:\n  client.memory_mb: {min: 16, max: 64}\n"
                             "  topology.bulk_hosts: {min: 1, max: 5}\n"
                             "  topology.delay_ms: {min: 0.0, max: 20.0, step: 1.0}\n")
    out = tmp_path / "out"
    out.mkdir()
    base_file = scenario_mod.resolve("contention")
    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(campaign_mod.time, "monotonic", lambda: float(next(clock)))
    c = campaign_mod.Campaign(contention, base_file, ranges_mod.load(ranges, contention), out,
                              budget_s=6000, seed=5, tries_per_key=10,
                              echo=io.StringIO())
    status = c.run()
    printed = c.echo.getvalue()
    doc = json.loads((out / campaign_mod.SUMMARY).read_text())
    tried = [json.loads(line) for line in (out / campaign_mod.TRIED).read_text().splitlines()]
    assert doc["stopped_by"] == "budget" and doc["counts"]["tried"] == len(tried)
    assert doc["counts"]["counterexample"] == sum(t["outcome"] == "counterexample" for t in tried)
    assert status == 1 and doc["counts"]["counterexamples_confirmed"] >= 1
    first = doc["counterexamples"][0]
    assert first["shrunk"]["changed"] == {"client.memory_mb": 24, "topology.bulk_hosts": 4}
    text = Path(first["scenario_file"]).read_text()
    assert "extends: " in text and "workloads" not in text       # only what differs
    sc = scenario_mod.load(first["scenario_file"])
    assert (sc.client.memory_mb, sc.topology.bulk_hosts, sc.topology.delay_ms) == (24, 4, 0.0)
    assert sc.client.policy == "phillips-2005" and sc.expected == "completed"
    shrunk = {json.dumps(f["shrunk"]["load"], sort_keys=True): f["scenario_file"]
              for f in doc["counterexamples"] if f["confirmed"]}
    files = sorted(str(p) for p in out.glob("counterexample-*.yaml"))
    assert sorted(set(shrunk.values())) == files          # one file per distinct shrunk load
    assert len(files) == len(shrunk)
    runs = [json.dumps(t["load"], sort_keys=True) for t in tried if t["phase"] == "shrink"]
    assert len(runs) == len(set(runs))                    # no shrink candidate run twice
    for f in doc["counterexamples"]:                      # N fresh runs confirm each load
        if f["confirmed"] is not None:
            assert f["confirmation"]["asked"] == len(f["confirmation"]["runs"]) == 5
    confirms = [json.dumps(t["load"], sort_keys=True) for t in tried if t["phase"] == "confirm"]
    assert all(confirms.count(c) <= 5 for c in confirms)  # a load judged once is not re-run
    assert "-shrunk-confirm: the same load was judged before" in printed
    assert first["shrunk"]["confirmed"] is True and first["scenario_load"] == "shrunk"
    assert first["shrunk"]["confirmation"]["pvalue"] == pytest.approx(2 ** -5)
    batch = results.open_batch(out)                 # the folder is a batch of its runs
    assert [r.label for r in batch.runs()] == [t["label"] for t in tried if t["run_dir"]]
    assert "counterexample" in (out / campaign_mod.REPORT).read_text()


def test_budget_parsing_and_refusals(tmp_path, capsys):
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("45") == 45
    assert main(["stress", "contention", "--policy", "none", "--budget", "1m",
                 "--workers", "0", "--out", str(tmp_path / "w")]) == 1
    assert "--workers: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    bad = write(tmp_path, "ranges:\n  client.memory_mb: {min: 1, max: 8}\n")
    assert main(["stress", "contention", "--policy", "none", "--budget", "1m",
                 "--ranges", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: ranges.client.memory_mb.min" in err and not (tmp_path / "o").exists()


def test_each_policy_has_its_claim():
    assert set(claims.POLICY_CLAIMS) == set(claims.POLICIES)


@pytest.mark.cli
def test_ctrl_c_leaves_what_was_found_readable(tmp_path, monkeypatch, contention):
    calls = []

    class Interrupted(FakeOrchestrator):
        def run(self):
            calls.append(self.out)
            if len(calls) == 3:
                raise KeyboardInterrupt      # as the orchestrator does, once it has cleaned up
            super().run()

    monkeypatch.setattr(campaign_mod, "Orchestrator", Interrupted)
    monkeypatch.setenv("TESTBED_RESULTS_DB", str(tmp_path / "results.db"))
    ranges = write(tmp_path, "ranges:\n  client.memory_mb: {min: 40, max: 64}\n")
    out = tmp_path / "out"
    out.mkdir()
    c = campaign_mod.Campaign(contention, scenario_mod.resolve("contention"),
                              ranges_mod.load(ranges, contention), out, budget_s=3600, seed=1,
                              echo=io.StringIO())
    with pytest.raises(KeyboardInterrupt):
        c.run()
    doc = json.loads((out / campaign_mod.SUMMARY).read_text())
    assert doc["stopped_by"] == "interrupted"
    assert doc["counts"]["tried"] == 3 and doc["counts"]["holds"] == 2
    assert doc["counts"]["no-verdict"] == 1
    assert len((out / campaign_mod.TRIED).read_text().splitlines()) == 3
    assert "stopped by interrupted" in (out / campaign_mod.REPORT).read_text()


def memory_campaign(tmp_path, monkeypatch, contention, orchestrator, budget_s: float,
                    confirm=None, status: int = 0, memory: str = "{min: 16, max: 64}"):
    """A campaign over client.memory_mb with ``orchestrator`` standing in for the runs and
    a clock that moves 10 s a look; it must end with ``status``. Its folder and
    stress.json, and what it printed."""
    monkeypatch.setattr(campaign_mod, "Orchestrator", orchestrator)
    monkeypatch.setenv("TESTBED_RESULTS_DB", str(tmp_path / "results.db"))
    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(campaign_mod.time, "monotonic", lambda: float(next(clock)))
    ranges = write(tmp_path, f"ranges:\n  client.memory_mb: {memory}\n")
    out = tmp_path / "out"
    out.mkdir()
    echo = io.StringIO()
    c = campaign_mod.Campaign(contention, scenario_mod.resolve("contention"),
                              ranges_mod.load(ranges, contention), out, budget_s=budget_s,
                              seed=1, confirm=confirm, echo=echo)
    assert c.run() == status
    return out, json.loads((out / campaign_mod.SUMMARY).read_text()), echo.getvalue()


def scripted(verdicts):
    """An orchestrator whose runs give ``verdicts`` in turn (then 'completed')."""
    it = iter(verdicts)

    class Scripted(FakeOrchestrator):
        def run(self):
            self.out.mkdir(parents=True)
            (self.out / results.SUMMARY).write_text(json.dumps(
                {"scenario": self.sc.name, "policy": self.sc.client.policy,
                 "verdict": next(it, "completed"), "expected": "completed",
                 "status": "finished"}))
    return Scripted


def tried_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / campaign_mod.TRIED).read_text().splitlines()]


def test_a_counterexample_every_fresh_run_refutes_is_confirmed_with_its_pvalue(
        tmp_path, monkeypatch, contention):
    # the sample fails, then its 5 fresh runs; shrinking's candidates complete (the
    # scenario's memory, and every midpoint), so the sampled load is the one written
    out, doc, text = memory_campaign(tmp_path, monkeypatch, contention,
                                     scripted(["lockup"] * 6), budget_s=400, status=1)
    (found,) = doc["counterexamples"]
    conf = found["confirmation"]
    assert found["confirmed"] is True and conf["confirmed"] is True
    assert conf["outcomes"] == ["counterexample"] * 5 and conf["asked"] == 5
    assert [r["label"] for r in conf["runs"]] == [f"s001-confirm{i}" for i in range(1, 6)]
    assert conf["successes"] == 5 and conf["counted"] == 5            # the sample not counted
    assert conf["pvalue"] == pytest.approx(2 ** -5) == conf["test"]["pvalue"]
    assert "more than 0.5 of runs" in conf["hypothesis"]
    assert "5 of 5 fresh runs refute the claim" in conf["text"] and "p = 0.031" in conf["text"]
    assert "supported: confirmed" in conf["text"]
    assert doc["confirm"]["runs"] == 5 and doc["confirm"]["cannot_confirm"] is None
    assert doc["counts"]["counterexamples_confirmed"] == 1
    tried = tried_of(out)
    assert [t["phase"] for t in tried[:6]] == ["sample"] + ["confirm"] * 5
    assert all(Path(t["run_dir"]).is_dir() for t in tried[:6])       # each its own run folder
    assert found["shrunk"]["load"] == found["load"] and found["scenario_load"] == "shrunk"
    assert "Confirmed: 5 of 5 fresh runs" in Path(found["scenario_file"]).read_text()
    assert "5 of 5 fresh runs refute the claim" in text
    assert "p = 0.031" in (out / campaign_mod.REPORT).read_text()


def test_a_mixed_confirmation_is_not_confirmed_and_not_shrunk(tmp_path, monkeypatch,
                                                              contention):
    # the sample fails; of the 5 fresh runs 4 refute, 1 holds: p = 6/32
    out, doc, text = memory_campaign(
        tmp_path, monkeypatch, contention,
        scripted(["lockup", "lockup", "completed", "lockup", "lockup", "lockup"]),
        budget_s=1000)
    (found,) = doc["counterexamples"]
    conf = found["confirmation"]
    assert found["confirmed"] is False and conf["successes"] == 4 and conf["counted"] == 5
    assert conf["outcomes"] == ["counterexample", "holds", "counterexample", "counterexample",
                                "counterexample"]
    assert conf["pvalue"] == pytest.approx(6 / 32)
    assert "not supported: not confirmed" in conf["text"]
    assert "shrunk" not in found and not list(out.glob("counterexample-*.yaml"))
    assert not any(t["phase"] == "shrink" for t in tried_of(out))
    assert "4 of 5 fresh runs refute the claim" in (out / campaign_mod.REPORT).read_text()
    assert doc["counts"]["counterexamples_not_confirmed"] == 1


def test_the_sampling_run_is_not_counted(tmp_path, monkeypatch, contention):
    # 4 fresh runs that all refute give p = 1/16, not significant; counting the sampling
    # run that picked the load would make it 5 of 5, p = 1/32, and confirm it
    out, doc, text = memory_campaign(tmp_path, monkeypatch, contention,
                                     scripted(["lockup"] * 5), budget_s=1000, confirm=4)
    (found,) = doc["counterexamples"]
    conf = found["confirmation"]
    assert conf["successes"] == 4 and conf["counted"] == 4 and found["confirmed"] is False
    assert conf["pvalue"] == pytest.approx(1 / 16)
    want = "4 runs cannot confirm at 95% confidence: at least 5 are needed"
    assert want in conf["text"] and want in doc["confirm"]["cannot_confirm"]
    assert f"warning: {want}" in text
    assert want in (out / campaign_mod.REPORT).read_text()


@pytest.mark.parametrize("cut", ["budget", "ctrl-c"])
def test_a_confirmation_cut_short_is_not_judged(tmp_path, monkeypatch, contention, cut):
    # the sample fails, two fresh runs refute, then the budget ends or Ctrl-C comes
    runs = []

    class Cut(scripted(["lockup"] * 6)):
        def run(self):
            runs.append(self.out)
            if len(runs) == 4:
                raise KeyboardInterrupt     # as the orchestrator does, once it has cleaned up
            super().run()

    if cut == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            memory_campaign(tmp_path, monkeypatch, contention, Cut, budget_s=1000)
        out = tmp_path / "out"
        doc = json.loads((out / campaign_mod.SUMMARY).read_text())
    else:
        monkeypatch.setattr(campaign_mod.Campaign, "fits",
                            lambda self, sc: len(self.tried) < 3)
        out, doc, _ = memory_campaign(tmp_path, monkeypatch, contention, Cut, budget_s=1000)
    (found,) = doc["counterexamples"]
    conf = found["confirmation"]
    assert found["confirmed"] is None and conf["test"] is None and conf["pvalue"] is None
    assert conf["outcomes"] == ["counterexample"] * 2
    assert conf["text"] == "not judged: 2 of 5 fresh runs done before the campaign ended"
    assert doc["counts"]["counterexamples_not_judged"] == 1
    assert not list(out.glob("counterexample-*.yaml"))


class FlakyBelow40(FakeOrchestrator):
    """Locks up at 24 MiB or less every time; above that, up to 40 MiB, only on a load's
    first run (what a shrink candidate gets): the shrunk load fails once, not again."""

    seen: dict = {}

    def run(self):
        self.out.mkdir(parents=True)
        m = self.sc.client.memory_mb
        n = FlakyBelow40.seen[m] = FlakyBelow40.seen.get(m, 0) + 1
        verdict = "lockup" if m <= 24 or (m <= 40 and n == 1) else "completed"
        (self.out / results.SUMMARY).write_text(json.dumps(
            {"scenario": self.sc.name, "policy": self.sc.client.policy, "verdict": verdict,
             "expected": "completed", "status": "finished"}))


def test_a_shrunk_load_its_fresh_runs_do_not_confirm_leaves_the_sampled_load(
        tmp_path, monkeypatch, contention):
    FlakyBelow40.seen = {}
    out, doc, text = memory_campaign(tmp_path, monkeypatch, contention, FlakyBelow40,
                                     budget_s=600, status=1, memory="{min: 16, max: 20}")
    first = doc["counterexamples"][0]
    assert first["confirmed"] is True
    shrunk = first["shrunk"]
    assert 24 < shrunk["load"]["client.memory_mb"] <= 40          # it failed once
    assert shrunk["confirmed"] is False and first["scenario_load"] == "sampled"
    assert shrunk["confirmation"]["successes"] == 0
    assert [r["label"] for r in shrunk["confirmation"]["runs"]] == \
        [f"s001-shrunk-confirm{i}" for i in range(1, 6)]
    sc = scenario_mod.load(first["scenario_file"])
    assert sc.client.memory_mb == first["load"]["client.memory_mb"] <= 20
    assert "shrunk, not confirmed" in (out / campaign_mod.REPORT).read_text()
    assert "shrunk, not confirmed" in text


class LocksUpAt24(FakeOrchestrator):
    """Locks up at 24 MiB or less, every time; completes above."""

    def run(self):
        self.out.mkdir(parents=True)
        verdict = "lockup" if self.sc.client.memory_mb <= 24 else "completed"
        (self.out / results.SUMMARY).write_text(json.dumps(
            {"scenario": self.sc.name, "policy": self.sc.client.policy, "verdict": verdict,
             "expected": "completed", "status": "finished"}))


def test_a_load_judged_before_is_not_run_again(tmp_path, monkeypatch, contention):
    # every sample is the same load: the second counterexample reuses the first's
    # confirmations and shrink answers, and runs nothing of its own but its sample
    out, doc, text = memory_campaign(tmp_path, monkeypatch, contention, LocksUpAt24,
                                     budget_s=1500, status=1, memory="{choices: [20]}")
    first, second = doc["counterexamples"][:2]
    assert first["confirmed"] is True and second["confirmed"] is True
    assert second["confirmation"] == first["confirmation"]
    assert second["shrunk"]["load"] == first["shrunk"]["load"] != first["load"]
    assert second["shrunk"]["attempts"] == 0 and second["shrunk"]["confirmed"] is True
    assert second["scenario_file"] == first["scenario_file"]
    labels = [t["label"] for t in tried_of(out)]
    assert "s002" in labels and not any(lb.startswith("s002-") for lb in labels)
    assert "Shrunk without a new run" in (out / campaign_mod.REPORT).read_text()
    assert "s002-confirm: the same load was judged before" in text


@pytest.mark.parametrize("n", ["0", "-2"])
def test_confirm_below_one_is_refused_before_anything_starts(tmp_path, capsys, n):
    assert main(["stress", "contention", "--policy", "none", "--budget", "1m",
                 "--confirm", n, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"--confirm: must be at least 1" in err and f"got {n}" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_the_default_confirm_is_the_fewest_runs_that_can_confirm(capsys):
    from testbed import stats
    n = campaign_mod.confirm_runs(None)
    assert n == stats.runs_to_support(claims.P0) == 5
    assert stats.rate_test(n, n, campaign_mod.P0).supported
    assert not stats.rate_test(n - 1, n - 1, campaign_mod.P0).supported
    assert campaign_mod.cannot_confirm(n) is None
    assert "p = 0.12" in campaign_mod.cannot_confirm(3)             # 3 of 3: 1/8
    with pytest.raises(SystemExit):
        main(["stress", "--help"])
    assert f"{n} at the claims' H0 rate 1/2" in " ".join(capsys.readouterr().out.split())


def test_a_run_past_a_fidelity_bound_is_no_counterexample(tmp_path, monkeypatch, contention):
    """A starved run's lockup (testbed.fidelity: validity invalid) is not evidence."""
    class Starved(FakeOrchestrator):
        def run(self):
            self.out.mkdir(parents=True)
            (self.out / results.SUMMARY).write_text(json.dumps(
                {"scenario": self.sc.name, "policy": self.sc.client.policy, "verdict": "lockup",
                 "expected": "completed", "status": "finished", "validity": "invalid",
                 "fidelity": {"invalid_by": ["client wake-up lag max 1500 ms > 1000 ms"]}}))

    out, doc, _ = memory_campaign(tmp_path, monkeypatch, contention, Starved, budget_s=1000)
    tried = [json.loads(line) for line in (out / campaign_mod.TRIED).read_text().splitlines()]
    assert tried and all(t["outcome"] == "invalid" for t in tried)
    assert doc["counts"]["invalid"] == len(tried) == doc["counts"]["runs"]
    assert "past a fidelity bound (client wake-up lag" in tried[0]["detail"]
    assert doc["counts"]["counterexample"] == 0 and not doc["counterexamples"]


class LongShrunkConfirm(LocksUpAt24):
    """As LocksUpAt24, but the first fresh run of a shrunk load takes the rest of the
    budget: the campaign ends before the shrunk load is judged."""

    def run(self):
        super().run()
        if "-shrunk-confirm" in self.out.name:
            campaign_mod.time.monotonic = lambda: 1e9    # undone by monkeypatch


def test_a_shrunk_load_the_budget_left_unjudged_is_written_beside_as_unconfirmed(
        tmp_path, monkeypatch, contention):
    out, doc, text = memory_campaign(tmp_path, monkeypatch, contention, LongShrunkConfirm,
                                     budget_s=1500, status=1, memory="{choices: [20]}")
    first = doc["counterexamples"][0]
    shrunk = first["shrunk"]
    assert first["confirmed"] is True and shrunk["confirmed"] is None
    assert shrunk["load"]["client.memory_mb"] != first["load"]["client.memory_mb"]
    assert shrunk["confirmation"]["text"].startswith("not judged: 1 of 5")
    # the scenario file holds the sampled, confirmed load; the shrunk one is beside it
    assert scenario_mod.load(first["scenario_file"]).client.memory_mb == 20
    assert first["shrunk_file"] == str(out / "counterexample-1-shrunk.yaml")
    head = Path(first["shrunk_file"]).read_text()
    assert "NOT CONFIRMED" in head and "--policies phillips-2005 --repeat 5" in head
    sc = scenario_mod.load(first["shrunk_file"])
    assert sc.client.memory_mb == shrunk["load"]["client.memory_mb"]
    assert sc.client.policy == "phillips-2005" and sc.expected == "completed"
    assert f"-> {first['shrunk_file']} (the shrunk load, to confirm)" in text
    assert "counterexample-1-shrunk.yaml" in (out / campaign_mod.REPORT).read_text()


def test_a_confirmed_shrunk_load_is_not_written_twice(tmp_path, monkeypatch, contention):
    out, doc, _ = memory_campaign(tmp_path, monkeypatch, contention, LocksUpAt24,
                                  budget_s=1500, status=1, memory="{choices: [20]}")
    first = doc["counterexamples"][0]
    assert first["shrunk"]["confirmed"] is True and first["shrunk_file"] is None
    assert not list(out.glob("counterexample-*-shrunk.yaml"))

"""Policy files (``client.policy: ./mypolicy.py``, lab 6): loaded and checked at scenario load.

A good file loads from the scenario's folder (or the current one for ``--set``) and
runs on its declared era; every broken one is a SchemaError naming the policy file and
the line, never a traceback, and a run with it starts nothing. A run keeps a copy of
the file, and its summary and report name that copy's SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
from pathlib import Path

import pytest

from testbed import scenario
from testbed.commands import run as run_cmd
from testbed.mm.era import LINUX_2_6_13, LINUX_3_6
from testbed.mm.manager import MemoryManager
from testbed.mm.policy import make_policy
from testbed.mm.policy import loader
from testbed.mm.policy.loader import is_policy, is_policy_file, label, load_policy_file
from testbed.orchestrator import Orchestrator
from testbed.report.html import run_page
from testbed.report.summary import policy_file
from testbed.schema import SchemaError

HEAD = ("from testbed.mm.policy.base import Policy\n"
        "from testbed.mm.skbuff import DropReason\n\n\n")
GOOD = HEAD + ("class Mine(Policy):\n"
               "    name = 'mine'\n"
               "\n"
               "    def netdev_reserve_pages(self, dev):\n"
               "        return self.reserve_estimate(dev)\n"
               "\n"
               "    def sk_filter(self, skb, sk, ethertype):\n"
               "        return None if sk is None or sk.memalloc else DropReason.NOT_MEMALLOC\n")
SCENARIO = ("name: s\nclient:\n  memory_mb: 16\n  policy: {policy}\n"
            "  workloads: [{{kind: writer}}]\n")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_good_file_loads_with_the_2005_era_by_default(tmp_path):
    pf = load_policy_file(write(tmp_path / "mine.py", GOOD))
    assert pf.cls.__name__ == "Mine" and pf.era is LINUX_2_6_13 and pf.cls.era is LINUX_2_6_13
    assert pf.sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
    assert pf.record() == {"name": "mine.py", "class": "Mine", "era": "2.6.13",
                           "sha256": pf.sha256}
    policy = make_policy(str(tmp_path / "mine.py"), rx_reserve=20)
    mm = MemoryManager(4096, policy=policy, rx_reserve=20)
    dev = mm.register_netdev("eth0")
    assert dev.reserve_pages == policy.reserve_estimate(dev) > 0     # its hook ran
    assert is_policy(policy, str(tmp_path / "mine.py")) and not is_policy(policy, "mine")
    assert is_policy(make_policy("none"), "none") and not is_policy(make_policy("none"), "x.py")
    assert is_policy_file("./mine.py") and not is_policy_file("gorman-3.6")
    assert label(str(tmp_path / "mine.py")) == "mine.py" and label("none") == "none"


@pytest.mark.parametrize("era, profile", [("'3.6'", LINUX_3_6), ("LINUX_3_6", LINUX_3_6),
                                          ("'2.6.13'", LINUX_2_6_13)])
def test_the_era_is_a_kernel_the_testbed_models(tmp_path, era, profile):
    text = GOOD.replace("    name = 'mine'\n", f"    name = 'mine'\n    era = {era}\n")
    text = "from testbed.mm.era import LINUX_3_6\n" + text
    assert load_policy_file(write(tmp_path / "e.py", text)).era is profile


@pytest.mark.parametrize("builtin", ["Phillips2005", "Gorman36", "NonePolicy"])
def test_a_file_may_build_on_a_built_in_policy(tmp_path, builtin):
    """Only the file's own class counts; the built-in it extends passes the same trial."""
    text = (f"from testbed.mm.policy import {builtin}\n\n\nclass Mine({builtin}):\n"
            f"    name = 'mine'\n")
    pf = load_policy_file(write(tmp_path / "b.py", text))
    assert pf.cls.__name__ == "Mine" and pf.era is pf.cls.__mro__[1].era


def test_a_scenario_names_the_file_relative_to_itself(tmp_path, monkeypatch):
    write(tmp_path / "lab/mine.py", GOOD)
    s = scenario.load(write(tmp_path / "lab/s.yaml", SCENARIO.format(policy="./mine.py")))
    assert s.client.policy == str(tmp_path / "lab/mine.py")
    monkeypatch.chdir(tmp_path / "lab")      # --set: from the current folder
    other = write(tmp_path / "elsewhere/o.yaml", SCENARIO.format(policy="none"))
    s = scenario.load(other, ["client.policy=mine.py"])
    assert s.client.policy == str(tmp_path / "lab/mine.py")


# (policy file text, the line the error names, what it says)
BAD = {
    "syntax": (HEAD + "class P(Policy)\n    pass\n", 5, "not valid Python"),
    "raises while loading": (HEAD + "x = 1\nraise RuntimeError('no')\n", 6,
                             "loading the policy file raised RuntimeError: no"),
    "no subclass": (HEAD + "class P:\n    pass\n", 1, "defines no subclass of Policy"),
    "two subclasses": (HEAD + "class A(Policy):\n    pass\n\n\nclass B(Policy):\n    pass\n",
                       9, "defines 2 subclasses of Policy, A (line 5), B (line 9)"),
    "wrong signature": (HEAD + "class P(Policy):\n    def sk_filter(self, skb):\n"
                               "        return None\n", 6,
                        "P.sk_filter(self, skb) takes other arguments than its caller passes"),
    "not a method": (HEAD + "class P(Policy):\n    sk_filter = 3\n", 5, "must be a method"),
    "a generator": (HEAD + "class P(Policy):\n    def sk_filter(self, skb, sk, ethertype):\n"
                           "        yield None\n", 6, "not be a coroutine or a generator"),
    "hook raises when tried": (HEAD + "class P(Policy):\n    def netdev_reserve_pages(self, dev):\n"
                                      "        return 1 // 0\n", 7,
                               "trying the policy, P.netdev_reserve_pages raised "
                               "ZeroDivisionError"),
    "constructor raises": (HEAD + "class P(Policy):\n    def __init__(self, **kw):\n"
                                  "        raise ValueError('bad knob')\n", 7,
                           "trying the policy, P() raised ValueError: bad knob"),
    "hook returns no page count": (HEAD + "class P(Policy):\n"
                                          "    def storage_rx_mark(self, dev):\n"
                                          "        return None\n", 6,
                                   "P.storage_rx_mark must return a number of pages"),
    "negative reserve": (HEAD + "class P(Policy):\n    def netdev_reserve_pages(self, dev):\n"
                                "        return -5\n", 6,
                         "P.netdev_reserve_pages must return a number of pages"),
    "takes the lock its caller holds": (
        HEAD + "class P(Policy):\n    def rx_alloc_failed(self, dev, length, pages):\n"
               "        with self.mm.lock:\n            return DropReason.NOMEM\n", 7,
        "trying the policy, P.rx_alloc_failed raised RuntimeError: the memory manager's "
        "lock is already held"),
    "refill returns neither skb nor reason": (
        HEAD + "class P(Policy):\n    def rx_alloc_failed(self, dev, length, pages):\n"
               "        return None\n", 6,
        "P.rx_alloc_failed must return an Skb or a DropReason"),
    "unknown era": (HEAD + "class P(Policy):\n    name = 'p'\n    era = '2.4'\n", 7,
                    "P.era must be a kernel the testbed models (2.6.13, 3.6"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_broken_file_is_an_error_naming_file_and_line(tmp_path, case):
    text, line, says = BAD[case]
    path = write(tmp_path / "bad.py", text)
    sc = write(tmp_path / "s.yaml", SCENARIO.format(policy="bad.py"))
    with pytest.raises(SchemaError) as exc:
        scenario.load(sc)
    [problem] = exc.value.problems
    assert (problem.file, problem.line, problem.key) == (str(path), line, "client.policy")
    assert says in problem.message, problem.message
    assert str(exc.value).startswith(f"{path}:{line}: client.policy: ")
    assert "Traceback" not in str(exc.value)


def test_a_missing_or_unreadable_file_names_the_scenario_line(tmp_path):
    sc = write(tmp_path / "s.yaml", SCENARIO.format(policy="./nope.py"))
    with pytest.raises(SchemaError) as exc:
        scenario.load(sc)
    assert str(exc.value) == (f"{sc}:4: client.policy: ./nope.py: no such policy file "
                              f"(looked for {tmp_path / 'nope.py'})")
    write(tmp_path / "latin.py", "# caf\xe9\n").write_bytes(b"x = 1\n# caf\xe9\n")
    with pytest.raises(SchemaError, match=r"latin\.py:2: client\.policy: .* not UTF-8"):
        scenario.load(write(tmp_path / "t.yaml", SCENARIO.format(policy="latin.py")))


def test_a_misspelt_name_still_lists_the_choices():
    with pytest.raises(SchemaError, match=r"'philips-2005' is not one of none, .*gorman-3\.6, "
                                          r"nor a policy file \(a path ending in \.py\) "
                                          r"\(did you mean 'phillips-2005'\?\)"):
        scenario.load(scenario.resolve("spoof"), ["client.policy=philips-2005"])


def test_a_run_with_a_broken_policy_starts_nothing(tmp_path, monkeypatch):
    write(tmp_path / "bad.py", BAD["hook raises when tried"][0])
    sc = write(tmp_path / "s.yaml", SCENARIO.format(policy="bad.py"))
    started = []
    monkeypatch.setattr(run_cmd, "Orchestrator", lambda *a, **k: started.append(a))
    args = argparse.Namespace(scenario=str(sc), overrides=[], backend=None,
                              out=tmp_path / "runs/x", live=False, live_port=None)
    with pytest.raises(SchemaError, match=r"bad\.py:7: client\.policy: trying the policy"):
        run_cmd.cmd_run(args)
    assert started == [] and not (tmp_path / "runs").exists()


def test_a_run_keeps_a_copy_and_its_summary_names_the_sha256(tmp_path):
    write(tmp_path / "lab/mine.py", GOOD)
    s = scenario.load(write(tmp_path / "lab/s.yaml", SCENARIO.format(policy="./mine.py")))
    run_dir = tmp_path / "run"
    orch = Orchestrator(s, out_dir=run_dir)
    as_written = orch._keep_policy_file(run_dir)
    copy = run_dir / "policy/mine.py"
    assert copy.read_text() == GOOD and orch.scenario.client.policy == str(copy)
    assert as_written.client.policy == "policy/mine.py"
    (run_dir / "scenario.yaml").write_text(scenario.dump(as_written))
    assert scenario.load(run_dir / "scenario.yaml").client.policy == str(copy)   # reproducible
    record = policy_file(run_dir, orch.scenario.client.policy)
    sha = hashlib.sha256(GOOD.encode()).hexdigest()
    assert record == {"name": "mine.py", "path": "policy/mine.py", "sha256": sha}
    page = run_page({"policy": "mine.py", "policy_file": record}, [], [])
    assert f"policy/mine.py, sha256 <code>{sha}</code>" in page
    assert json.loads(json.dumps(record)) == record


def test_compare_labels_a_policy_file_by_its_name(tmp_path, monkeypatch):
    write(tmp_path / "mine.py", GOOD)
    monkeypatch.chdir(tmp_path)          # --policies: files from the current folder
    jobs = run_cmd.compare_jobs("spoof", ["./mine.py", "none"], [], 1)
    assert [j.label for j in jobs] == ["mine.py", "none"]
    assert jobs[0].scenario.client.policy == str(tmp_path / "mine.py")
    with pytest.raises(SchemaError, match=r"nope\.py: no such policy file"):
        run_cmd.compare_jobs("spoof", ["nope.py"], [], 1)


@pytest.mark.parametrize("text, lines", [
    ("x = 0\nwhile True:\n    x += 1\n", (2, 3)),                       # the module itself
    (HEAD + "class P(Policy):\n    def storage_rx_mark(self, dev):\n"
            "        while True:\n            pass\n", (7, 8)),         # a hook, when tried
])
def test_an_endless_loop_is_an_error_naming_its_line_not_a_hang(tmp_path, monkeypatch, text, lines):
    monkeypatch.setattr(loader, "LOAD_LIMIT_S", 0.5)
    path = write(tmp_path / "loop.py", text)
    with pytest.raises(SchemaError) as exc:
        scenario.load(write(tmp_path / "s.yaml", SCENARIO.format(policy="loop.py")))
    [problem] = exc.value.problems
    assert problem.file == str(path) and problem.line in lines    # the loop's test or body
    assert problem.message == ("loading and trying the policy file did not finish within "
                               "0.5 s (an endless loop?)")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)     # the alarm is off again

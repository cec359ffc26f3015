"""Grader of lab 6 (design your own policy): one test per check, run by `testbed lab check 6`.

The student's policy is ``mypolicy.py`` in the work folder: not the starter the lab
hands out (the file next to this grader). The grader loads it with the testbed's own
loader (the checks a run makes before it starts), and reads the two
runs the handout makes with it, ``runs/flood`` (the udp-flood load) and ``runs/spoof``
(the spoof load). A run counts only if it ran this very file: the SHA-256 of the copy it
kept (``policy_file`` in its summary) is the SHA-256 of the file handed in. A hand-in
archive (``testbed lab submit``) holds the answers and the run folders: there the file
handed in is the copy ``runs/flood`` kept, and ``runs/spoof`` must have run the same. The policy's
claims are then checked on those runs (both complete; no storage frame dropped, received
or sent, during the flood; no receive buffer from the reserve during the spoofed run),
and the answers against the same runs and the key. No message names a figure.

The flood takes free memory to zero (lab 2's machine), so a policy is judged under
pressure there: the vanilla kernel's starter loses hundreds of the initiator's ACKs
(``GFP_ATOMIC`` on transmit) and fails; a reserve sized for the link keeps them
(instructor/labs/06-your-own-policy/README.md has the calibration). The spoofed load stays
above the ``GFP_ATOMIC`` floor: a policy that hands out reserve there does so where
nothing needed it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from testbed.grading import (Answers, CheckFailed, Key, RunFolder, agrees, expect,
                             expect_finished, keyed_choice, same)
from testbed.mm.policy.loader import RUN_FOLDER_DIR, PolicyFile, load_policy_file
from testbed.schema import SchemaError

POLICY = "mypolicy.py"
STARTER = Path(__file__).resolve().parent / POLICY      # the file `testbed lab start 6` gives
FLOOD, SPOOF = "runs/flood", "runs/spoof"
KEPT = f"{RUN_FOLDER_DIR}/{POLICY}"          # the copy a run keeps of the file it ran
ERAS = ("2.6.13", "3.6")


@pytest.fixture(scope="module")
def policy(work: Path) -> PolicyFile:
    path = work / POLICY
    if not path.is_file() and (work / FLOOD / KEPT).is_file():
        path = work / FLOOD / KEPT      # a hand-in archive: the runs carry the file they ran
    expect(path.is_file(), f"there is no {POLICY} in your work folder: step 1 writes it, "
           f"before the runs")
    try:
        policy = load_policy_file(path)
    except SchemaError as exc:
        raise CheckFailed(f"{POLICY} does not load, so no run can use it: "
                          f"{exc.problems[0]}") from None
    starter = hashlib.sha256(STARTER.read_bytes()).hexdigest() if STARTER.is_file() else None
    expect(policy.sha256 != starter, f"{POLICY} is still the file the lab gave you: step 1 "
           f"asks you to write your policy in it before the runs")
    return policy


def of_this_policy(run: RunFolder, policy: PolicyFile, step: str) -> RunFolder:
    """``run``, if it ran the file handed in (the copy it kept has the same SHA-256)."""
    expect_finished(run, step)
    kept = run.summary.get("policy_file") or {}
    expect(bool(kept), f"{run.name} did not run a policy file: {step} runs "
           f"{Path(run.name).name}.yaml as given, whose client.policy is ./{POLICY}")
    expect(kept.get("sha256") == policy.sha256,
           f"{run.name} ran another version of {POLICY} than the one in your work folder: "
           f"hand in the runs of steps 2 and 3 made with the file you hand in",
           f"run's copy {kept.get('sha256')}, handed in {policy.sha256}")
    on_disk = run.path / str(kept.get("path"))
    expect(on_disk.is_file() and hashlib.sha256(on_disk.read_bytes()).hexdigest() == kept["sha256"],
           f"{run.name}/{kept.get('path')} is missing or not the file the run kept: hand in "
           f"the run folder as the run left it")
    return run


@pytest.fixture(scope="module")
def flood(run_folder, policy: PolicyFile) -> RunFolder:
    return of_this_policy(run_folder(FLOOD), policy, "step 2")


@pytest.fixture(scope="module")
def spoof(run_folder, policy: PolicyFile) -> RunFolder:
    return of_this_policy(run_folder(SPOOF), policy, "step 3")


def storage_drops(run: RunFolder) -> int:
    """The storage flow's frames dropped, received and sent."""
    return run.drops("memalloc") + run.tx_drops("memalloc")


def reserve_peak(run: RunFolder) -> int:
    """The most receive buffers from the reserve out at once (``reserve`` of the samples)."""
    return max(sum((s.get("reserve") or {}).values()) for s in run.samples)


@pytest.mark.points(2)
def test_your_policy_loads(policy: PolicyFile) -> None:
    """mypolicy.py is yours and loads: one subclass of Policy, hooks with their callers'
    arguments, a known era."""


@pytest.mark.points(1)
def test_the_runs_are_of_your_policy(flood: RunFolder, spoof: RunFolder) -> None:
    """runs/flood and runs/spoof ran the mypolicy.py you hand in (the same SHA-256)."""


@pytest.mark.points(1)
def test_the_flood_completes(flood: RunFolder) -> None:
    """Your policy completes the writeback under the flood."""
    expect(flood.verdict == "completed", f"{flood.name} did not complete: read its verdict "
           f"and reasons in {flood.name}/report.html, and what your hooks did to the storage "
           f"flow")


@pytest.mark.points(2)
def test_no_storage_frame_dropped_in_the_flood(flood: RunFolder) -> None:
    """No storage frame was dropped, received or sent, while the flood ran."""
    expect(storage_drops(flood) == 0,
           f"{flood.name} dropped storage frames (drops.memalloc received, drops.tx.memalloc "
           f"sent): your policy does not keep the storage flow's frames when the flood "
           f"competes for memory",
           f"{flood.drops('memalloc')} received and {flood.tx_drops('memalloc')} sent")


@pytest.mark.points(1)
def test_the_spoofed_run_completes(spoof: RunFolder) -> None:
    """Your policy completes the writeback while forged storage frames arrive."""
    expect(spoof.verdict == "completed", f"{spoof.name} did not complete: read its verdict "
           f"and reasons in {spoof.name}/report.html")


@pytest.mark.points(2)
def test_forged_frames_get_no_reserve(spoof: RunFolder) -> None:
    """No receive buffer came from the reserve while the forged frames arrived."""
    peak = reserve_peak(spoof)
    expect(peak == 0, f"{spoof.name} had receive buffers from the reserve out "
           f"(reserve in client.ndjson): frames your hooks cannot tell from forged ones took "
           f"reserve memory where the load did not need it", f"peak {peak} buffers")


@pytest.mark.points(1)
def test_your_policy_era(policy: PolicyFile, answers: Answers) -> None:
    """The era you name is the one your policy runs on."""
    same(answers.choice("policy_era", ERAS), policy.era.kernel,
         f"policy_era: not the kernel {POLICY} declares (its era attribute; 2.6.13 when it "
         f"declares none)")


@pytest.mark.points(1)
def test_flood_storage_drops(flood: RunFolder, answers: Answers) -> None:
    """The storage frames dropped during the flood are your run's count."""
    same(answers.integer("flood_storage_drops"), storage_drops(flood),
         f"flood_storage_drops: not drops.memalloc.total + drops.tx.memalloc.total of "
         f"{flood.name} (exactly)")


@pytest.mark.points(1)
def test_flood_other_drops(flood: RunFolder, answers: Answers) -> None:
    """The other traffic's drops during the flood agree with your run (within 2 %)."""
    agrees(answers.number("flood_other_drops"), flood.drops("other"),
           "frames of other traffic dropped (flood_other_drops)",
           f"drops.other.total of {flood.name}", rel=0.02, abs_=2)


@pytest.mark.points(1)
def test_spoof_reserve_peak(spoof: RunFolder, answers: Answers) -> None:
    """The most reserve buffers out in the spoofed run is your run's."""
    same(answers.integer("spoof_reserve_peak"), reserve_peak(spoof),
         f"spoof_reserve_peak: not the largest reserve of {spoof.name}/client.ndjson "
         f"(summed over the interfaces, exactly)")


@pytest.mark.points(2)
def test_the_first_hook_with_the_socket(answers: Answers, key: Key) -> None:
    """Your statement on which hook knows a frame's socket is the one the hooks support."""
    keyed_choice(answers, key, "first_hook_with_the_socket", ("a", "b", "c", "d"),
                 "read each hook's arguments in testbed/mm/policy/base.py, and when its caller "
                 "calls it")


@pytest.mark.points(2)
def test_what_hooks_do_about_forged_frames(answers: Answers, key: Key) -> None:
    """Your statement on forged storage frames is the one the hooks support."""
    keyed_choice(answers, key, "forged_storage_frames", ("a", "b", "c", "d"),
                 "ask what in a frame each hook sees, and what a forged frame has that a "
                 "genuine one does not")

"""Grader of lab 6 (design your own policy): one test per check, run by `testbed lab check 6`.

The student's policy is ``mypolicy.py`` in the work folder: not the starter the lab
hands out (the file next to this grader). The grader loads it with the testbed's own
loader (the checks a run makes before it starts), and reads the two batches the handout
makes with it up front: ``runs/flood`` (step 2, the udp-flood load) and ``runs/spoof``
(step 3, the spoof load), each ``testbed compare ... --policies ./mypolicy.py --repeat 5``.
A batch counts only with its five runs, and a run only if it ran this very file: the
SHA-256 of the copy it kept (``policy_file`` in its summary) is the SHA-256 of the file
handed in. A hand-in archive (``testbed lab submit``) holds the answers and the run
folders: there the file handed in is the copy the runs of ``runs/flood`` kept, and every
run of both batches must have run the same.

The policy's three claims are hypotheses judged on the student's own runs with the
exact one-sided binomial test against a rate of 1/2 at 95 % (:mod:`testbed.grading.evidence`):
"it completes under the flood", "no storage frame is dropped, received or sent, during
the flood" and "forged frames get no reserve" (no receive buffer from the reserve out
during a spoofed run). The student states each as ``supported`` or ``not supported``,
and the right answer is what their runs support, whichever it is; separate checks give
the points for a policy that holds its claims (supported), and for completing the
spoofed runs. No run is asked for again: a claim the runs do not support is answered
``not supported`` and costs the holding check's points, not the conclusion's.

Why five runs of each load: every claim is a rate, and five of five is the fewest that
can reach p < 0.05 with that test (1/32 = 0.031; four of four give 1/16). The spoofed
load could look settled with fewer (it stays above the ``GFP_ATOMIC`` floor, so a
policy that keeps the reserve for failed allocations never touches it there), but a
policy that takes the reserve eagerly may do so in some runs and not others, and with
fewer than five no batch could support "forged frames get no reserve" at all: the
grader would be judging the number of runs, not the policy. So both steps make five.

Figures are per batch: counts of runs exactly, drops as the median over the runs that
reached a verdict (within 2 % or 2 frames), the reserve peak as the largest over the
spoofed runs (exactly). No message names a figure.

The flood takes a 2.6.13 policy's free memory to zero (lab 2's machine), so it is judged
under pressure there: the vanilla kernel's starter loses hundreds of the initiator's
ACKs (``GFP_ATOMIC`` on transmit) in every run and fails; the reference, a reserve on
3.6's mechanisms (its socket may send from the reserve), keeps them
(instructor/labs/06-your-own-policy/README.md has the calibration). The spoofed load stays
above the ``GFP_ATOMIC`` floor: a policy that hands out reserve there does so where
nothing needed it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed import stats
from testbed.grading import (Answers, BatchFolder, CheckFailed, Key, RunFolder, agrees,
                             evidence, expect, expect_finished, keyed_choice, same)
from testbed.mm.policy.loader import RUN_FOLDER_DIR, PolicyFile, load_policy_file
from testbed.schema import SchemaError

POLICY = "mypolicy.py"
STARTER = Path(__file__).resolve().parent / POLICY      # the file `testbed lab start 6` gives
FLOOD, SPOOF = "runs/flood", "runs/spoof"
RUNS = 5                                     # per batch: see the module docstring
KEPT = f"{RUN_FOLDER_DIR}/{POLICY}"          # the copy a run keeps of the file it ran
ERAS = ("2.6.13", "3.6")
HOLDS = "at 95 % (the exact one-sided binomial test on your runs)"


@pytest.fixture(scope="module")
def policy(work: Path) -> PolicyFile:
    path = work / POLICY
    kept = sorted((work / FLOOD).glob(f"*/{KEPT}"))
    if not path.is_file() and kept:
        path = kept[0]          # a hand-in archive: the runs carry the file they ran
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
    expect(bool(kept), f"{run.name} did not run a policy file: {step} runs its scenario "
           f"with --policies ./{POLICY}")
    expect(kept.get("sha256") == policy.sha256,
           f"{run.name} ran another version of {POLICY} than the one you hand in: make the "
           f"batches of steps 2 and 3 with your final file, before you look at them",
           f"run's copy {kept.get('sha256')}, handed in {policy.sha256}")
    on_disk = run.path / str(kept.get("path"))
    expect(on_disk.is_file() and hashlib.sha256(on_disk.read_bytes()).hexdigest() == kept["sha256"],
           f"{run.name}/{kept.get('path')} is missing or not the file the run kept: hand in "
           f"the run folder as the run left it")
    return run


def batch_of_this_policy(batch_folder, rel: str, policy: PolicyFile,
                         step: str) -> list[RunFolder]:
    """The ``RUNS`` runs of ``rel`` (a compare of the file handed in), each checked."""
    b: BatchFolder = batch_folder(rel)
    runs = b.policy_runs(POLICY)
    expect(len(runs) >= RUNS, f"{b.name} has fewer than {RUNS} runs of {POLICY}: {step} "
           f"asks for {RUNS} (--repeat {RUNS}) before you look at any of them")
    return [of_this_policy(r, policy, step) for r in runs]


@pytest.fixture(scope="module")
def flood(batch_folder, policy: PolicyFile) -> list[RunFolder]:
    return batch_of_this_policy(batch_folder, FLOOD, policy, "step 2")


@pytest.fixture(scope="module")
def spoof(batch_folder, policy: PolicyFile) -> list[RunFolder]:
    return batch_of_this_policy(batch_folder, SPOOF, policy, "step 3")


def storage_drops(run: RunFolder) -> int:
    """The storage flow's frames dropped, received and sent."""
    return run.drops("memalloc") + run.tx_drops("memalloc")


def reserve_peak(run: RunFolder) -> int:
    """The most receive buffers from the reserve out at once: the largest ``reserve`` sum
    of every sample of client.ndjson, as the handout's step 3 prints it."""
    return max(sum((s.get("reserve") or {}).values()) for s in run.all_samples)


def kept_storage(run: RunFolder) -> bool:
    return storage_drops(run) == 0


def gave_no_reserve(run: RunFolder) -> bool:
    return reserve_peak(run) == 0


def claim_test(runs: list[RunFolder], holds: Callable[[RunFolder], bool]) -> stats.RateTest:
    """The exact one-sided binomial test that ``holds`` in more than half of ``runs``,
    over those that reached a verdict (as for the verdict claims)."""
    done = [r for r in runs if r.finished]
    return stats.rate_test(sum(holds(r) for r in done), len(done))


def check_conclusion(answers: Answers, key: str, test: stats.RateTest, counted: str) -> None:
    """The stated conclusion ``key`` is what ``test`` gives; names no count."""
    same(answers.conclusion(key), evidence.word(test.supported),
         f"{key}: not what the exact one-sided binomial test gives for your counts of "
         f"{counted} at 95 % (supported when p < 0.05)")


def expect_holds(test: stats.RateTest, sentence: str) -> None:
    expect(test.supported, sentence, f"{test.successes} of {test.n}, p = {test.pvalue:.3g}")


def done_median(runs: list[RunFolder], measure: Callable[[RunFolder], int]) -> float:
    return evidence.median([measure(r) for r in runs if r.finished]) or 0.0


# -- the file and the runs ---------------------------------------------------------------

@pytest.mark.points(2)
def test_your_policy_loads(policy: PolicyFile) -> None:
    """mypolicy.py is yours and loads: one subclass of Policy, hooks with their callers'
    arguments, a known era."""


@pytest.mark.points(1)
def test_the_runs_of_both_steps(flood: list[RunFolder], spoof: list[RunFolder]) -> None:
    """runs/flood and runs/spoof hold five runs each, all of the mypolicy.py you hand in."""


@pytest.mark.points(1)
def test_your_policy_era(policy: PolicyFile, answers: Answers) -> None:
    """The era you name is the one your policy runs on."""
    same(answers.choice("policy_era", ERAS), policy.era.kernel,
         f"policy_era: not the kernel {POLICY} declares (its era attribute; 2.6.13 when it "
         f"declares none)")


# -- step 2: the flood -------------------------------------------------------------------

@pytest.mark.points(1)
def test_flood_completions(flood: list[RunFolder], answers: Answers) -> None:
    """The number of completed flood runs is your step 2 runs' count."""
    agrees(answers.number("flood_completions"), sum(r.verdict == "completed" for r in flood),
           "the flood runs that completed (flood_completions)",
           f"the verdicts of {FLOOD}", unit=" runs")


@pytest.mark.points(2)
def test_conclusion_the_flood_completes(flood: list[RunFolder], answers: Answers) -> None:
    """Your conclusion "it completes under the flood" is what your runs support at 95 %."""
    evidence.check_verdict_conclusion(answers, "flood_completes", flood, "completed",
                                      "flood")


@pytest.mark.points(1)
def test_flood_clean_runs(flood: list[RunFolder], answers: Answers) -> None:
    """The number of flood runs that dropped no storage frame is your step 2 runs' count."""
    agrees(answers.number("flood_clean_runs"), sum(map(kept_storage, flood)),
           "the flood runs with no storage frame dropped (flood_clean_runs)",
           f"drops.memalloc.total and drops.tx.memalloc.total of each run of {FLOOD}",
           unit=" runs")


@pytest.mark.points(2)
def test_conclusion_no_storage_frame_dropped(flood: list[RunFolder], answers: Answers) -> None:
    """Your conclusion "no storage frame dropped in the flood" is what your runs support."""
    check_conclusion(answers, "flood_keeps_storage", claim_test(flood, kept_storage),
                     "flood runs with no storage frame dropped")


@pytest.mark.points(1)
def test_flood_storage_drops(flood: list[RunFolder], answers: Answers) -> None:
    """The storage frames dropped agree with your flood runs' median (within 2 %)."""
    agrees(answers.number("flood_storage_drops"), done_median(flood, storage_drops),
           "the median of the storage frames dropped, received and sent (flood_storage_drops)",
           f"drops.memalloc.total + drops.tx.memalloc.total of your runs of {FLOOD}",
           rel=0.02, abs_=2, unit=" frames")


@pytest.mark.points(1)
def test_flood_other_drops(flood: list[RunFolder], answers: Answers) -> None:
    """The other traffic's drops agree with your flood runs' median (within 2 %)."""
    agrees(answers.number("flood_other_drops"), done_median(flood, lambda r: r.drops("other")),
           "the median of the frames of other traffic dropped (flood_other_drops)",
           f"drops.other.total of your runs of {FLOOD}", rel=0.02, abs_=2, unit=" frames")


# -- step 3: the forged frames -----------------------------------------------------------

@pytest.mark.points(1)
def test_spoof_clean_runs(spoof: list[RunFolder], answers: Answers) -> None:
    """The number of spoofed runs with no reserve buffer out is your step 3 runs' count."""
    agrees(answers.number("spoof_clean_runs"), sum(map(gave_no_reserve, spoof)),
           "the spoofed runs with no receive buffer from the reserve (spoof_clean_runs)",
           f"the reserve of each run's client.ndjson in {SPOOF}", unit=" runs")


@pytest.mark.points(1)
def test_spoof_reserve_peak(spoof: list[RunFolder], answers: Answers) -> None:
    """The most reserve buffers out at once is the largest of your spoofed runs'."""
    agrees(answers.number("spoof_reserve_peak"), max(map(reserve_peak, spoof)),
           "the most receive buffers from the reserve out at once (spoof_reserve_peak)",
           f"the largest reserve, summed over the interfaces, of the runs' client.ndjson "
           f"in {SPOOF}", unit=" buffers")


@pytest.mark.points(2)
def test_conclusion_forged_frames_get_no_reserve(spoof: list[RunFolder],
                                                 answers: Answers) -> None:
    """Your conclusion "forged frames get no reserve" is what your runs support at 95 %."""
    check_conclusion(answers, "spoof_no_reserve", claim_test(spoof, gave_no_reserve),
                     "spoofed runs with no receive buffer from the reserve")


# -- the policy holds its claims ---------------------------------------------------------

@pytest.mark.points(1)
def test_the_flood_completes(flood: list[RunFolder]) -> None:
    """Your policy completes the writeback under the flood (supported by your runs)."""
    expect_holds(evidence.verdict_test(flood, "completed"),
                 f"your runs of {FLOOD} do not support that your policy completes under the "
                 f"flood {HOLDS}: read the verdicts and reasons in {FLOOD}/report.html, and "
                 f"what your hooks did to the storage flow")


@pytest.mark.points(2)
def test_no_storage_frame_dropped_in_the_flood(flood: list[RunFolder]) -> None:
    """No storage frame was dropped, received or sent, while the flood ran (supported)."""
    expect_holds(claim_test(flood, kept_storage),
                 f"your runs of {FLOOD} do not support that no storage frame is dropped "
                 f"{HOLDS}: your policy does not keep the storage flow's frames (drops.memalloc "
                 f"received, drops.tx.memalloc sent) when the flood competes for memory")


@pytest.mark.points(1)
def test_the_spoofed_runs_complete(spoof: list[RunFolder]) -> None:
    """Your policy completes the writeback while forged storage frames arrive (supported)."""
    expect_holds(evidence.verdict_test(spoof, "completed"),
                 f"your runs of {SPOOF} do not support that your policy completes while "
                 f"forged frames arrive {HOLDS}: read the verdicts and reasons in "
                 f"{SPOOF}/report.html")


@pytest.mark.points(2)
def test_forged_frames_get_no_reserve(spoof: list[RunFolder]) -> None:
    """No receive buffer came from the reserve while the forged frames arrived (supported)."""
    expect_holds(claim_test(spoof, gave_no_reserve),
                 f"your runs of {SPOOF} do not support that forged frames get no reserve "
                 f"{HOLDS}: frames your hooks cannot tell from forged ones took reserve "
                 f"memory (reserve in client.ndjson) where the load did not need it")


# -- the hooks ---------------------------------------------------------------------------

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

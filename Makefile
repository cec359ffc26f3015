# Each target installs what it needs first (idempotent), then does its job.
PY := .venv/bin/python
TESTBED := .venv/bin/testbed

.PHONY: setup setup-labs demo check test claims fuzz killpoints soak bench clean lint images guest-image vm-image

setup:
	@scripts/setup.sh

# Only what a student needs for the labs: Mininet, tgtd, the network tools and the
# graders' pytest (no Docker, no kernel-client guest builder, no test extras).
setup-labs:
	@scripts/setup.sh --labs

# A previous runs/demo is moved aside to runs/demo.old-<time> (--force), never deleted.
demo: setup
	$(TESTBED) compare scenarios/contention.yaml --policies none,reserve-only,phillips-2005,phillips-2005-threshold,gorman-3.6 --out runs/demo --force

# pytest-xdist workers for the tests that share nothing (auto: one per core).
WORKERS ?= auto
# A part that selects no test (pytest's exit 5) fails, unless PYTEST_ARGS narrowed it.
NONE_OK = rc=$$?; [ $$rc -eq 0 ] || { [ $$rc -eq 5 ] && [ -n "$(strip $(PYTEST_ARGS))" ]; }

# The unit tests alone, in parallel (about 1.5 minutes): a contributor's inner loop. No
# Mininet, tgtd, dockerd or guest, no root network change; tests/conftest.py says which
# tests are unit tests and fails one that starts more than a stand-in.
check: setup
	$(PY) -m pytest -q -m unit -n $(WORKERS) $(PYTEST_ARGS)

# pytest-xdist workers for the tests that change the machine: each of their runs is
# isolated and judges its own fidelity, as `--workers` runs do (docs/measurements.md:
# 8 runs at once stayed valid here), and a test may itself run two at once.
MACHINE_WORKERS ?= 3

# Every test, in three parts: those that share nothing (unit, cli, slow), in parallel; the
# tests that change the machine (root, mininet, tgtd, docker) and find their own leftovers
# by their runs' tags, MACHINE_WORKERS at a time, a file's tests on one worker (--dist
# loadfile: the runs a file's tests share are made once); last, one at a time, those that
# look at the whole machine, time themselves or assert on a batch's verdicts (`alone`:
# tests/conftest.py's ALONE says which and why). The third part runs the QEMU guests'
# tests (alone_guest, one core) beside the others of alone, each kind one at a time
# (tests/support/side_by_side.py), then those that look at the whole machine (alone_whole)
# with nothing beside them. Each pytest session prints its 30 slowest.
test: setup
	$(PY) -m pytest -q -rs -m "not machine" -n $(WORKERS) --durations=30 $(PYTEST_ARGS); $(NONE_OK)
	$(PY) -m pytest -q -rs -m "machine and not alone" -n $(MACHINE_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS); $(NONE_OK)
	$(PY) -m tests.support.side_by_side "alone and not alone_guest and not alone_whole" alone_guest -- -q -rs --durations=30 $(PYTEST_ARGS); $(NONE_OK)
	$(PY) -m pytest -q -rs -m alone_whole --durations=30 $(PYTEST_ARGS); $(NONE_OK)

# The article's claims, each tested on 10 runs of every policy and of the baseline
# (60 runs), two at a time (--workers 2; each run isolated, a starved one invalid and
# left out). This target's own time is not measured yet; tests/e2e/test_scenarios.py's
# claims batch went from 11 min 1 s one at a time to 5 min 58 s two at a time. Not part
# of `make test`.
claims: setup
	$(TESTBED) claims scenarios/contention.yaml --repeat 10 --workers 2

# 10,000 broken scenario files, 10,000 broken frames and 10,000 iSCSI PDUs for the decoder,
# with the counts (about 4 minutes; make test runs a few hundred to 1,500 of each).
fuzz: setup
	$(PY) -m tests.support.fuzz --cases 10000 --frames 10000 --pdus 10000

# testbed run killed (SIGKILL, then testbed clean; and Ctrl-C) at 20 points of its life,
# with and without dockerd, and what is left of each run counted (expected 0; about
# 15 minutes; make test runs 6 of the points).
killpoints: setup
	$(PY) -m tests.support.killpoints --docker both

# The contention load under gorman-3.6 for 30 minutes, one random fault in each run, every
# acknowledged page read back (tests/support/soak.py; the totals in runs/soak-<time>/soak.json).
soak: setup
	$(PY) -m tests.support.soak --minutes 30

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The node image for the Docker backend and docker-compose.yml (docker/build-images.sh);
# dockerd is started for the build if it is not running, and only that one is stopped.
images: setup guest-image
	@pf=$$(mktemp -u /run/testbed-dockerd.XXXXXX.pid); scripts/docker-up.sh $$pf && \
	  { docker/build-images.sh; rc=$$?; scripts/docker-down.sh $$pf 2>/dev/null; exit $$rc; }

# The kernel client's guest (testbed/guest/image.py): built once, about 2 minutes, then
# cached under /var/cache/testbed/guest; tests/guest builds it on first use too.
guest-image: setup
	$(PY) -m testbed.guest.image

# The students' machine (testbed/guest/vmimage.py): a bootable qcow2 with the project and
# the labs' student copy, from the same builder. The first build takes minutes (the base:
# debootstrap and packages), an edit of the project about a minute; the image is cached
# under /var/cache/testbed/guest/vm and copied to build/testbed-vm.qcow2 (docs/labs.md).
vm-image: setup
	$(PY) -m testbed.guest.vmimage --out build/testbed-vm.qcow2

clean: setup
	$(TESTBED) clean

"""The stress search of issue 14: look for the load under which a policy's claim fails.

The article's claims (:mod:`testbed.claims`) are that the fixes complete under memory
pressure and that ``none`` and ``reserve-only`` lock up. The scenarios the project ships
test them on a few loads; a stress campaign tests them on many. One module per step:

- :mod:`.ranges`: which scenario keys vary and over what (a YAML file, checked by the
  scenario schema), and how a load (key -> value) is set into a scenario;
- :mod:`.sampling`: seeded loads drawn from the ranges;
- :mod:`.shrink`: a counterexample shrunk toward the scenario's defaults one key at a
  time, each candidate one run (delta debugging), for any predicate;
- :mod:`.campaign`: the loop under a time budget, with the orchestrator doing the runs,
  the results store recording them, and the folder that keeps what was found; a
  counterexample, and the load it shrinks to, is confirmed by N fresh runs and the rate
  test of :mod:`testbed.stats`, as the claims are, never by one re-run.

``--workers N`` runs N loads at once, each a whole run in its own process with its own
run id and namespaces (:mod:`testbed.pool`): sampled loads in waves of N, a
confirmation's fresh runs N at once; shrinking stays one run at a time. ``--cluster``
does the same on a Dask cluster's workers (:mod:`testbed.cluster`), a wave as many runs
as the cluster has worker threads.
"""

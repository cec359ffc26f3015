"""The small load of the machine tests that need many short runs (stress, parallel
runs, the cluster): one bulk host at 5 Mbit/s, a writer at 2 MiB/s and a small download
on a 32 MiB client. A run takes seconds; ``none`` and ``reserve-only`` lock up under it
and a fix completes, so a sweep over the policy has verdicts of its own."""

from __future__ import annotations


def small_scenario(name: str, writer_mb: int = 4, lun_mb: int = 16) -> str:
    """The scenario's YAML, named ``name``; the writer's size and the LUN's in MiB."""
    return f"""name: {name}
expect: completed
expect_by_policy: {{none: lockup, reserve-only: lockup}}
duration_s: 8
deadline_s: 25
topology: {{bulk_hosts: 1, client_bw_mbit: 40, bw_mbit: 100}}
client:
  memory_mb: 32
  policy: gorman-3.6
  lockup_after_s: 15
  workloads:
    - {{kind: writer, total_mb: {writer_mb}, rate_mbps: 2, files: 1}}
    - {{kind: downloader, total_mb: 2}}
target: {{lun_mb: {lun_mb}}}
bulk: {{mode: tcp, rate_mbit: 5}}
"""

"""What an end-to-end run may touch on the machine, compared before and after."""

from tests.platform.conftest import snapshot as machine_snapshot


def snapshot() -> dict:
    """Namespaces, links, iptables and nft rules of the machine. Processes are left out:
    over minutes some of the machine's own end by themselves; the run's are found by
    their tag (``assert_nothing_left``)."""
    state = machine_snapshot()
    state.pop("processes")
    return state

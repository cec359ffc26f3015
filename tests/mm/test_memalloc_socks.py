"""``sk_memalloc_socks()`` as 3.6 keeps it, and the storage transmit mark of a handshake.

3.6's ``sk_set_memalloc`` raises the ``memalloc_socks`` static key and only
``sk_clear_memalloc`` lowers it; ``__sk_free`` does not call it, so a closed memalloc
socket's count stays. The lockup detector's transmit mark for a reinstatement follows the
era's moment of marking (``sk_memalloc_mark``): in 3.6 the new connection's SYN leaves on a
plain socket, at the GFP_ATOMIC floor.
"""

from __future__ import annotations

import pytest

from testbed.mm import MemoryManager
from testbed.mm.era import LINUX_2_6_13, LINUX_3_6
from testbed.mm.gfp import Gfp
from testbed.mm.lockup import storage_tx_mark


@pytest.mark.parametrize("policy", ["none", "phillips-2005", "gorman-3.6"])
def test_close_keeps_the_count_and_only_clear_memalloc_lowers_it(policy):
    mm = MemoryManager(8192, policy=policy)
    a, b = mm.sock_create("a"), mm.sock_create("b")
    a.set_memalloc()
    a.set_memalloc()                                 # a flag: counted once
    b.set_memalloc()
    assert mm.memalloc_socks == 2
    a.close()
    assert a.closed and mm.memalloc_socks == 2 and mm.sk_memalloc_socks()
    b.clear_memalloc()
    assert not b.memalloc and not b.sk_allocation & Gfp.MEMALLOC and mm.memalloc_socks == 1
    b.close()
    assert mm.memalloc_socks == 1 and mm.check_invariants() == []


def test_the_eras_mark_at_creation_or_once_connected():
    assert LINUX_2_6_13.sk_memalloc_mark == "created"
    assert LINUX_3_6.sk_memalloc_mark == "connected"


def test_3_6_a_reinstatement_s_syn_has_the_atomic_floor_until_its_socket_is_marked():
    mm = MemoryManager(8192, policy="gorman-3.6")
    floor = mm.zone.mark_atomic
    assert storage_tx_mark(mm) == 0                          # data on a memalloc socket
    with mm.lock:
        assert storage_tx_mark(mm, handshake=True) == floor  # no open memalloc socket yet
    old = mm.sock_create("iscsi")
    old.set_memalloc()
    old.close()                                              # the lost connection's
    new = mm.sock_create("iscsi")
    with mm.lock:
        assert storage_tx_mark(mm, handshake=True) == floor  # bound, still plain
    new.set_memalloc()                                       # connected and taken: the login
    with mm.lock:
        assert storage_tx_mark(mm, handshake=True) == 0


def test_2_6_13_every_storage_transmit_has_the_atomic_floor():
    mm = MemoryManager(8192, policy="phillips-2005")
    sk = mm.sock_create("iscsi")
    sk.set_memalloc()
    with mm.lock:
        assert storage_tx_mark(mm) == storage_tx_mark(mm, handshake=True) == mm.zone.mark_atomic

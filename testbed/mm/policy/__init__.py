"""The five memory policies, one small module each, and how to pick one by name.

======================== ==============================================================
``none``                 2005 vanilla: GFP_ATOMIC only (to 3/8 min), drop on failure
``reserve-only``         a Phillips-sized reserve that any frame may use
``phillips-2005``        per-device reserve, cap of ``rx_reserve`` skbs, SOCK_MEMALLOC
                         only while the device is in reserve
``phillips-2005-threshold`` as above; non-memalloc frames may use ``threshold`` of it
``gorman-3.6``           pfmemalloc skbs from under min once a socket is memalloc;
                         sk_filter drops them for others; throttle_direct_reclaim
======================== ==============================================================

``client.policy`` may also name a policy file (``./mypolicy.py``): :mod:`.loader`
loads and checks it.
"""

from __future__ import annotations

from typing import Optional

from ..errors import MMError
from .base import Policy
from .gorman_3_6 import Gorman36
from .loader import is_policy_file, load_policy_file
from .none import NonePolicy
from .phillips_2005 import Phillips2005
from .phillips_2005_threshold import Phillips2005Threshold
from .reserve_only import ReserveOnly

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (
    NonePolicy, ReserveOnly, Phillips2005, Phillips2005Threshold, Gorman36)}


def make_policy(name: str, rx_reserve: int = 50, threshold: float = 0.5,
                reserve_pages: Optional[int] = None) -> Policy:
    """The policy called ``name``, or the one a policy file (``*.py``) defines; MMError
    naming the known ones otherwise (a broken file: the loader's SchemaError)."""
    if is_policy_file(name):
        return load_policy_file(name).make(rx_reserve, threshold, reserve_pages)
    cls = POLICIES.get(name)
    if cls is None:
        raise MMError(f"policy {name!r} is not one of {', '.join(POLICIES)}")
    return cls(rx_reserve=rx_reserve, threshold=threshold, reserve_pages=reserve_pages)


__all__ = ["POLICIES", "Policy", "make_policy", "NonePolicy", "ReserveOnly", "Phillips2005",
           "Phillips2005Threshold", "Gorman36"]

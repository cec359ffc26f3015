"""The guest image for the kernel client's tests: built once per machine, with progress.

``make test`` on a clean clone builds it here (about 2 minutes, then cached under
``testbed.guest.image.CACHE_DIR``); the build's steps are printed to the terminal as
they happen, since pytest would otherwise hold them until the test ends.
"""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def guest_image():
    if os.geteuid() != 0:
        pytest.skip("the guest image is built as root (debootstrap)")
    from testbed.guest.image import ensure_image

    def say(text: str) -> None:
        print(text, file=sys.__stderr__, flush=True)

    return ensure_image(say)

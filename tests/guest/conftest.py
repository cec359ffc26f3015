"""The guest image for the kernel client's tests: built once per machine, with progress.

``make test`` on a clean clone builds it here (about 2 minutes, then cached under
``testbed.guest.image.CACHE_DIR``); the build's steps are printed to the terminal as
they happen (with pytest's capture lifted for each line; it would hold them otherwise).
"""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def guest_image(pytestconfig):
    if os.geteuid() != 0:
        pytest.skip("the guest image is built as root (debootstrap)")
    from testbed.guest.image import ensure_image
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(text: str) -> None:
        # pytest captures file descriptor 2 itself: lift the capture for each line
        with capture.global_and_fixture_disabled():
            print(text, file=sys.stderr, flush=True)

    return ensure_image(say)

"""The kernel client: a real Linux kernel, run under QEMU, as the topology's storage client.

- :mod:`.image` builds the guest (Debian's kernel, a busybox initramfs, a debootstrap
  root filesystem) once from the package registries and caches it;
- :mod:`.qemu` chooses how the guest runs (KVM if a short boot under it works here,
  else TCG) and makes QEMU's command line;
- :mod:`.node` puts the guest where the emulated client's interface would be (a TAP on
  a bridge with the client's wire, in the client's namespace), runs it, and turns what
  it streams back into the run folder's files (metrics, outcome, manifest).
- :mod:`.waits` reads the wait-for cycle of a lockup from the kernel's own evidence
  (the stacks of its blocked tasks).

The program that runs inside the guest is ``nodes/kernel_client/guest_agent.py``;
``docs/kernel-client.md`` is the user's page.
"""

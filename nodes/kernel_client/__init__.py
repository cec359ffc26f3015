"""The kernel client: a Linux guest as the storage client (host side in __main__, guest side in guest_agent)."""

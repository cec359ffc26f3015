"""The integrity check node: reads the LUN through the initiator, compares checksums."""

"""The storage client node: memory manager + packet handler + initiator + workloads."""

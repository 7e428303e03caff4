"""torchrun support for `scan`: the process group, barriers, and bringing every rank's unit files
to rank 0. Each rank embeds its own units (a strided split, each unit exactly once); rank 0 gathers
them and runs every later stage. Single-process runs pass straight through (world size 1).
"""

from __future__ import annotations

from ssl_guard.run import RunFolder


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def gather_units(run: RunFolder, count: int, rank: int, world: int) -> None:
    """Bring every unit file to rank 0's run folder: nothing to do on a shared filesystem; over
    separate disks, each rank sends the unit files rank 0 does not see."""
    if world <= 1:
        return
    import torch.distributed as dist

    from ssl_guard.detect.embed import unit_file
    from ssl_guard.run import atomic_write_bytes

    missing = [i for i in range(count) if not (run / unit_file(i)).is_file()] if rank == 0 else None
    box = [missing]
    dist.broadcast_object_list(box, src=0)
    missing = box[0]
    payload = {i: (run / unit_file(i)).read_bytes() for i in missing if (run / unit_file(i)).is_file()} if rank != 0 else {}
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(payload, gathered, dst=0)
    if rank == 0:
        for part in gathered:
            for index, blob in (part or {}).items():
                atomic_write_bytes(run / unit_file(index), blob)
    dist.barrier()

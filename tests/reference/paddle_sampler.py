"""Paddle's DistributedBatchSampler (paddle.io, as PaddleVideo's loaders use it): the batches of
every rank for a few list lengths, world sizes, batch sizes and drop_last, in list order
(shuffle=False: the shuffle's generator is numpy's, ours is seeded ChaCha, so only the sharding
itself is compared). Writes batches.json: a list of {len, world_size, batch_size, drop_last,
rank, batches}.
"""

import json
import os
import sys

from paddle.io import DistributedBatchSampler


def main(out):
    cases = []
    for length in (1, 5, 10, 11, 16):
        for world in (1, 2, 3, 4):
            for batch_size in (1, 2, 3):
                for drop_last in (False, True):
                    for rank in range(world):
                        sampler = DistributedBatchSampler(
                            list(range(length)),
                            batch_size=batch_size,
                            num_replicas=world,
                            rank=rank,
                            shuffle=False,
                            drop_last=drop_last,
                        )
                        cases.append(
                            dict(
                                len=length,
                                world_size=world,
                                batch_size=batch_size,
                                drop_last=drop_last,
                                rank=rank,
                                batches=[list(map(int, b)) for b in sampler],
                            )
                        )
    with open(os.path.join(out, "batches.json"), "w") as f:
        json.dump(cases, f)
    print(f"{len(cases)} sampler cases")


if __name__ == "__main__":
    main(sys.argv[1])

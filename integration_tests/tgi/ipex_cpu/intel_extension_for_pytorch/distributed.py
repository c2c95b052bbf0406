"""``ipex.distributed``: tensor parallelism is not reached with one CPU shard."""

from __future__ import annotations

from ._missing import missing

all_reduce = missing("distributed.all_reduce")
all_gather = missing("distributed.all_gather")
all_gather_into_tensor = missing("distributed.all_gather_into_tensor")
init_process_group = missing("distributed.init_process_group")

"""What a dispatcher killed -9 left, put right by the next one at its start.

A dispatcher can die between any two steps of a command: the command itself is answered
503 "interrupted" (never run twice, core0/bus/reconcile.py), and what it had made so far is
removed or made to agree with core0's records here:

* hidden work directories of image pulls, imports and restores (``images.sweep_leftovers``)
  and partial VM media downloads (``fetch.sweep_parts``);
* containers whose ``corex.create`` was cut short (``persist.terminate_unfinished``);
* core0's nft table and port guards, loaded again from the saved network state
  (``nft.reconcile``): a dispatcher killed between an ``nft -f`` and the record of it left
  rules in the kernel that the state lacks, e.g. a forward no command could remove.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from core0_client.protocol import Command

from core0.net import portguard
from core0.net.state import net_dir
from core0.sandbox import images, persist
from core0.virt import fetch

if TYPE_CHECKING:
    from core0.config import Config
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job


async def sweep(engine: JobEngine, cfg: Config, started: float) -> list[Job]:
    """All of the above (``started``: this dispatcher's start, on the wall clock). Returns
    the terminate jobs of the half-made containers: the declared ones come back once those
    ended (``persist.restore(after=…)``), a declared one half made holding its id until
    then."""
    terminates = persist.terminate_unfinished(engine, cfg)
    if (net_dir(cfg.state_dir) / "state.json").exists() or portguard.load(cfg.state_dir):
        # only a node that has set up nft before: nodes sharing a network namespace (tests,
        # `core0 dev` beside another) share its table name
        engine.submit_internal(Command(command="nft.reconcile", arguments={},
                                       id=f"nft-reconcile:{started:.3f}"))
    await asyncio.to_thread(images.sweep_leftovers, cfg.state_dir, started)
    await asyncio.to_thread(fetch.sweep_parts, Path(cfg.virt.dir) / "cache", started)
    return terminates

"""Fault injection for tests and demos; does nothing unless FACET_FAULT is set.

    FACET_FAULT=evaluate:raise      raise at the start of evaluate
    FACET_FAULT=train@6:raise       raise once optimizer step 6 is done (and checkpointed)
    FACET_FAULT=train@6:kill        SIGKILL this process at that point: no cleanup, no retry hook

A fault fires on a task's first attempt only, so that @retry can show recovery.
"""

from __future__ import annotations

import os
import signal

from lib.settings import FlowSettings

ENV = "FACET_FAULT"


class InjectedFault(RuntimeError):
    """Raised by an injected `raise` fault."""


def inject(where: str, step: int | None = None, attempt: int = 0) -> None:
    spec = FlowSettings().FACET_FAULT
    if not spec or attempt > 0:
        return
    target, _, action = spec.partition(":")
    name, _, at_step = target.partition("@")
    if action not in ("raise", "kill"):
        raise ValueError(f"{ENV}={spec!r}: expected <step>[@<n>]:raise|kill")
    if name != where or (at_step and int(at_step) != step):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"fault injected by {ENV}={spec}")

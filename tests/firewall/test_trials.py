"""Trials of allow-list changes made from afar (commands.py `Trials`): undone at their deadline,
and no database work while none is open, so the firewall holds no Postgres connection at rest."""

from __future__ import annotations

import asyncio

from libs.events import context
from libs.events.context import Context
from libs.events.projection import ProjectionRunner
from libs.events.store import PostgresEventStore
from services.firewall.commands import Commands, Trials
from services.firewall.rules import RulesProjection
from tests.support.waits import wait_until


class _Counted(Commands):
    """The real commands, counting the rounds of `Trials` that reached the database."""

    rounds = 0

    async def revert_due(self) -> list[str]:
        self.rounds += 1
        return await super().revert_due()


async def test_a_trial_is_undone_at_its_deadline_and_nothing_is_asked_at_rest(
    store: PostgresEventStore,
) -> None:
    await ProjectionRunner(RulesProjection(), store).setup()
    trials: Trials | None = None

    def changed() -> None:
        assert trials is not None
        trials.nudge()

    commands = _Counted(store, changed=changed, trial_seconds=1.0)
    trials = Trials(commands, every=0.05)
    task = asyncio.create_task(trials.run())
    try:
        await wait_until(lambda: _true(commands.rounds == 1), 5, "the first round")
        await asyncio.sleep(0.5)  # ten times `every`: no trial open, so no round
        assert commands.rounds == 1

        remote = Context(actor="00000000-0000-4000-8000-000000000001", admin=True, ip="192.0.2.3")
        with context.use(remote):
            answer = await commands.set_allowlist({"scope": "ssh", "cidrs": ["192.0.2.3"]})
        assert answer["trial"] is not None
        row = await commands.allowlist_row("ssh")
        assert row is not None and row["why"] == "trial"

        async def undone() -> bool:
            now = await commands.allowlist_row("ssh")
            return now is not None and now["why"] == "reverted" and list(now["cidrs"]) == []

        await wait_until(undone, 5, "the trial undone at its deadline")
        # The undoing is itself a change, whose nudge may start one more round just after the
        # row was seen undone: let that round pass before counting.
        await asyncio.sleep(0.5)
        settled = commands.rounds
        assert settled <= 4  # the nudges and the deadline, not a round every 50 ms
        await asyncio.sleep(0.5)
        assert commands.rounds == settled  # at rest again
    finally:
        trials.stop()
        await asyncio.wait_for(task, 5)


async def _true(value: bool) -> bool:
    return value

"""The nftables adapter: the only module that runs `nft` (argv lists, scripts on stdin).

`Nft` runs one command and turns a failure (nft missing, or nft refusing) into `NftError`.
`Table` is Homeport's table on top of it: apply a rendered ruleset atomically (one `nft -f`),
add bans, read what the kernel holds. It only ever touches its own table.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from services.firewall.errors import NftError
from services.firewall.ruleset import Opening, Rules, ban_set, element, render

__all__ = ["BanSet", "Nft", "Table"]

_SETS = ("banned4", "banned6")


class Nft:
    """`nft` run as the argv prefix `argv` (e.g. `ip netns exec NS nft`), never through a shell."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    async def run(self, *args: str, stdin: str | None = None) -> str:
        """Run `nft <args>` (feeding `stdin`); its output, or NftError with nft's message."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except OSError as e:
            raise NftError(
                f"cannot run {' '.join(self.argv)}: {e} (check HP_FIREWALL_NFT and that"
                " nftables is installed)"
            ) from e
        if proc.returncode != 0:
            raise NftError(f"nft {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
        return out.decode()


class Table:
    """Homeport's table `inet <table>` in the kernel: replaced whole, bans added one by one."""

    def __init__(self, nft: Nft, table: str) -> None:
        self.nft = nft
        self.table = table

    async def apply(self, script: str) -> None:
        """Apply `script` in one transaction (`nft -f`): a script nft refuses, whether it finds
        the fault itself or the kernel does halfway through the batch, changes nothing, and the
        table in force stays. (No `nft -c` first: it would only parse the script twice, 0.6 s
        each for a 100,000-entry block list.)"""
        await self.nft.run("-f", "-", stdin=script)

    async def install(self, rules: Rules | None = None) -> None:
        """The whole table for `rules` (default: nothing open but SSH and the edge)."""
        if rules is None:
            host = (("ssh", 22), ("edge", 80), ("edge", 443))
            rules = Rules(openings=tuple(Opening("tcp", port, what) for what, port in host))
        await self.apply(render(self.table, rules))

    async def add(self, ip: str, seconds: int) -> None:
        """Drop `ip` for `seconds`; the kernel removes it from the set then."""
        await self.nft.run("add", "element", "inet", self.table, ban_set(ip), element(ip, seconds))

    async def listing(self) -> str:
        """The table as nft prints it."""
        return await self.nft.run("list", "table", "inet", self.table)

    async def elements(self) -> dict[str, int]:
        """Address -> seconds its ban was set for, as the kernel holds them now."""
        out: dict[str, int] = {}
        for name in _SETS:
            doc = json.loads(await self.nft.run("-j", "list", "set", "inet", self.table, name))
            for item in doc.get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    if isinstance(elem, dict) and "elem" in elem:
                        out[str(elem["elem"]["val"])] = int(elem["elem"].get("timeout", 0))
        return out


BanSet = Table  # the name the bans' code and tests knew it by

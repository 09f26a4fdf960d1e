"""Class names and the class hierarchy: from what a user types to the MIDs whose boxes a label takes.

Users write display names ("hamburger", "Submarine sandwich") or MIDs ("/m/0cdn1"), matched forgivingly; a
name that matches nothing stops the run with one line naming the closest real names, because a typo must
not cost a 3 GB download or an empty dataset. Subclasses follow the hierarchy's ``Subcategory`` edges,
never ``Part``. When several requested labels reach one box, it goes to the most specific of them
(:func:`assign`), so no box ever gets two labels. The rules in full: docs/architecture.md ("select").
"""
from __future__ import annotations

import difflib
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.base.errors import UserError


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", name).strip().casefold()


@dataclass(frozen=True)
class ClassList:
    """The class list: MID -> display name, searchable by name (any case) or MID."""

    names: dict[str, str]
    #: where the list came from, for error messages
    source: str = "the class list"

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], source: str = "the class list") -> ClassList:
        return cls({mid: name for mid, name in pairs}, source)

    @classmethod
    def load(cls, path: Path) -> ClassList:
        """Read ``classes.parquet`` as written by the metadata stage."""
        from pipeline.core.base.io import open_parquet

        if not path.exists():
            raise UserError(f"{path} not found: run `python -m pipeline.stages.metadata` first")
        with _readable(path):
            table = open_parquet(path, "class list (metadata stage)").read(columns=["LabelName", "DisplayName"])
        return cls.from_pairs(zip(table.column(0).to_pylist(), table.column(1).to_pylist()), str(path))

    def resolve(self, label: str) -> str:
        """The MID that ``label`` (a display name in any case, or a MID) names; ``UserError`` if none."""
        text = label.strip()
        if text in self.names:
            return text
        matches = [mid for mid, name in self.names.items() if _key(name) == _key(text) or mid.casefold() == _key(text)]
        if len(matches) > 1:
            raise UserError(f"label '{label}' is ambiguous: {', '.join(matches)}; write one of these MIDs instead")
        if matches:
            return matches[0]
        raise UserError(self._unknown(label))

    def resolve_all(self, labels: Sequence[str]) -> list[str]:
        """MIDs of ``labels`` in the given order, each once (``Hamburger`` and ``/m/0cdn1`` are one label)."""
        mids: list[str] = []
        for label in labels:
            mid = self.resolve(label)
            if mid not in mids:
                mids.append(mid)
        return mids

    def _unknown(self, label: str) -> str:
        by_key = {_key(name): name for name in self.names.values()} | {mid.casefold(): mid for mid in self.names}
        close = [by_key[k] for k in difflib.get_close_matches(_key(label), list(by_key), n=3, cutoff=0.6)]
        if not close:
            return f"unknown label '{label}' (not one of the {len(self.names)} classes in {self.source})"
        quoted = [f"'{name}'" + (f" ({self.names[name]})" if name in self.names else "") for name in close]
        options = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        return f"unknown label '{label}' — did you mean {options}?"


@dataclass(frozen=True)
class Hierarchy:
    """``Subcategory`` edges of the official class hierarchy: MID -> its direct subclasses."""

    children: dict[str, tuple[str, ...]]

    @classmethod
    def from_tree(cls, tree: dict) -> Hierarchy:
        children: dict[str, list[str]] = {}
        stack = [tree]
        while stack:  # iterative: a hostile tree thousands of levels deep cannot overflow the stack here
            node = stack.pop()
            subs = _nodes(node.get("Subcategory"))
            known = children.setdefault(node["LabelName"], [])
            known += [n["LabelName"] for n in subs if n["LabelName"] not in known]
            stack += subs + _nodes(node.get("Part"))
        return cls({mid: tuple(kids) for mid, kids in children.items()})

    @classmethod
    def load(cls, path: Path) -> Hierarchy:
        if not path.exists():
            raise UserError(f"{path} not found: run `python -m pipeline.stages.metadata` first")
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise UserError(f"{path}: not a readable hierarchy ({type(exc).__name__}): run the metadata stage "
                            "again") from None
        if not isinstance(tree, dict) or not isinstance(tree.get("LabelName"), str):
            raise UserError(f"{path}: the hierarchy's root has no LabelName: run the metadata stage again")
        return cls.from_tree(tree)

    def descendants(self, mid: str) -> dict[str, int]:
        """``mid`` and every subclass below it, each with its distance in Subcategory steps (``mid``: 0)."""
        distance = {mid: 0}
        queue = deque([mid])
        while queue:
            parent = queue.popleft()
            for child in self.children.get(parent, ()):
                if child not in distance:
                    distance[child] = distance[parent] + 1
                    queue.append(child)
        return distance


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Reading a column that is not there is as unreadable as a damaged file."""
    try:
        yield
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: not the class list the metadata stage writes ({exc}): run it again") from None


def _nodes(value: object) -> list[dict]:
    """The child nodes in a ``Subcategory`` or ``Part`` value: a list of ``{"LabelName": str, ...}``; anything
    else (a string, a number, a node without a name) contributes nothing."""
    if not isinstance(value, list):
        return []
    return [n for n in value if isinstance(n, dict) and isinstance(n.get("LabelName"), str)]


def assign(requested: Sequence[str], hierarchy: Hierarchy | None) -> dict[str, str]:
    """Box MID -> the requested MID whose label it gets (see the module's overlap rule).

    ``hierarchy`` None means no subclasses: each requested MID takes only its own boxes.
    """
    claims: dict[str, tuple[int, int, str]] = {}
    for order, mid in enumerate(requested):
        reach = hierarchy.descendants(mid) if hierarchy else {mid: 0}
        for box_mid, distance in reach.items():
            if box_mid not in claims or (distance, order) < claims[box_mid][:2]:
                claims[box_mid] = (distance, order, mid)
    return {box_mid: claim[2] for box_mid, claim in claims.items()}

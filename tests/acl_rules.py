"""The README's ACL rules (Security section), parsed: what tests check against the command table and apply
to real servers (``ACL SETUSER``), for a test's own key prefix."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
DOC_PREFIX = "celery:worker:state:"
WORKER_USER, ADMIN_USER = "celery-statedb", "celery-statedb-admin"


@dataclass
class Selector:
    patterns: list[str] = field(default_factory=list)  # key patterns, without the ~
    commands: set[str] = field(default_factory=set)  # allowed commands, lower case, without the +

    def allows(self, command: str, key: str | None) -> bool:
        if command not in self.commands:
            return False
        return key is None or any(fnmatch.fnmatchcase(key, pattern) for pattern in self.patterns)


@dataclass
class Rule:
    """One ``ACL SETUSER`` line: its tokens, the root selector and the selectors in parentheses."""

    user: str
    tokens: list[str]
    root: Selector
    selectors: list[Selector]

    def allows(self, command: str, key: str | None) -> bool:
        return any(selector.allows(command, key) for selector in (self.root, *self.selectors))

    @property
    def commands(self) -> set[str]:
        return set().union(self.root.commands, *(s.commands for s in self.selectors))

    def setuser_args(self, prefix: str, password: str, *extra: str) -> list[str]:
        """The rule's ``ACL SETUSER <user>`` arguments for ``prefix`` (no glob character in it) and
        ``password``, with ``extra`` commands (``+select``...) added to the root selector."""
        args = [token.replace(DOC_PREFIX, prefix) for token in self.tokens]
        args = [f">{password}" if token == ">PASSWORD" else token for token in args]
        first_selector = next((i for i, token in enumerate(args) if token.startswith("(")), len(args))
        return args[:first_selector] + list(extra) + args[first_selector:]


def _selector(tokens: list[str]) -> Selector:
    found = Selector()
    for token in tokens:
        if token.startswith("~"):
            found.patterns.append(token[1:])
        elif token.startswith("+"):
            found.commands.add(token[1:].lower())
    return found


def parse_rule(line: str) -> Rule:
    words = line.split()
    assert words[:2] == ["ACL", "SETUSER"], line
    user, rest = words[2], " ".join(words[3:])
    selectors = [_selector(inside.split()) for inside in re.findall(r"\(([^)]*)\)", rest)]
    root_text = re.sub(r"\([^)]*\)", " ", rest)
    tokens = re.findall(r"\([^)]*\)|\S+", rest)
    return Rule(user, tokens, _selector(root_text.split()), selectors)


def readme_rules() -> dict[str, Rule]:
    """Every ``ACL SETUSER`` line of the README's Security section, by user."""
    text = README.read_text(encoding="utf-8")
    security = text[text.index("## Security"):text.index("## Configuration")]
    rules = [parse_rule(line.strip()) for line in security.splitlines() if line.strip().startswith("ACL SETUSER")]
    return {rule.user: rule for rule in rules}

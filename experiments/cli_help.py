"""The driver's command-line conventions over absl flags: grouped `--help` and one-line flag errors.

absl's own `--help` lists every flag of every module alphabetically and exits with status 1, and a
flag it cannot parse ends the process with `FATAL Flags parsing error` (status 1). The driver instead
answers `--help` (exit 0) with its flags grouped by what they change, short by default (each group's
most used flags, the first sentence of their help) and in full with `--helpfull` or `--help=all`; and
reports every parsing error as one line, `error: ...`, exit status 2 (the caller prints it).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence

from absl import flags

WIDTH = 100
INDENT = 26
SHORT_HELP = ("-h", "-help", "--help", "--helpshort", "-helpshort", "-?")
FULL_HELP = ("--helpfull", "-helpfull", "--help=all", "-help=all", "--help=full")


def requested(args: Sequence[str]) -> str | None:
    """'full', 'short' or None: whether `args` (without the program name) ask for help."""
    kind = None
    for arg in args:
        if arg == "--":
            break
        if arg in FULL_HELP:
            return "full"
        if arg in SHORT_HELP:
            kind = "short"
    return kind


def error_line(exc: BaseException) -> str:
    """A flag-parsing exception as the text of one `error:` line."""
    return " ".join(str(exc).split())


_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!etc)\.(\s|$)")


def first_sentence(text: str) -> str:
    """The help text up to its first full stop ('e.g.' and 'i.e.' do not end a sentence)."""
    m = _SENTENCE_END.search(text)
    return text[: m.start() + 1] if m else text


def _is_enum(flag: flags.Flag) -> bool:
    return isinstance(flag.parser, flags.EnumParser)


def _synopsis(flag: flags.Flag) -> str:
    if isinstance(flag.parser, flags.BooleanParser):
        return f"--[no]{flag.name}"
    if _is_enum(flag):
        return f"--{flag.name}={{{','.join(flag.parser.enum_values)}}}"
    metavar = {"int": "N", "float": "X"}.get(flag.flag_type(), flag.name.upper())
    return f"--{flag.name}={metavar}"


def _describe(flag: flags.Flag, *, full: bool) -> str:
    text = " ".join(flag.help.split())
    if _is_enum(flag):  # absl prefixes "<a|b|c>: "; the values are in the synopsis
        text = re.sub(r"^<[^>]*>:\s*", "", text)
    if not full:
        text = first_sentence(text)
        if _is_enum(flag) and ": " in text:  # "Matcher for CompNN: exact search over ..." -> its subject
            text = text.split(": ", 1)[0] + "."
        return text
    default = flag.default
    if default not in (None, False, "", []):
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text


def _entry(flag: flags.Flag, *, full: bool) -> list[str]:
    head = "  " + _synopsis(flag)
    body = _describe(flag, full=full)
    wrap = textwrap.TextWrapper(width=WIDTH, initial_indent=" " * INDENT, subsequent_indent=" " * INDENT)
    lines = wrap.wrap(body) or [""]
    if len(head) < INDENT - 1:
        lines[0] = head.ljust(INDENT) + lines[0][INDENT:]
    else:
        lines.insert(0, head)
    return lines


def render(flag_values: flags.FlagValues, module: str, groups: Mapping[str, Sequence[str]],
           common: Sequence[str], *, usage: str, summary: str, full: bool) -> str:
    """The help text: `usage`, `summary`, then the flags of `module` in `groups` (each flag once; a
    flag in no group goes under "other"), all of them when `full`, else only those in `common`."""
    own = {f.name: f for f in flag_values.get_flags_for_module(module)}
    out = [usage, "", *textwrap.wrap(summary, WIDTH)]
    placed: set[str] = set()
    sections = [(title, [n for n in names if n in own]) for title, names in groups.items()]
    for names in (names for _, names in sections):
        placed.update(names)
    sections.append(("other" if groups else "flags", sorted(n for n in own if n not in placed)))
    hidden = 0
    for title, names in sections:
        shown = [n for n in names if full or n in common]
        hidden += len(names) - len(shown)
        if not shown:
            continue
        out += ["", f"{title}:"]
        for name in shown:
            out += _entry(own[name], full=full)
    out.append("")
    if full:
        others = sorted({f.name for fl in flag_values.flags_by_module_dict().values() for f in fl
                         if f.name not in own and not f.name.startswith("help")})
        out += textwrap.wrap("Also accepted (absl's own flags): " + ", ".join(f"--{n}" for n in others) + ".",
                             WIDTH)
    else:
        out.append(f"{hidden} more flags, and every flag's full description: --helpfull (or --help=all).")
    return "\n".join(out)

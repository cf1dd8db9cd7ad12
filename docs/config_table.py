"""The table of SRNAS_* serving variables in docs/serving.md, generated from serving/config.py.

    python -m docs.config_table            # print the table
    python -m docs.config_table --write    # replace it in docs/serving.md (between the config-table markers)
    python -m docs.config_table --check    # exit 1 when docs/serving.md's table differs

Every field of `ServeConfig` and of its `Limits` is read from `SRNAS_<FIELD>` (`ServeConfig.from_env`); its
meaning is the field's comment in serving/config.py: the comment on its line, after the comment lines right
above it. tests/test_docs.py fails when the page and the code disagree.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "serving.md"
START, END = "<!-- config-table: start (python -m docs.config_table --write) -->", "<!-- config-table: end -->"


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} from a dataclass's source: the comment lines right above the field, then
    the comment on its own line."""
    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for node in ast.parse(src).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, n = [], node.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            inline = [comments[node.lineno]] if node.lineno in comments else []
            out[node.target.id] = " ".join(above + inline)
    return out


def _default(value: object, source: str) -> str:
    if value == "":
        return "(none)"
    text = f"`{value}`"
    try:
        literal = ast.literal_eval(source)
    except (ValueError, SyntaxError):
        literal = None
    if literal is None and any(c in source for c in "*+"):  # arithmetic: show it beside its value
        text += f" (`{source}`)"
    return text


def _defaults_source(cls: type) -> dict[str, str]:
    """{field name: its default as written}, e.g. `16 * 2**20`."""
    src = textwrap.dedent(inspect.getsource(cls))
    return {n.target.id: ast.get_source_segment(src, n.value) or "" for n in ast.parse(src).body[0].body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None}


def rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every SRNAS_* variable ServeConfig.from_env reads, in field order."""
    from serving.config import Limits, ServeConfig

    out = []
    for cls, obj in ((ServeConfig, ServeConfig()), (Limits, Limits())):
        docs, sources = field_comments(cls), _defaults_source(cls)
        for f in dataclasses.fields(cls):
            if f.name == "limits":
                continue
            var = f"SRNAS_{f.name.upper()}"
            meaning = docs.get(f.name, "").removeprefix(f"{var}: ")
            if cls is Limits:
                meaning = f"request limit: {meaning}" if meaning else "request limit"
            out.append((f"`{var}`", _default(getattr(obj, f.name), sources.get(f.name, "")),
                        meaning.replace("|", "\\|")))
    return out


def table() -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {v} | {d} | {m} |" for v, d, m in rows()]
    return "\n".join(lines)


def page_table(page: Path = PAGE) -> str | None:
    """The table between the markers of the page, or None without markers."""
    text = page.read_text()
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write(page: Path = PAGE) -> None:
    text = page.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m docs.config_table", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help=f"replace the table in {PAGE.relative_to(ROOT)}")
    g.add_argument("--check", action="store_true", help="exit 1 when the page's table is not the generated one")
    args = p.parse_args(argv)
    if args.write:
        write()
        print(f"wrote the configuration table into {PAGE.relative_to(ROOT)}")
    elif args.check:
        if page_table() != table():
            print(f"{PAGE.relative_to(ROOT)}: the configuration table is stale; run python -m docs.config_table "
                  "--write", file=sys.stderr)
            return 1
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

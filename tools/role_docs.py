#!/usr/bin/env python3
"""Write (or --check) the variables table of each role README from meta/argument_specs.yml.

The table sits between <!-- BEGIN VARIABLES --> and <!-- END VARIABLES -->; the rest of the README
is hand-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- BEGIN VARIABLES -->", "<!-- END VARIABLES -->"


def cell(value) -> str:
    text = " ".join(value) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(role: str) -> str:
    specs = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())["argument_specs"]
    lines = []
    for entry, spec in specs.items():
        if entry != "main" and spec["options"] == specs["main"]["options"]:
            lines += [f"Entry point `{entry}`: {cell(spec.get('short_description', ''))} (the same variables as"
                      " `main`).", ""]
            continue
        lines += [f"Entry point `{entry}`: {cell(spec.get('short_description', ''))}", "",
                  "| Variable | Type | Default | Description |", "|---|---|---|---|"]
        for name, opt in spec["options"].items():
            if opt.get("required"):
                default = "**required**"
            elif "default" in opt:
                default = f"`{json.dumps(opt['default'])}`"
            else:
                default = "see defaults/main.yml" if entry == "main" else "as `main`"
            typ = opt.get("type", "str") + (f" of {opt['elements']}" if "elements" in opt else "")
            choices = f" Choices: {', '.join(map(str, opt['choices']))}." if "choices" in opt else ""
            lines.append(f"| `{name}` | {typ} | {cell(default)} | {cell(opt.get('description', ''))}{choices} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="fail if a README is out of date")
    args = p.parse_args()
    stale = []
    for readme in sorted((ROOT / "roles").glob("*/README.md")):
        role = readme.parent.name
        text = readme.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        new = f"{head}{BEGIN}\n{table(role)}{END}{tail}"
        if new != text:
            stale.append(str(readme.relative_to(ROOT)))
            if not args.check:
                readme.write_text(new)
    if args.check and stale:
        print(f"out of date (run tools/role_docs.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

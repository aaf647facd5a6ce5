"""Make a blank copy of a solved file: every block between `# BEGIN SOLUTION` and `# END SOLUTION`
becomes `raise NotImplementedError(...)` at the same indentation.

    python -m minimoe.exercises.blank tutorials/11_build_it_yourself.py my_11.py

Instructors use it to hand out tutorial 11 (docs/teaching.md); the tests run the blank copy to
check that it still runs top to bottom.
"""
from __future__ import annotations

import re
import sys

from minimoe.errors import MinimoeError

BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")


def blank(text: str) -> str:
    """The text with every solution block replaced by a NotImplementedError."""
    out, indent = [], None
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        m = BEGIN.match(line)
        if m:
            if indent is not None:
                raise MinimoeError(f"line {n}: BEGIN SOLUTION inside another solution block")
            indent = m.group(1)
            out.append(f'{indent}raise NotImplementedError("your code here")\n')
        elif END.match(line):
            if indent is None:
                raise MinimoeError(f"line {n}: END SOLUTION without a BEGIN SOLUTION")
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise MinimoeError("a BEGIN SOLUTION block is never closed by END SOLUTION")
    return "".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m minimoe.exercises.blank SOLVED.py BLANK.py", file=sys.stderr)
        return 2
    from minimoe.io.atomic import atomic_write_text
    try:
        with open(argv[0], encoding="utf-8") as f:
            atomic_write_text(argv[1], blank(f.read()))
    except (OSError, MinimoeError) as e:
        print(f"blank: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

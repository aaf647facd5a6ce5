"""`minimoe grade`: grade an exercise file (minimoe/exercises)."""
from __future__ import annotations


def add_parser(sub):
    from minimoe.exercises import grade
    p = sub.add_parser("grade", help="grade an exercise file, list or start the exercises",
                       description="Grade an exercise (see `minimoe grade --list`). Exit code 0 "
                                   "only when every check passes.")
    grade.add_arguments(p)
    p.set_defaults(func=grade.run)

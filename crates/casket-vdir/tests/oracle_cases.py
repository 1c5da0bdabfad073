#!/usr/bin/python3
"""Prints the hand-made import cases of shared/oracle/cases.py as JSON, for tests/oracle.rs.

    /usr/bin/python3 oracle_cases.py SHARED_ORACLE_DIR

Tree items stay as cases.py writes them: ["f", path, content, mode, mtime], ["d", path, mode],
["l", path, target], ["p", path], ["n", path, major, minor, mode].  The pre/post hooks are
lambdas and cannot be printed: only whether a case has them is, and the Rust test implements
them by case name (and fails on a hook it does not know).
"""

import json
import sys

sys.path.insert(0, sys.argv[1])
import cases  # noqa: E402  pylint: disable=wrong-import-position


def case_json(case):
    return {
        "name": case["name"],
        "note": case["note"],
        "src": case["src"],
        "dest": case["dest"],
        "files": case.get("files"),
        "link": bool(case.get("link")),
        "ignore_missing": bool(case.get("ignore_missing")),
        "root_only": bool(case.get("root_only")),
        "pre": case.get("pre") is not None,
        "post": case.get("post") is not None,
    }


json.dump({
    "cases": [case_json(c) for c in cases.CASES],
    "src_kinds": [[name, spec] for name, spec in cases.SRC_KINDS.items()],
    "dest_kinds": [[name, spec] for name, spec in cases.DEST_KINDS.items()],
    "sibling": cases.SIBLING,
}, sys.stdout)
sys.stdout.write("\n")

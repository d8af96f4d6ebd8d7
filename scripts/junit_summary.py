"""Print one 'N passed, N failed, N skipped' line summed over the JUnit XML files that the
tox envs wrote; exit 1 on any failure or when no test ran at all."""

from __future__ import annotations

import glob
import sys
import xml.etree.ElementTree as ET


def main(pattern: str) -> int:
    tests = failed = skipped = 0
    for path in sorted(glob.glob(pattern)):
        for suite in ET.parse(path).getroot().iter("testsuite"):  # noqa: S314
            tests += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    passed = tests - failed - skipped
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".tox/junit-*.xml"))

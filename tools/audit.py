"""Audit the installed dependencies for known vulnerabilities with pip-audit.

Fails when pip-audit reports a vulnerability. When the vulnerability service cannot be
reached (a sandbox that only reaches a package mirror), every dependency comes back
"skipped": that is said plainly and is not mistaken for a clean audit.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off",
         "--format", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed to run:\n{done.stderr[-2000:]}", file=sys.stderr)
        return 1
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    for dependency in vulnerable:
        ids = ", ".join(v["id"] for v in dependency["vulns"])
        print(f"VULNERABLE {dependency['name']} {dependency['version']}: {ids}", file=sys.stderr)
    if vulnerable:
        return 1
    if not audited:
        print(
            f"pip-audit: the vulnerability service was not reachable; {len(dependencies)} "
            "dependencies NOT audited (this network reaches only the package mirror)",
            file=sys.stderr,
        )
        return 0
    print(f"pip-audit: {len(audited)} dependencies audited, no known vulnerability")
    return 0


if __name__ == "__main__":
    sys.exit(main())

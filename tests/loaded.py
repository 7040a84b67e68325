"""Run a command while other processes keep every CPU busy: how a slow or shared host behaves.

    python tests/loaded.py [--hogs N] -- python -m pytest tests/test_platform.py ...

``make test-loaded`` runs the platform, reliability and serving tests this way. The hogs are
plain busy loops at the same priority as the tests (one per CPU by default), so every process of
the suite -- server, workers, runners, trainers -- gets about half the CPU it would alone. They
stop when the command ends, however it ends.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

HOG = "import os, signal\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))\nwhile True:\n    pass\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per CPU)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    print(f"loaded.py: {len(hogs)} busy processes on {os.cpu_count()} CPUs while running: {' '.join(command)}",
          flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        for h in hogs:
            h.send_signal(signal.SIGTERM)
        for h in hogs:
            h.wait()


if __name__ == "__main__":
    sys.exit(main())

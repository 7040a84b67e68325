"""``accelerate launch``, minus its traceback on Ctrl-C: ``python -m modelmill.train.accelerate_launch ARGS``.

The launcher and the trainer share a process group, so Ctrl-C (or a job's stop) reaches the
trainer directly; it saves a checkpoint and exits 130. accelerate's own launcher would die of the
same KeyboardInterrupt with a traceback printed above our clear message. Here it ignores the
signal through a handler (not SIG_IGN, which its children would inherit) and waits for the
trainer's exit code, which it passes on as its own (accelerate raises a CalledProcessError with
a traceback for any non-zero code; the trainer has already said what went wrong). When the
process that started it dies, the group gets Ctrl-C (``launcher.stop_group_with_parent``).
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main() -> None:
    from modelmill.train.launcher import stop_group_with_parent

    signal.signal(signal.SIGINT, lambda signum, frame: None)
    stop_group_with_parent()
    from accelerate.commands.launch import main as accelerate_main

    sys.argv[0] = "accelerate launch"
    try:
        accelerate_main()
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode if 0 < e.returncode < 256 else 1)


if __name__ == "__main__":
    main()

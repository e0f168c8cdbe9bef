"""The `layerhoard` command's entry point: how the process starts and ends.

A cached pull is over in about a tenth of a second, most of it the interpreter starting, so the
two ends of the process are tuned here, away from the command line's logic (:mod:`cli.main`):

- start: the cyclic garbage collector is off while the modules load (thousands of objects, no
  garbage cycles; its passes cost about 4 % of a cached pull). ``LayerhoardGroup.get_command``
  turns it back on once the command's module is loaded, before the command works.
- end: ``os._exit`` once the output is flushed. Tearing down a few hundred modules and closing the
  index's SQLite connection (a WAL checkpoint with two fsyncs) cost 20 to 30 ms, and everything a
  command writes is already committed when it returns. With another thread still alive (none
  should be), the ordinary exit joins it as before.
"""

from __future__ import annotations

import gc
import os
import sys
import threading


def run() -> None:
    gc.disable()
    from cli.main import main  # after disabling: this import is most of the start-up

    try:
        main()
        code: str | int | None = 0
    except SystemExit as done:
        code = done.code
    if threading.active_count() > 1:
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a reader that went away (`layerhoard ls | head`): nothing left to tell it
    os._exit(code or 0)

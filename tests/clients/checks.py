"""What the SDK client scripts share: named checks that report every failure and keep going,
and the exit status at the end."""

import sys
import traceback

FAILURES = []


def check(name):
    """Runs the decorated function as the check `name`, printing ok or FAIL with its trace."""

    def wrap(fn):
        def run(*args, **kwargs):
            try:
                fn(*args, **kwargs)
                print(f"ok    {name}")
            except Exception:  # noqa: BLE001 - report every failure, keep going
                FAILURES.append(name)
                print(f"FAIL  {name}")
                traceback.print_exc()

        run.__name__ = fn.__name__
        return run

    return wrap


def finish():
    """Exits 1 naming the failed checks, if any."""
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
        sys.exit(1)
    print("all checks passed")

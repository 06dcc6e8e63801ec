"""One error type for every bad input the planner can see.

The CLI turns a `PlannerError` into one line on stderr and exit status 2, so the message must
name the flag (or key), the bad value and what would be valid.
"""


class PlannerError(ValueError):
    """Bad input: the message is shown to the user as is."""


def print_error(prog: str, exc: BaseException) -> int:
    """Print `prog: error: <message on one line>` to stderr; returns the usage exit status, 2."""
    import sys

    print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


#: Set to 1 to see the traceback behind a one-line error.
DEBUG_ENV = "PLANNER_DEBUG"


def describe(exc: BaseException) -> str | None:
    """A one-line message for an expected failure (bad input, a file that cannot be read or written), or
    None for a bug, which keeps its traceback."""
    if isinstance(exc, PlannerError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, UnicodeError):
        return f"not UTF-8 text ({exc})"
    import json

    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            return f"not valid YAML: {exc}"
    except ImportError:  # pragma: no cover - yaml comes with omegaconf
        pass
    return None


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so `finally` blocks and atomic writes unwind as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _default_sigterm_in_child() -> None:
    """Forked workers (datatrove's pool, torch's) die on SIGTERM as usual: their parent's pool sends it to stop
    them, and a worker blocked in a lock must not turn it into an exception it never reaches."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)


_CHILD_HOOK: list[bool] = []


def guarded(prog: str, fn, *args, **kwargs) -> int:
    """Run an entry point: expected failures become one line on stderr and exit 2 (a traceback only
    with PLANNER_DEBUG=1); Ctrl-C and SIGTERM one line and exit 130 / 143 (128 + the signal, as shells
    report them); the return value of `fn` (None: 0) is the exit status otherwise."""
    import os
    import signal
    import sys
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        if not _CHILD_HOOK:
            os.register_at_fork(after_in_child=_default_sigterm_in_child)
            _CHILD_HOOK.append(True)
    try:
        code = fn(*args, **kwargs)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT); finished work is kept, a rerun resumes", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated (SIGTERM); finished work is kept, a rerun resumes", file=sys.stderr)
        return 143
    except Exception as exc:
        message = describe(exc)
        if message is None or os.environ.get(DEBUG_ENV) == "1":
            raise
        return print_error(prog, message)
    return 0 if code is None else code


def one_line_parser(prog: str, description: str):
    """An argparse parser whose usage errors are one line and exit 2, like every other error here."""
    import argparse
    import sys

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            print_error(self.prog, message)
            sys.exit(2)

    return Parser(prog=prog, description=description)

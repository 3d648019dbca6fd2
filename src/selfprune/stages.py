"""What a long job shows and logs: one progress bar per stage, each stage's wall time in the log,
and everything the libraries print kept out of the stage display."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("selfprune.runner")


class Stages:
    """A progress bar per stage (none when quiet), and each stage's wall time in the log."""

    def __init__(self, quiet: bool, log_path: Path | None = None):
        self.quiet = quiet
        self.log_path = log_path
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, steps: int = 1):
        from tqdm.auto import tqdm

        log.info("stage %s: started", name)
        bar = tqdm(total=steps, desc=f"{name:<10}", disable=self.quiet, leave=True, dynamic_ncols=True,
                   bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
        t0 = time.perf_counter()
        try:
            yield bar
        finally:
            bar.close()
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)
            log.info("stage %s: %.1f s", name, self.seconds[name])

    @contextlib.contextmanager
    def library_output(self):
        """Send what libraries print (lm-eval's own progress bars, notices) to the log file, so the
        stage bars stay readable; the bars already on screen keep their stream."""
        if self.log_path is None:
            yield
            return
        with open(self.log_path, "a", encoding="utf-8") as sink, contextlib.redirect_stderr(sink), \
                contextlib.redirect_stdout(sink):
            yield


@contextlib.contextmanager
def logging_to(log_path: Path, quiet: bool):
    """Everything (ours and the libraries') goes to the log file; the console gets our warnings.
    Quiet runs also send the libraries' own progress bars and prints to the log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    # Records marked console=False (a failure's traceback) go to the log file only.
    console.addFilter(lambda record: record.name.startswith("selfprune") and getattr(record, "console", True))
    saved_level = root.level
    root.addHandler(handler)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        if quiet:
            with open(log_path, "a", encoding="utf-8") as sink, contextlib.redirect_stderr(sink), \
                    contextlib.redirect_stdout(sink):
                yield
        else:
            yield
    finally:
        root.removeHandler(handler)
        root.removeHandler(console)
        root.setLevel(saved_level)
        handler.close()

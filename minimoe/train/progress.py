"""A small progress bar for long jobs: done/total, a bar, free-form fields, rate and ETA.

    bar = Progress(total=2000, desc="train", unit="it")
    for i in range(2000):
        ...
        bar.update(1, loss=f"{loss:.3f}", tok_s="12.3k")
    bar.close()

On a terminal it redraws one line in place (at most 10 times a second). Into a file or a pipe
it prints a plain line every `every_s` seconds instead, so logs stay readable.
"""
from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, desc: str = "", initial: int = 0, unit: str = "it", file=None,
                 width: int = 24, every_s: float = 10.0, enabled: bool = True):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.file = file if file is not None else sys.stderr
        self.width, self.every_s, self.enabled = width, every_s, enabled
        self.start_n, self.start_t = initial, time.perf_counter()
        self.last_draw = 0.0
        self.fields: dict[str, str] = {}
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self._shown = False

    def rate(self) -> float:
        """Units per second since this bar started (not counting `initial`)."""
        dt = time.perf_counter() - self.start_t
        return (self.n - self.start_n) / dt if dt > 0 else 0.0

    def line(self) -> str:
        frac = self.n / self.total if self.total else 1.0
        filled = int(round(self.width * frac))
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.rate()
        eta = format_duration((self.total - self.n) / rate) if rate > 0 else "?"
        elapsed = format_duration(time.perf_counter() - self.start_t)
        fields = " ".join(f"{k} {v}" for k, v in self.fields.items())
        return (f"{self.desc} {self.n}/{self.total} [{bar}] {fields} "
                f"{rate:.1f} {self.unit}/s {elapsed}<{eta}").strip()

    def update(self, n: int = 1, **fields) -> None:
        self.n += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        if not self.enabled:
            return
        now = time.perf_counter()
        due = (now - self.last_draw) >= (0.1 if self.tty else self.every_s)
        if due or self.n >= self.total:
            self.draw()
            self.last_draw = now

    def draw(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.file.write("\r\033[K" + self.line())
        else:
            self.file.write(self.line() + "\n")
        self.file.flush()
        self._shown = True

    def write(self, text: str, file=None) -> None:
        """Print a message (to stdout by default) above the bar, then redraw the bar."""
        redraw = self.enabled and self.tty and self._shown
        if redraw:
            self.file.write("\r\033[K")
            self.file.flush()
        print(text, file=file or sys.stdout, flush=True)
        if redraw:
            self.draw()

    def close(self) -> None:
        if self.enabled and self.tty and self._shown:
            self.file.write("\n")
            self.file.flush()

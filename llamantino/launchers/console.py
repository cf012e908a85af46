"""Training progress on the console of ``launcher=local``: a live bar on a terminal, lines elsewhere.

Driven by the plugin's progress lines (llamantino_plugin.progress) as they arrive from the stage's
output. A terminal gets one tqdm bar, updated in place, with loss, s/step and ETA beside it; output
that is not a terminal (a file, a pipe, a test) gets each progress line as a line, like the log.
"""

from __future__ import annotations

import sys

from llamantino.records.progress import DONE, PREFIX, format_eta, parse_progress


class ConsoleProgress:
    def __init__(self, echo=print, live: bool | None = None) -> None:
        self.echo = echo
        self.live = sys.stdout.isatty() if live is None else live
        self.bar = None

    def feed(self, line: str) -> None:
        """Show one line meant for the console: a progress line moves the bar (or is printed); any
        other line is printed above the bar."""
        progress = parse_progress(line.strip())
        if progress is None:
            self._print(line)
            return
        if self.live:
            self._advance(progress)
        if not self.live or DONE in line:  # the last line stays on screen below the finished bar
            self.close()
            self.echo("  " + line.strip().split(PREFIX, 1)[1])

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            self.echo(line)

    def _advance(self, progress) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.total != progress.total:
            self.close()
            self.bar = tqdm(total=progress.total, initial=progress.step, unit="step", file=sys.stdout,
                            dynamic_ncols=True, bar_format="  {l_bar}{bar}| {n_fmt}/{total_fmt} {postfix}")
        self.bar.n = progress.step
        shown = [f"loss {progress.loss:.4f}" if progress.loss is not None else ""]
        if progress.seconds_per_step is not None:
            shown.append(f"{progress.seconds_per_step:.3g} s/step")
        if progress.tokens_per_second is not None:
            shown.append(f"{progress.tokens_per_second:,.0f} tokens/s")
        shown.append(f"ETA {format_eta(progress.eta_seconds)}")
        self.bar.set_postfix_str("  ".join(part for part in shown if part), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""Progress bars as sentence-transformers shows them: tqdm where it is installed, else a line of
our own on standard error. The engine calls `start`, `update`, `advance`, `log`, `report` and
`finish` from its own thread."""

import logging
import sys
import time

logger = logging.getLogger("crossenc")

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional
    tqdm = None


class Bar:
    def __init__(self, desc, total=None, show=True):
        self.desc, self.show = desc, show
        self.total, self.done, self.status = total, 0, ""
        self._tqdm, self._drawn = None, 0.0
        if show and total is not None:
            self.start(total, 0)

    def start(self, total, done):
        self.total, self.done = total, done
        if self.show and tqdm is not None:
            self._tqdm = tqdm(total=total, initial=done, desc=self.desc)

    def update(self, done, status=""):
        self.advance(done - self.done, status)

    def advance(self, n, status=""):
        self.done += n
        self.status = status
        if self._tqdm is not None:
            self._tqdm.update(n)
            if status:
                self._tqdm.set_postfix_str(status, refresh=False)
        elif self.show and (time.monotonic() - self._drawn > 0.2 or self.done == self.total):
            self._drawn = time.monotonic()
            sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total} {status}".ljust(72))
            sys.stderr.flush()

    def log(self, line):
        logger.debug(line)

    def report(self, line):
        logger.info(line)

    def finish(self):
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.show and self._drawn:
            sys.stderr.write("\n")
            self._drawn = 0.0

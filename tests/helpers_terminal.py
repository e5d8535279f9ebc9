"""A real terminal (a pseudo-terminal pair) as sys.stderr, for the progress bars that are shown
on a terminal only."""

import contextlib
import fcntl
import os
import pty
import struct
import sys
import termios
import threading
import types


@contextlib.contextmanager
def stderr_on_a_terminal(columns=120):
    """Within the block sys.stderr is a terminal of `columns` columns; yields a namespace whose
    `text`, after the block, is everything written to it (the terminal turns "\\n" into "\\r\\n")."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks = []

    def drain():  # read as it is written: a full terminal buffer would block the writer
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the follower side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    terminal, saved = os.fdopen(follower, "w", encoding="utf-8"), sys.stderr
    written = types.SimpleNamespace(text=None)
    sys.stderr = terminal
    try:
        yield written
    finally:
        sys.stderr = saved
        terminal.close()
        reader.join()
        os.close(leader)
        written.text = b"".join(chunks).decode("utf-8")

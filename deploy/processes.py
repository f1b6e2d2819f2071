"""The project's process helpers, shared by deploy/, bench/ and the tests: a free port, and the
stop of a process and every descendant (SIGTERM to all, then SIGKILL to what is left after a grace).

    python deploy/processes.py PID [GRACE_SECONDS]    # stop a tree

BentoML starts its workers in sessions of their own, so signalling the process group of
``bentoml serve`` (or of ``buildah run`` around it) leaves workers behind: the whole tree is
collected first. Exit status 0 when nothing of the tree is left.
"""

import socket
import sys

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice; another process may
    still take it before the caller binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_tree(pid: int, grace: float = 30) -> list[psutil.Process]:
    """Stop ``pid`` and its descendants; returns what is still running after the grace and a kill."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in tree:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    return alive


if __name__ == "__main__":
    left = stop_tree(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 30)
    if left:
        print(f"still running: {[p.pid for p in left]}", file=sys.stderr)
    sys.exit(1 if left else 0)

"""Stop a process and every descendant: SIGTERM to all, then SIGKILL to what is left after a grace.

    python deploy/stop_tree.py PID [GRACE_SECONDS]

BentoML starts its workers in sessions of their own, so signalling the process group of
``bentoml serve`` (or of ``buildah run`` around it) leaves workers behind: the whole tree is
collected first. Exit status 0 when nothing of the tree is left.
"""

import sys

import psutil


def stop_tree(pid: int, grace: float = 30) -> list[psutil.Process]:
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

"""The local launcher's stand-in for torch's rendezvous helper."""

import inspect

from torch.distributed.elastic.rendezvous import dynamic_rendezvous

from largebatch.dist import launch


def test_method_name_is_what_inspect_stack_gives_and_is_installed_by_the_handler():
    def torch_get_method_name(depth=2):  # torch 2.14's dynamic_rendezvous.get_method_name
        if len(inspect.stack()) > depth:
            return inspect.stack()[depth].function
        return "no_method_name"

    def event_recorder():  # stands where torch's _record calls get_method_name
        return launch._method_name(), torch_get_method_name(), launch._method_name(depth=1)

    def rendezvous_step():
        return event_recorder()

    ours, torchs, own_caller = rendezvous_step()
    assert ours == torchs == "rendezvous_step" and own_caller == "event_recorder"
    assert launch._method_name(depth=10_000) == "no_method_name"
    handler = launch._loopback_handler(
        launch.RendezvousParameters(backend=launch.LOOPBACK_BACKEND, endpoint="", run_id="t", min_nodes=1, max_nodes=1)
    )
    assert handler is not None and dynamic_rendezvous.get_method_name is launch._method_name


def _recorded_failure(attempt_dir, rank, message, exitcode=1):
    import json

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    path = attempt_dir / str(rank) / "error.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"message": {"message": message, "extraInfo": {"py_callstack": "", "timestamp": "0"}}}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(path))


GLOO_PEER = (
    "RuntimeError: [gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:24962. This is "
    "typically caused by a remote worker crashing."
)


def test_a_peer_lost_error_alone_is_a_death_and_restarts(tmp_path):
    """torch reported only rank 0, whose collective failed because rank 1 was killed (no record)."""
    failure = launch.classify_failure({0: _recorded_failure(tmp_path / "attempt_0", 0, GLOO_PEER)})
    assert failure.kind == "peer_lost" and failure.restartable and failure.rank == 0
    message = str(launch._describe(failure))
    assert message.startswith("worker rank 0 lost its connection to another worker") and "Connection closed" in message


def test_a_peer_lost_error_defers_to_another_workers_real_error(tmp_path):
    attempt = tmp_path / "attempt_0"
    first = _recorded_failure(attempt, 0, GLOO_PEER)
    _recorded_failure(attempt, 1, "ValueError: label 12 of train-labels-idx1-ubyte is outside 0-9")
    failure = launch.classify_failure({0: first})
    assert failure.kind == "error" and not failure.restartable and failure.rank == 1
    assert "label 12" in str(launch._describe(failure))
    # a real error of the reported worker stays an error; a killed worker still outranks it
    other = tmp_path / "attempt_1"
    real = _recorded_failure(other, 0, "ValueError: bad")
    assert launch.classify_failure({0: real}).kind == "error"
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    killed = ProcessFailure(local_rank=1, pid=1, exitcode=-9, error_file="")
    assert launch.classify_failure({0: real, 1: killed}).kind == "died"


def test_a_process_killed_while_logging_does_not_block_the_others_log():
    """A forked process (a worker, a trial, a branch) that dies holding the log's write lock must not
    leave the other processes waiting on it: tqdm's default lock is one multiprocessing semaphore
    shared by every process forked after it was made; largebatch.dist.env gives each process its own
    (checked in a fresh interpreter, with a timeout, since the failure is a hang)."""
    import subprocess
    import sys

    script = (
        "import logging, os, sys\n"
        "from largebatch.dist.env import configure_logging\n"
        "from tqdm import tqdm\n"
        "configure_logging(0)\n"
        "log = logging.getLogger('t')\n"
        "log.info('before the fork')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    tqdm.get_lock().acquire()\n"
        "    os._exit(0)  # killed while writing: the lock is never released\n"
        "os.waitpid(pid, 0)\n"
        "log.info('after the child died')\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the parent blocked on the write lock its dead child held") from None
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "before the fork" in proc.stderr and "after the child died" in proc.stderr

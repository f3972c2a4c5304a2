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

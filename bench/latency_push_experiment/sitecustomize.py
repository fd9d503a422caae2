"""An experiment, not part of the app: Petals 2.2.0 servers that really push to the next server.

Petals 2.2.0's ``rpc_inference`` hands ``_push_outputs`` the metadata of the session's opening request, which never
names the next servers, so no server-to-server push is ever sent. This module, imported by every Python process
started with ``PYTHONPATH=bench/latency_push_experiment`` (as ``sitecustomize``), patches the server's handler when
it is imported so that each push uses its own step's metadata (as later Petals sources do)::

    PYTHONPATH=$PWD/bench/latency_push_experiment python -m bench.latency --layouts 3 --rtts 100 --out /tmp/push

The real fix belongs in the servers' start-up (``backend/swarm/server_main.py``, like the batching install).
"""
import contextvars
import importlib.abc
import importlib.util
import sys

_step_metadata = contextvars.ContextVar("step_metadata", default=None)


def _patch(handler_module):
    cls = handler_module.TransformerConnectionHandler
    original_iter = cls._iterate_inference_steps
    original_push = cls._push_outputs

    async def _iterate_inference_steps(self, *args, **kwargs):
        async for request, metadata in original_iter(self, *args, **kwargs):
            _step_metadata.set(metadata)
            yield request, metadata

    async def _push_outputs(self, request, serialized_outputs, metadata):
        step = _step_metadata.get()
        if step is not None and step.get("next_servers"):
            metadata = step
        return await original_push(self, request, serialized_outputs, metadata)

    cls._iterate_inference_steps = _iterate_inference_steps
    cls._push_outputs = _push_outputs
    print("EXPERIMENT: push patch installed", flush=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "petals.server.handler":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            _patch(module)
        loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())

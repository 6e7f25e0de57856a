"""The stack's processes on this machine, in one place for `make up`, the benchmark and the tests.

- `processes`: start a process in its own group, stop it with its children, wait until ready.
- `supervisor`: infra/local/supervisord.conf's programs and their commands.
- `redis`: which redis-server runs, and a throwaway Redis on a free port.
- `servers`: an ASGI app behind a real server in a thread (the services' unit tests).
- `stack`: the local stack (`python -m iris_devstack up|down|status`).
- `private_stack`: a second stack on free ports with its own state (the benchmark's).

No service imports it: it is a development dependency of the workspace.
"""

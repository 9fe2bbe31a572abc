"""The pure task core: message schema, states and transitions, retry arithmetic, topology naming.

Nothing here does I/O; `.importlinter` keeps it that way. Used by the producer, the worker, the
store adapter and the operator.
"""

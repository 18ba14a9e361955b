"""Redis transport: the store (reliable pop, flags, results, streams, dead letters), the pop link
(``resp``: core0's own RESP connection for the pop loop) and the dispatcher (pop → decode →
validate → route → run → publish).

``store`` and ``resp`` are a low layer (the job engine publishes through them); ``dispatcher``
is the top of the node: it assembles the job engine, the boot services and the command registry.
"""

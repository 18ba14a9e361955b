"""Boot: startup services (``spec``: parse, substitute, plan; ``service``: one service's state;
``services``: the manager) and cloud-config (``cloudsource``: where user-data comes from;
``cloudparse``: YAML/JSON and field decoding, with ``safeyaml``; ``cloudfiles``: idempotent
file writes under a root; ``cloudconfig``: the steps; ``cloudnet``: network v2). ``node``:
facts about the node the boot runs on."""

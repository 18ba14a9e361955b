"""Boot: startup services (``spec``: parse, substitute, plan; ``services``: the manager) and
cloud-config (``cloudsource``: where user-data comes from; ``cloudparse``: YAML/JSON and field
decoding; ``cloudfiles``: idempotent file writes under a root; ``cloudconfig``: the steps;
``cloudnet``: network v2). ``node``: facts about the node the boot runs on."""

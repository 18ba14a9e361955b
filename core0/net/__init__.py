"""Networking machinery behind ``ip.*``, ``bridge.*`` and ``nft.*``.

- :mod:`core0.net.validate` — strict parsing of names, addresses and ports (all user values
  pass through here before they reach netlink, nft rule text or a dnsmasq config);
- :mod:`core0.net.netlink` — pyroute2 (netlink) helpers, run in worker threads, optionally
  inside a named network namespace;
- :mod:`core0.net.netns` — named network namespaces (``/run/netns/<name>``, entered per
  thread with setns(2), identified by their cookie) and the netlink error mapping;
- :mod:`core0.net.nft` — the nftables model of core0's own table ``inet core0`` and its
  ruleset builder (applied as one ``nft -f -`` transaction);
- :mod:`core0.net.dnsmasq` — per-bridge dnsmasq configuration and service spec;
- :mod:`core0.net.state` — the persisted network state (bridges, open ports, forwards).

pyroute2 is imported lazily (inside functions) so the dispatcher's idle RSS stays small.
"""

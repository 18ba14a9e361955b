"""Who may talk to the node's Redis, and how: ACL users per role, core0's own user, TLS.

* :mod:`core0.security.users` — the users (config ``[users.<name>]`` tables and the runtime
  store managed by ``core0 user``), validation and password hashing (SHA-256, Redis's ``#`` form);
* :mod:`core0.security.acl` — what the embedded redis-server serves: the ACL file core0
  generates (one user per credential, each limited to its queues), the listening plan (loopback
  only while no credential exists) and core0's own secret;
* :mod:`core0.security.live` — applying a changed plan to a running redis-server (ACL LOAD,
  CONFIG SET) without a restart;
* :mod:`core0.security.tls` — ``core0 tls init``: a CA, server and client certificates;
* :mod:`core0.security.cli` — the ``core0 user`` / ``core0 tls`` / ``core0 security`` commands.

See docs/security.md.
"""

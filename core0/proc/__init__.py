"""Processes: ``spawn`` (posix_spawn in a new session with clean signal state), ``process`` (the
dispatcher's one SIGCHLD reaper, ``run``), ``output`` (0-core's output levels, file followers,
inotify) and ``shimlink`` (the private channel between the supervisor and the dispatcher)."""

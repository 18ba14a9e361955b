"""The job engine: ``engine`` (a job's life: run, max_time, recurring, restart with backoff, kill),
``output`` (output lines → ``log:``/``stream:`` and queue slots), ``result`` (values, processes and
exceptions → Results), ``state`` (persisted process jobs for adoption), ``env`` (a job's
environment). The one place where exceptions become results. Imports no command module."""

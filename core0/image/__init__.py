"""Node images: signed manifests, verified fetch, staging beside the running image, the switch
by kexec, boot assessment and rollback (docs/images.md).

``config`` is imported by core0.config (layer 0) and stays free of the rest of the package.
"""

"""Publishing versions: the quilt3 registry (local folder or S3) with its per-name lock, and the S3 helpers
it needs. Only the package stage and the pull command import it."""

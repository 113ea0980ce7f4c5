"""The `ray` executor for preheat: runs as Ray jobs, file transfers fanned out over the nodes."""

"""Read this first: operator tools: the fault switchboard (`/admin/faults`) and `rung top`."""

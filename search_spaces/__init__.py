"""Built-in search spaces, one module per algorithm, each defining `space(trial, epochs)` (see `hpo.spaces`)."""

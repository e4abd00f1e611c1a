"""Running a checked net: backends, the executor, weights."""

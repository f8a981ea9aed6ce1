"""Shared state of both processes, on Redis or in memory: key-value surface, results and their
delivery state, examples, metrics and the job queues."""

"""The engine: tasks, flows, states, futures, contexts and the task-run function."""

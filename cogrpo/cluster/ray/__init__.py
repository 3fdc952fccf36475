"""The Ray runtime: a thin driver, thin actors, an actor pool that owns faults, and the weight channel."""

"""What a worker executes: the primitive tasks, the physics, and the worker agent."""

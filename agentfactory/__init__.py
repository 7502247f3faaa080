"""agentfactory."""

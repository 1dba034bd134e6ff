"""Root resolvers: parse arguments, call the domain, answer from read-model records."""

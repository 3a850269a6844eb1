"""The typed rule model, name resolution and type checking, and the predicate backends."""
